/**
 * Every analysis parameter is defined once (src/metrics/params.ts, analysis/params.ts): this walks every analysis
 * schema and checks that the CLI's usage text, the server's query schema and /api/runs `params`, and the page all
 * show the same defaults, bounds and choices; and that a k the rows cannot hold is refused before any work.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { ANALYSES, COMPARE, CURVES, describeAnalysis, LAYERWISE, PROBE, readParams, UMAP, type AnalysisSchema } from '../analysis/params.js';
import { runLayerwise } from '../analysis/layerwise.js';
import { COMMANDS } from '../cli/commands.js';
import { flagFor } from '../cli/args.js';
import { usageOfParam } from '../cli/params.js';
import { buildApp, type Dashboard } from '../server/app.js';
import { CURVE_DEFAULTS, figureQuerySchema } from '../server/figures-api.js';
import { ParamError } from '../src/core/errors.js';
import { RefEngine } from '../src/engine/ref.js';
import type { Engine } from '../src/engine/index.js';
import { DEFAULT_K, METRIC_NAMES, METRICS } from '../src/metrics/index.js';
import { jsonSchemaOf, K } from '../src/metrics/params.js';
import { writeNpy } from '../src/store/npy.js';
import { makeRunsFixture } from './server-fixture.js';

const root = join(import.meta.dirname, '..');

/** The CLI commands whose usage text lists an analysis's parameters. */
const USAGE_OF: [AnalysisSchema, string][] = [
  [COMPARE, 'compare'],
  [LAYERWISE, 'layerwise'],
  [UMAP, 'embed'],
  [PROBE, 'probe'],
];

test('k is defaulted and bounded once: DEFAULT_K, the schemas and the definition agree', () => {
  assert.equal(DEFAULT_K, K.default);
  for (const a of Object.values(ANALYSES)) {
    const k = a.params.find((p) => p.def.name === 'k');
    if (k) assert.equal(k.def, K, `${a.name} uses the one k`);
  }
  assert.deepEqual(CURVE_DEFAULTS, { metric: 'cknna', k: K.default, preprocess: 'prh', tokens: 'per-token' });
});

test('the CLI usage text shows every parameter of each analysis with its default, bounds and choices', () => {
  for (const [a, command] of USAGE_OF) {
    const usage = COMMANDS[command]!.usage;
    for (const p of a.params) {
      assert.ok(usage.includes(usageOfParam(p)), `${command} usage lacks ${usageOfParam(p)}`);
      assert.ok(usage.includes(flagFor(p.def.name)), `${command} usage names ${flagFor(p.def.name)}`);
      if (p.default !== undefined) assert.match(usageOfParam(p), new RegExp(`default ${[p.default].flat().join(',')}`));
      if (p.def.max !== undefined) assert.match(usageOfParam(p), new RegExp(`\\.\\.${p.def.max}`));
      for (const c of p.def.choices ?? []) assert.ok(usageOfParam(p).includes(c), `${p.def.name}: ${c}`);
    }
  }
  assert.match(COMMANDS.compare!.usage, /--metric cknna\|mutual_knn\|cycle_knn\|cka\|unbiased_cka\|cosine/);
});

test('the server validates each parameter query field exactly as its definition says', () => {
  for (const a of [CURVES, UMAP]) {
    for (const p of a.params) {
      if (p.def.name === 'engine') continue; // the server's engine is chosen at start, not per query
      assert.deepEqual((figureQuerySchema.properties as Record<string, unknown>)[p.def.name], jsonSchemaOf(p.def), `query field ${p.def.name}`);
    }
  }
});

test('readParams fills defaults and refuses values out of bounds with a ParamError naming the parameter', () => {
  assert.deepEqual(readParams(LAYERWISE, {}), { metrics: ['cknna'], k: 10, preprocess: 'prh', tokenMode: 'mean', seed: 0, engine: 'auto', knn: 'auto', permutations: 0, bootstrap: 0 });
  assert.throws(() => readParams(LAYERWISE, { k: '1' }), (e: unknown) => e instanceof ParamError && e.param === 'k' && /k must be an integer ≥ 2/.test(e.detail));
  assert.throws(() => readParams(LAYERWISE, { k: '1001' }), (e: unknown) => e instanceof ParamError && e.param === 'k');
  assert.throws(() => readParams(LAYERWISE, { q: '0' }), (e: unknown) => e instanceof ParamError && e.param === 'q');
  assert.throws(() => readParams(LAYERWISE, { metric: 'cka,nope' }), (e: unknown) => e instanceof Error && /unknown metric 'nope'/.test(e.message));
  // The zod schema (jobs, shard parameters) holds the same bounds.
  assert.equal(LAYERWISE.schema.safeParse({ k: 1 }).success, false);
  assert.equal(LAYERWISE.schema.safeParse({ k: 5, metrics: ['cka'] }).success, true);
});

