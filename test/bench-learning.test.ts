import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

test('bench:learning: a bad option is one line naming it, exit 2, before any training', () => {
  const cases: [string[], RegExp][] = [
    [['--types', 'colour,size'], /^--types: 'size' is not a question type \(count, colour, shape, position\)$/],
    [['--steps', '1.5'], /^--steps: expected an integer, got '1\.5'$/],
    [['--width', '0'], /^--width: expected an integer ≥ 1, got '0'$/],
    [['--seed=-1'], /^--seed: expected an integer ≥ 0, got '-1'$/],
    [['--lr=0'], /^--lr: expected a number > 0, got '0'$/],
    [['--bogus'], /^Unknown option '--bogus'/],
  ];
  for (const [args, message] of cases) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'bench', 'learning.bench.ts'), ...args], { cwd: root, encoding: 'utf8' });
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr.trim(), message, args.join(' '));
    assert.equal(r.stdout, '', `${args.join(' ')} printed before failing`);
  }
});
