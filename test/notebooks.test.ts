import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

/**
 * Executes every figure notebook (notebooks/*.ipynb) headless with notebooks/run.py on a run folder and checks that
 * each one ran and wrote its SVG and PDF. The run folder is a fresh `npm run demo -- --quick` output made here (every
 * input the notebooks read: captures at three steps with grids and labels, attention.json, shuffle.json), or
 * VIRAL_LENS_NOTEBOOK_RUN when set (an existing run, e.g. a full demo).
 * Needs Debian's python3-nbclient and the npm package `deno`: skipped when missing, a failure under CI=true.
 */
const ROOT = join(import.meta.dirname, '..');

function findPython(): string | null {
  // Debian's interpreter first: a pyenv/venv python3 on PATH usually lacks the apt-installed nbclient.
  for (const py of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(py, ['-c', 'import nbclient, nbformat, jupyter_client'], { encoding: 'utf8' });
    if (r.status === 0) return py;
  }
  return null;
}

function missingParts(): string[] {
  const missing: string[] = [];
  if (!findPython()) missing.push('python3 with nbclient (apt-get install python3-nbclient python3-nbformat python3-jupyter-client)');
  if (!existsSync(join(ROOT, 'node_modules', 'deno', 'install_api.cjs'))) missing.push('the npm package deno (npm ci)');
  return missing;
}

const missing = missingParts();
const skip = missing.length > 0 && process.env.CI !== 'true' ? `notebook runner needs: ${missing.join('; ')}` : false;

test('every figure notebook executes headless and writes its figures', { skip, timeout: 600_000 }, async () => {
  assert.deepEqual(missing, [], `missing system parts under CI: ${missing.join('; ')}`);
  const work = await mkdtemp(join(tmpdir(), 'vl-notebooks-'));
  try {
    let run = process.env.VIRAL_LENS_NOTEBOOK_RUN;
    if (!run) {
      run = join(work, 'run');
      execFileSync('npm', ['run', '-s', 'demo', '--', '--quick', '--out', run, '--quiet'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
    }
    const figures = join(work, 'figures');
    const r = spawnSync(findPython()!, [join(ROOT, 'notebooks', 'run.py'), '--run', run, '--figures', figures, '--timeout', '300'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, VIRAL_LENS_ENGINE: 'ref' },
      timeout: 580_000,
    });
    const report = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.status, 0, `notebooks/run.py failed:\n${report}`);
    const books = (await readdir(join(ROOT, 'notebooks'))).filter((f) => f.endsWith('.ipynb'));
    assert.ok(books.length >= 7, `found ${books.length} notebooks`);
    for (const b of books) assert.match(r.stdout, new RegExp(`ok +${b.replace('.', '\\.')}`), report);
    const files = await readdir(figures);
    for (const name of ['layerwise-cknna', 'residual-vs-viral', 'pca-grids', 'probes', 'attention-entropy', 'attention-overlay', 'patch-shuffle', 'cknna-over-steps']) {
      assert.ok(files.includes(`${name}.svg`) && files.includes(`${name}.pdf`), `${name}.svg/.pdf missing (have ${files.join(', ')})`);
      const svg = await readFile(join(figures, `${name}.svg`), 'utf8');
      assert.match(svg, /^<svg/);
      const pdf = await readFile(join(figures, `${name}.pdf`));
      assert.equal(pdf.subarray(0, 5).toString(), '%PDF-');
    }
    // Figures of the demo's own numbers: its variants, its aligned layer, its probe label, its scene under the overlay.
    const json = async (name: string) => JSON.parse(await readFile(join(figures, `${name}.json`), 'utf8'));
    const variants = (await json('residual-vs-viral')).data;
    assert.ok(JSON.stringify(variants).includes('"n_objects probe @ ℓ1"'), 'the demo has no `count` label: the probe falls back to n_objects at the aligned layer 1');
    assert.equal((await json('attention-overlay')).provenance.variant, 'viral');
    assert.match(await readFile(join(figures, 'attention-overlay.svg'), 'utf8'), /<image[^>]+href="data:image\/png;base64,/, 'the overlay is drawn over the scene');
    // The task accuracy's chance level comes from the run's demo.json (demo/model/chance.ts), not recomputed.
    const demo = JSON.parse(await readFile(join(run, 'demo.json'), 'utf8')) as { accuracy: { question_type: string; chance: number }[] };
    const overallChance = demo.accuracy.find((a) => a.question_type === 'overall')!.chance;
    assert.equal((await json('residual-vs-viral')).provenance.task_accuracy_chance, 100 * overallChance);
    const shuffleBook = JSON.parse(await readFile(join(figures, 'notebooks', '06-patch-shuffle.ipynb'), 'utf8'));
    assert.match(JSON.stringify(shuffleBook.cells.flatMap((c: { outputs?: unknown[] }) => c.outputs ?? [])), /chance %/, 'the patch-shuffle table shows the chance level');
    const shuffle = await json('patch-shuffle');
    assert.equal(shuffle.provenance.model, 'viral-lens mini-LLaVA (embedded demo)');
    assert.deepEqual([...new Set(shuffle.data.map((d: { variant: string }) => d.variant))], ['baseline', 'residual', 'viral']);
    // The executed notebooks are kept, with their outputs (the runner drains late kernel output).
    const executed = JSON.parse(await readFile(join(figures, 'notebooks', '01-layerwise-cknna.ipynb'), 'utf8'));
    const outputs = executed.cells.flatMap((c: { outputs?: { output_type: string }[] }) => c.outputs ?? []);
    assert.ok(outputs.some((o: { output_type: string }) => o.output_type === 'display_data'), 'no figure displayed in the executed notebook');
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});

test('a failing notebook fails the runner and still writes the executed notebook', { skip, timeout: 120_000 }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'vl-notebooks-fail-'));
  try {
    // An empty run folder: the layer-wise notebook must fail with its message, not silently produce nothing.
    const r = spawnSync(findPython()!, [join(ROOT, 'notebooks', 'run.py'), join(ROOT, 'notebooks', '01-layerwise-cknna.ipynb'), '--run', work, '--figures', join(work, 'fig')], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 110_000,
    });
    assert.equal(r.status, 1, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /FAIL 01-layerwise-cknna\.ipynb/);
    assert.match(r.stdout + r.stderr, /no capture \(manifest\.json\) found/);
    assert.ok(existsSync(join(work, 'fig', 'notebooks', '01-layerwise-cknna.ipynb')));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});
