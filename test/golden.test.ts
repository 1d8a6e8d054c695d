import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createEngine } from '../src/engine/index.js';
import { computeMetric, Features, preprocess, type MetricName } from '../src/metrics/index.js';
import { toFloat32 } from '../src/core/matrix.js';
import { goldenInputs } from './helpers.js';

// The leads' reference values, produced by the Platonic Representation Hypothesis code (provenance and how to
// regenerate them: fixtures/golden/README.md).
const here = dirname(fileURLToPath(import.meta.url));
const golden = JSON.parse(readFileSync(join(here, '..', 'fixtures', 'golden', 'golden.json'), 'utf8'));

interface Case {
  n: number;
  dA: number;
  dB: number;
  k: number;
  expected: Record<string, number>;
}

async function value(engineName: string, metric: MetricName, A: any, B: any, k: number, f32 = false): Promise<number> {
  const engine = await createEngine(engineName);
  let a = preprocess(A, 'l2');
  let b = preprocess(B, 'l2');
  if (f32) {
    a = toFloat32(a);
    b = toFloat32(b);
  }
  const r = await computeMetric(metric, new Features(a, engine, 'A'), new Features(b, engine, 'B'), k, 'l2');
  await engine.dispose();
  return r.value;
}

for (const c of golden.cases as Case[]) {
  const { A, B } = goldenInputs(c.n, c.dA, c.dB);
  const e = c.expected;
  for (const [engine, tol] of [['ref', 1e-9], ['cpu', 2e-5]] as const) {
    test(`golden n=${c.n}: ${engine} engine within ${tol}`, async () => {
      const close = (got: number, want: number, what: string) =>
        assert.ok(Math.abs(got - want) <= tol, `${what}: got ${got}, want ${want} (|Δ| = ${Math.abs(got - want)})`);
      close(await value(engine, 'cknna', A, B, c.k), e['cknna(A,B,k)']!, 'cknna(A,B)');
      close(await value(engine, 'cknna', B, A, c.k), e['cknna(B,A,k)']!, 'cknna(B,A)');
      close(await value(engine, 'cknna', A, B, c.n - 1), e['cknna(A,B,k=n-1)']!, 'cknna k=n-1');
      close(await value(engine, 'unbiased_cka', A, B, c.k), e['unbiased_cka(A,B)']!, 'unbiased_cka');
      close(await value(engine, 'cka', A, B, c.k), e['cka(A,B) biased, inner-product kernel']!, 'cka');
      // The reference averages these two in float32 (its golden values are float32 numbers, e.g. 0.73593747615...
      // for 471/640), so 1e-9 is unreachable for any exact implementation: ours is an exact fraction (a count
      // divided by n·k) and must sit within 2 float32 ulps (2·2⁻²⁴ relative) of the golden value.
      const f32 = (got: number, want: number, what: string) =>
        assert.ok(Math.abs(got - want) <= 2 * 2 ** -24 * Math.abs(want) + tol, `${what}: got ${got}, want ${want}`);
      const mk = await value(engine, 'mutual_knn', A, B, c.k);
      assert.ok(Math.abs(mk * c.n * c.k - Math.round(mk * c.n * c.k)) < 1e-6, 'mutual_knn is a count / (n·k)');
      f32(mk, e['mutual_knn(A,B,k)']!, 'mutual_knn');
      f32(await value(engine, 'cycle_knn', A, B, c.k), e['cycle_knn(A,B,k)']!, 'cycle_knn');
    });
  }
  test(`golden n=${c.n}: float32 inputs`, async () => {
    // The reference's float32 run differs from float64 by ~2e-7; our float32 engine must land within 2e-5 of it.
    const got = await value('cpu', 'cknna', A, B, c.k, true);
    assert.ok(Math.abs(got - e['cknna(A,B,k) with float32 inputs']!) <= 2e-5, `got ${got}`);
  });
}