describe('the page and /api/runs', () => {
  let dir: string;
  let d: Dashboard;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vl-params-'));
    await makeRunsFixture(dir);
    d = await buildApp({ runsDir: dir, engine: 'ref', workers: 1, pollMs: 1000 });
  });
  after(async () => {
    await d?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('/api/runs serves the curve and UMAP parameters from their schemas, titles from the metric registry', async () => {
    const runs = (await d.app.inject({ url: '/api/runs' })).json();
    assert.deepEqual(runs.params, { curves: describeAnalysis(CURVES), umap: describeAnalysis(UMAP) });
    const metric = runs.params.curves.find((p: { name: string }) => p.name === 'metric');
    assert.deepEqual(metric.choices, METRIC_NAMES.map((m) => [m, METRICS[m].title]));
    const k = runs.params.curves.find((p: { name: string }) => p.name === 'k');
    assert.deepEqual([k.default, k.min, k.max], [runs.defaults.k, K.min, K.max]);
  });

  test('the page builds its selectors from those parameters and types no list or bound of its own', async () => {
    const app = await readFile(join(root, 'server', 'public', 'app.js'), 'utf8');
    for (const name of ['metric', 'tokens', 'preprocess']) assert.match(app, new RegExp(`choiceParam\\('curves', '${name}'`));
    assert.match(app, /boundedParam\('curves', 'k'/);
    assert.doesNotMatch(app, /'unbiased_cka'|'mutual_knn'/, 'no metric list on the page');
    assert.doesNotMatch(app, /numberParam\('k'/, 'no k bounds on the page');
  });
});

/** An engine that counts its calls, to show that a refused parameter costs no engine work. */
function countingEngine(): { engine: Engine; calls: () => number } {
  const inner = new RefEngine();
  let calls = 0;
  const engine = new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function' || prop === 'dispose') return v;
      return (...args: unknown[]) => {
        calls++;
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  }) as Engine;
  return { engine, calls: () => calls };
}

test('a k the rows cannot hold is refused from the shapes, before the engine computes anything', async () => {
  const { engine, calls } = countingEngine();
  const capture = join(root, 'fixtures', 'capture-small');
  await assert.rejects(
    runLayerwise(capture, { engine, metrics: ['cknna'], k: 40, preprocess: 'prh', tokenMode: 'mean' }),
    (e: unknown) => e instanceof ParamError && e.param === 'k' && /k = 40 must be smaller than n = 40/.test(e.detail),
  );
  assert.equal(calls(), 0, 'no engine call before the refusal');
  // The same k is fine per token (n = 40 × 4 = 160), where the engine then does the work.
  const rows = await runLayerwise(capture, { engine, metrics: ['cknna'], k: 40, preprocess: 'prh', tokenMode: 'per-token', layers: [0] });
  assert.ok(rows.length > 0 && calls() > 0);
});

test('compare: --topk is checked against the file headers before an engine is created', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vl-params-npy-'));
  try {
    const npy = join(dir, 'A.npy');
    await writeNpy(npy, [40, 3], Float32Array.from({ length: 120 }, (_, i) => Math.sin(i)));
    // An unknown engine is reported when the engine is created: the k error comes first.
    const args = ['--import', 'tsx', join(root, 'cli', 'main.ts'), 'compare', npy, npy, '--metric', 'cknna', '--preprocess', 'l2', '--topk', '500', '--engine', 'tpu'];
    const r = await promisify(execFile)(process.execPath, args, { cwd: root }).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(r?.code, 2);
    assert.equal(r.stderr, 'viral-lens compare: --topk: k = 500 must be smaller than n = 40\n');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
