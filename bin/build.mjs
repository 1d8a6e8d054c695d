#!/usr/bin/env node
// Transpiles the runtime sources (src, analysis, demo, server, cli) to plain ES modules in dist/, so the installed CLI
// starts without tsx compiling TypeScript on every call. Runs as `prepare` on npm install / npm ci; type checking
// stays with `npm run typecheck`. esbuild is the one tsx already uses at run time; each file is transpiled on its
// own (no bundling), so imports, native modules and the folder layout stay exactly as in the sources.
import { build } from 'esbuild';
import { cp, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const DIRS = ['src', 'analysis', 'demo', 'server', 'cli'];

/** Every .ts source under `dir` (tests excluded), with its mtime, for the staleness stamp bin/viral-lens.mjs reads. */
async function sources(dir, out = []) {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await sources(p, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') && !e.name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const t0 = performance.now();
const files = (await Promise.all(DIRS.map((d) => sources(join(root, d))))).flat().sort();
const dist = join(root, 'dist');
await rm(dist, { recursive: true, force: true });
await build({
  entryPoints: files,
  outdir: dist,
  outbase: root,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
});
// Static files the dashboard serves next to its module (server/app.ts PUBLIC_DIR).
await cp(join(root, 'server', 'public'), join(dist, 'server', 'public'), { recursive: true });
const newest = Math.max(...(await Promise.all(files.map(async (f) => (await stat(f)).mtimeMs))));
await mkdir(dist, { recursive: true });
await writeFile(join(dist, 'build.json'), JSON.stringify({ files: files.length, newestSourceMtimeMs: newest, builtAt: new Date().toISOString() }) + '\n');
process.stdout.write(`viral-lens: built ${files.length} modules into ${relative(process.cwd(), dist) || '.'}/ in ${((performance.now() - t0) / 1000).toFixed(2)} s\n`);
