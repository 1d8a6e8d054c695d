import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeFixtureCapture } from './server-fixture.js';

test('viral-lens serve RUNS_DIR prints the URL and ingest token, serves, and stops on SIGINT', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vl-serve-'));
  try {
    await writeFixtureCapture(join(root, 'viral', 'step-10'), 'viral', 10);
    const child = spawn(process.execPath, ['--import', 'tsx', 'cli/main.ts', 'serve', root, '--port', '0', '--engine', 'ref', '--workers', '1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, VIRAL_LENS_TOKEN: 'from-env-token' },
    });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 20000);
      child.stdout.on('data', () => {
        const m = /viral-lens dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      child.on('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
    });
    assert.match(out, /Authorization: Bearer from-env-token/);
    assert.match(out, /1 capture\(s\)/);
    const runs = await (await fetch(`${url}api/runs`)).json();
    assert.deepEqual(runs.captures.map((c: { id: string }) => c.id), ['viral/step-10']);
    const html = await (await fetch(url)).text();
    assert.match(html, /<title>viral-lens<\/title>/);
    const code = await new Promise<number | null>((resolve) => {
      child.on('exit', resolve);
      child.kill('SIGINT');
    });
    assert.equal(code, 0);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('viral-lens serve: bad arguments are one-line errors with exit code 2', async () => {
  const run = (args: string[]) =>
    new Promise<{ code: number | null; err: string }>((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'cli/main.ts', 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (c) => (err += c));
      child.on('exit', (code) => resolve({ code, err }));
    });
  const missing = await run([join(tmpdir(), 'no-such-runs-dir-xyz')]);
  assert.equal(missing.code, 2);
  assert.match(missing.err, /no-such-runs-dir-xyz: not found; RUNS_DIR must be a directory/);
  const port = await run([tmpdir(), '--port', 'abc']);
  assert.equal(port.code, 2);
  assert.match(port.err, /--port: expected an integer/);
});
