import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fixture = join(root, 'fixtures', 'capture-small');

async function cli(...args: string[]) {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'cli', 'main.ts'), ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test('embed umap: seeded (same seed → same map), one point per sample, figure files written', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'viral-lens-embed-'));
  try {
    const args = ['embed', 'umap', fixture, '--layer', '2', '--label', 'count', '--seed', '7', '--epochs', '60', '--json', '--quiet'];
    const a = await cli(...args, '--out', join(dir, 'u.svg'));
    assert.equal(a.code, 0, a.stderr);
    const b = await cli(...args);
    const ja = JSON.parse(a.stdout);
    const jb = JSON.parse(b.stdout);
    assert.equal(ja.data.length, 40, 'mean tokens: one point per sample');
    assert.deepEqual(ja.data, jb.data);
    assert.equal(ja.provenance.seed, 7);
    assert.equal(ja.provenance.token_mode, 'mean');
    assert.match(ja.provenance.engine, /cpu|ref/);
    const svg = await readFile(join(dir, 'u.svg'), 'utf8');
    assert.match(svg, /^<svg[\s\S]*<\/svg>\s*$/);
    const other = JSON.parse((await cli(...args.map((x) => (x === '7' ? '8' : x)))).stdout);
    assert.notDeepEqual(other.data, ja.data, 'another seed gives another map');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('embed pca-grid: one panel per layer on the token grid; bad label and layer are one-line errors', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'viral-lens-pca-'));
  try {
    const r = await cli('embed', 'pca-grid', fixture, '--sample', '3', '--out', join(dir, 'g.pdf'), '--quiet');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.split('\n').filter((l) => /^baseline\s+\d:/.test(l)).length, 5, r.stdout);
    assert.equal((await readFile(join(dir, 'g.pdf'))).subarray(0, 5).toString(), '%PDF-');
    const bad = await cli('embed', 'umap', fixture, '--layer', '1', '--label', 'colour', '--quiet');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /no label 'colour'.*class, count/);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
    const noLayer = await cli('embed', 'umap', fixture, '--quiet');
    assert.equal(noLayer.code, 2);
    assert.match(noLayer.stderr, /--layer is required/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
