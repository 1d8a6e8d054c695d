import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import type { Matrix } from '../src/core/matrix.js';

/** golden.json's generator, written from its formulas (fixtures/golden/golden.json). */
export function goldenInputs(n: number, dA: number, dB: number): { A: Matrix; B: Matrix } {
  const A = new Float64Array(n * dA);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < dA; j++) A[i * dA + j] = Math.sin(0.37 * (i + 1) * (j + 1)) + 0.5 * Math.cos(1.3 * i + 0.7 * j);
  const B = new Float64Array(n * dB);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < dB; j++) B[i * dB + j] = A[i * dA + (j % dA)]! + 0.5 * Math.sin(0.23 * (i + 1) * (j + 1));
  return { A: { rows: n, cols: dA, data: A }, B: { rows: n, cols: dB, data: B } };
}

/** Seeded Gaussian matrix (mulberry32 + Box–Muller), independent of the code under test. */
export function randn(rows: number, cols: number, seed: number): Matrix & { data: Float64Array } {
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return (((x ^ (x >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const data = new Float64Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return { rows, cols, data };
}

/** A random orthogonal d×d matrix (Gram–Schmidt on a Gaussian matrix). */
export function randomRotation(d: number, seed: number): Float64Array {
  const g = randn(d, d, seed).data;
  for (let i = 0; i < d; i++) {
    for (let p = 0; p < i; p++) {
      let dot = 0;
      for (let c = 0; c < d; c++) dot += g[i * d + c]! * g[p * d + c]!;
      for (let c = 0; c < d; c++) g[i * d + c]! -= dot * g[p * d + c]!;
    }
    let norm = 0;
    for (let c = 0; c < d; c++) norm += g[i * d + c]! ** 2;
    norm = Math.sqrt(norm);
    for (let c = 0; c < d; c++) g[i * d + c]! /= norm;
  }
  return g;
}

export function matmul(a: Matrix, r: Float64Array, q: number): Matrix & { data: Float64Array } {
  const out = new Float64Array(a.rows * q);
  for (let i = 0; i < a.rows; i++)
    for (let c = 0; c < a.cols; c++) {
      const v = a.data[i * a.cols + c]!;
      for (let o = 0; o < q; o++) out[i * q + o]! += v * r[c * q + o]!;
    }
  return { rows: a.rows, cols: q, data: out };
}

export function scale(a: Matrix, s: number): Matrix & { data: Float64Array } {
  return { rows: a.rows, cols: a.cols, data: Float64Array.from(a.data, (v) => v * s) };
}

/**
 * A Python that imports torch, for the shim and torch-engine tests. Debian's python3-torch lives in /usr/bin/python3's
 * dist-packages, which a pyenv/venv python3 first on PATH does not see, so VIRAL_LENS_PYTHON and both are tried.
 */
export function findTorchPython(): string | null {
  for (const py of [process.env.VIRAL_LENS_PYTHON, '/usr/bin/python3', 'python3']) {
    if (!py) continue;
    const r = spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  return null;
}

/**
 * The torch-needing test files' common start: the python to use, or why their tests skip. Under CI=true a missing
 * torch is a failing test named `ciTitle` instead (.ci/run installs python3-torch), never a silent skip.
 */
export function torchPythonOrSkip(missingMessage: string, ciTitle: string): { python: string | null; missing: string | false } {
  const python = findTorchPython();
  const missing = python ? false : missingMessage;
  if (missing && process.env.CI === 'true') test(ciTitle, () => assert.fail(missing));
  return { python, missing };
}
