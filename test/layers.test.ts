/**
 * The folder layout is the architecture: every relative import points down the layers (or stays in its folder), so
 * the library never reaches into the demo application, the dashboard or the CLI, and there is no cycle between rooms.
 * The library (src/, analysis/) also imports no package that only the demo (tfjs, its stand-in encoders) or the
 * dashboard (fastify) needs.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Lowest first; a module may import its own room or any room of a lower rank. */
const RANK: Record<string, number> = {
  'src/core': 0,
  'src/store': 1,
  'src/engine': 2,
  'src/metrics': 3,
  'src/stats': 4,
  'src/probes': 5,
  'src/embeddings': 5,
  analysis: 6,
  demo: 7,
  server: 8,
  cli: 9,
};
const LIBRARY_ROOMS = Object.keys(RANK).filter((r) => RANK[r]! <= RANK.analysis!);
const APPLICATION_PACKAGES = ['@tensorflow/', '@vladmandic/human', 'nsfwjs', 'fastify', '@fastify/', 'cli-progress'];

function room(file: string): string {
  const rel = relative(root, file).split('\\').join('/');
  const parts = rel.split('/');
  if (parts[0] === 'src') {
    const r = `src/${parts[1]}`;
    assert.ok(r in RANK, `${rel}: src/ holds only the rooms ${Object.keys(RANK).filter((k) => k.startsWith('src/')).join(', ')}`);
    return r;
  }
  return parts[0]!;
}

function sources(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'public' && e.name !== 'node_modules') sources(p, out);
    } else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

interface Edge { from: string; to: string; spec: string }

function imports(file: string): { relative: Edge[]; packages: string[] } {
  const text = readFileSync(file, 'utf8');
  const rel: Edge[] = [];
  const packages: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'";]*?from\s*'([^']+)'|import\(\s*'([^']+)'\s*\)/g)) {
    const spec = (m[1] ?? m[2])!;
    if (spec.startsWith('.')) rel.push({ from: file, to: resolve(dirname(file), spec).replace(/\.js$/, '.ts'), spec });
    else if (!spec.startsWith('node:')) packages.push(spec);
  }
  return { relative: rel, packages };
}

const files = Object.keys(RANK)
  .filter((r) => !r.startsWith('src/'))
  .concat(['src'])
  .flatMap((d) => sources(join(root, d)));

test('layers: every relative import points to the same room or a lower one (core → store → engine → metrics → stats → probes/embeddings → analysis → demo → server → cli)', () => {
  const bad: string[] = [];
  for (const f of files) {
    for (const e of imports(f).relative) {
      const a = room(e.from);
      const b = room(e.to);
      if (RANK[b]! > RANK[a]!) bad.push(`${relative(root, e.from)} imports ${e.spec} (${a} → ${b})`);
    }
  }
  assert.deepEqual(bad, []);
});

test('layers: rooms of the same rank do not import each other, so there is no cycle between rooms', () => {
  const edges = new Set<string>();
  for (const f of files) for (const e of imports(f).relative) if (room(e.from) !== room(e.to)) edges.add(`${room(e.from)} → ${room(e.to)}`);
  const sideways = [...edges].filter((e) => {
    const [a, b] = e.split(' → ');
    return RANK[a!] === RANK[b!];
  });
  assert.deepEqual(sideways, []);
});

test('layers: the library (src/, analysis/) needs no demo-only or dashboard-only package', () => {
  const bad: string[] = [];
  for (const f of files) {
    if (!LIBRARY_ROOMS.includes(room(f))) continue;
    for (const p of imports(f).packages) if (APPLICATION_PACKAGES.some((q) => p.startsWith(q))) bad.push(`${relative(root, f)} imports ${p}`);
  }
  assert.deepEqual(bad, []);
});

test('layers: the checker sees real imports (a sanity check that the rules above are not vacuous)', () => {
  const all = files.flatMap((f) => imports(f).relative);
  assert.ok(all.length > 200, `only ${all.length} relative imports found`);
  assert.ok(all.some((e) => room(e.from) === 'cli' && room(e.to) === 'analysis'));
  assert.ok(all.some((e) => room(e.from) === 'src/metrics' && room(e.to) === 'src/engine'));
});
