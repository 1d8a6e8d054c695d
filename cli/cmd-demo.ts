import { mkdir } from 'node:fs/promises';
import { relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { DEMO_METRIC, parseVariants, runDemo, type DemoProgress, type DemoResult } from '../demo/demo.js';
import { parseBackend } from '../demo/model/backend.js';
import { QUESTION_TYPES } from '../demo/model/scenes.js';
import { intOption, listOption } from './args.js';
import { startDashboard, untilInterrupted } from './cmd-serve.js';
import { DEFAULT_HOST, DEFAULT_PORT } from '../server/app.js';
import { fmt, table } from './format.js';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: false,
    options: {
      out: { type: 'string', default: 'runs/demo' },
      steps: { type: 'string' },
      seed: { type: 'string' },
      quick: { type: 'boolean', default: false },
      variants: { type: 'string' },
      backend: { type: 'string', default: 'auto' },
      engine: { type: 'string', default: 'auto' },
      'no-workers': { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
      serve: { type: 'boolean' },
      'no-serve': { type: 'boolean', default: false },
      port: { type: 'string' },
    },
  });
  void positionals;
  const steps = values.steps === undefined ? undefined : intOption('steps', values.steps, 0);
  // The dashboard comes up before training so its pages follow the captures live. Default: on for a person at a
  // terminal, off for --quick, scripts and CI (it runs until Ctrl-C).
  const serve = values.serve ?? (!values['no-serve'] && !values.quick && process.stdout.isTTY === true);
  let dashboard: Awaited<ReturnType<typeof startDashboard>> | null = null;
  if (serve) {
    await mkdir(resolve(values.out!), { recursive: true });
    dashboard = await startDashboard(resolve(values.out!), { port: intOption('port', values.port, DEFAULT_PORT), host: DEFAULT_HOST, engine: values.engine! });
  }
  const progress = new DemoBars(!values.quiet);
  let result: DemoResult;
  try {
    result = await runDemo({
      out: values.out!,
      seed: intOption('seed', values.seed, 0),
      quick: values.quick!,
      steps,
      variants: parseVariants(listOption(values.variants)),
      backend: parseBackend(values.backend!),
      engine: values.engine!,
      workers: !values['no-workers'],
      onProgress: (e) => progress.update(e),
    });
  } catch (err) {
    await dashboard?.close();
    throw err;
  } finally {
    progress.stop();
  }
  process.stdout.write(renderDemo(result));
  if (dashboard) {
    process.stdout.write(`\ndashboard: ${dashboard.url} (layer-wise, checkpoints, variants, embeddings, probes, attention, patch shuffle)\n`);
    await untilInterrupted();
    await dashboard.close();
  }
  return 0;
}

/** Progress bars on stderr: features, one bar per variant, analysis; one line per milestone when not a TTY. */
class DemoBars {
  private multi: cliProgress.MultiBar | null = null;
  private readonly bars = new Map<string, cliProgress.SingleBar>();
  private readonly tty = process.stderr.isTTY === true;

  constructor(private readonly enabled: boolean) {}

  private bar(key: string, total: number, label: string): cliProgress.SingleBar | null {
    if (!this.enabled || !this.tty) return null;
    this.multi ??= new cliProgress.MultiBar(
      { stream: process.stderr, format: '{label} [{bar}] {value}/{total} {info}', hideCursor: true, clearOnComplete: false, etaBuffer: 50 },
      cliProgress.Presets.shades_classic,
    );
    let b = this.bars.get(key);
    if (!b) {
      b = this.multi.create(total, 0, { label: label.padEnd(14), info: '' });
      this.bars.set(key, b);
    }
    return b;
  }

  private line(text: string): void {
    if (this.enabled && !this.tty) process.stderr.write(`${text}\n`);
  }

  update(e: DemoProgress): void {
    if (e.kind === 'features') {
      const b = this.bar('features', e.total, 'features');
      b?.update(e.done, { info: e.cached ? '(from cache)' : 'encoder + teacher' });
      if (e.done === e.total) this.line(`features: ${e.total} images${e.cached ? ' (from cache)' : ''}`);
    } else if (e.kind === 'variant') {
      const ev = e.event;
      if (ev.kind === 'started') this.line(`${ev.variant}: training (${ev.params} parameters, ${ev.backend.description})`);
      if (ev.kind === 'step') {
        const b = this.bar(ev.variant, ev.total, ev.variant);
        b?.update(ev.step, { info: `LM loss ${ev.lm.toFixed(3)}${ev.vra !== null ? `, VIRAL ${ev.vra.toFixed(3)}` : ''}, ${Math.round(ev.ms)} ms/step` });
        if (ev.step === ev.total) this.line(`${ev.variant}: ${ev.total} steps, final LM loss ${ev.lm.toFixed(3)}${ev.vra !== null ? `, VIRAL loss ${ev.vra.toFixed(3)}` : ''}`);
      }
      if (ev.kind === 'captured') this.line(`${ev.variant}: captured step ${ev.step} → ${ev.dir}`);
    } else {
      const b = this.bar(`analysis:${e.stage}`, e.total, e.stage.slice(0, 14));
      b?.update(e.done);
      if (e.done === e.total) this.line(`${e.stage}: done`);
    }
  }

  stop(): void {
    this.multi?.stop();
    this.multi = null;
  }
}

const pct = (x: number | null | undefined) => (x === null || x === undefined || Number.isNaN(x) ? 'NaN' : (100 * x).toFixed(1));

/** A path for the report: relative to the working directory when inside it. */
function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r === '' ? '.' : r.startsWith('..') ? p : r;
}

/** The report's head: encoders, model, data, backend and timings. */
function setupLines(r: DemoResult): string[] {
  const c = r.variants[0]!.config;
  return [
    `viral-lens demo — a mini-LLaVA trained here, ${r.variants.length} variant(s) × ${r.size.steps} steps, seed ${r.seed}`,
    `  vision encoder: ${r.encoder.description}`,
    `  teacher:        ${r.teacher.description}`,
    `  model: projector (2-layer MLP) → ${c.layers} decoder layers, width ${c.width}, ${c.heads} heads (RoPE on ${c.rotaryFraction * 100}% of each head); aligned / re-injected layer ℓ = ${c.alignLayer}`,
    `  parameters: ${r.variants.map((v) => `${v.variant} ${v.params}`).join(', ')}${r.variants.some((v) => v.variant === 'viral') ? ' (viral includes its alignment head P, used only in training)' : ''}`,
    `  data: ${r.split.train + r.split.heldout} synthetic scenes (${r.split.train} train / ${r.split.heldout} held-out, split by image), ${r.size.turns} question turns per sequence, batch ${r.size.batchSize}`,
    `  backend: ${r.backend.description}; median ms/step: ${r.variants.map((v) => `${v.variant} ${Math.round(v.medianStepMs)}`).join(', ')}`,
    `  time: features ${r.featureSeconds.toFixed(0)} s${r.featuresCached ? ' (cached)' : ''}, training ${r.trainSeconds.toFixed(0)} s (${r.workers ? 'variants in parallel worker threads' : 'variants one after another'}), analysis ${r.analysisSeconds.toFixed(0)} s`,
    '',
  ];
}

/** Layer-wise tables per target, variants side by side, with undefined results and ties flagged. */
function layerwiseLines(r: DemoResult): string[] {
  const first = r.layerwise[0];
  if (!first) return [];
  const alignLayer = r.variants[0]!.config.alignLayer;
  const targets = [...new Set(r.layerwise.map((x) => x.target))];
  const variants = r.variants.map((v) => v.variant);
  const out = [
    `Layer-wise ${DEMO_METRIC.metric.toUpperCase()} at step ${r.size.steps} (A = image-token hidden states of the probe set, B = target; k = ${first.k}, preprocess ${first.preprocess}, tokens ${first.token_mode}, n = ${first.n}, engine ${r.engine})`,
  ];
  for (const target of targets) {
    const desc = target === 'encoder' ? r.encoder.description : target === 'teacher' ? r.teacher.description : target;
    out.push('', `vs ${target} — ${desc}`);
    const layers = [...new Map(r.layerwise.filter((x) => x.target === target).map((x) => [x.layer_index, x.layer])).entries()].sort((a, b) => a[0] - b[0]);
    const body = layers.map(([index, name]) => [
      index,
      name + (index === alignLayer ? '  ← ℓ' : ''),
      ...variants.map((v) => fmt(r.layerwise.find((x) => x.target === target && x.layer_index === index && x.variant === v)?.value)),
    ]);
    out.push(table(['idx', 'layer', ...variants], body).trimEnd());
  }
  const undef = r.layerwise.filter((x) => x.undefined_reason);
  for (const x of undef) out.push(`undefined: ${x.variant} ${x.layer} vs ${x.target}: ${x.undefined_reason}`);
  const tied = r.layerwise.filter((x) => (x.tied_rows_a ?? 0) + (x.tied_rows_b ?? 0) > 0);
  if (tied.length) out.push(`warning: ${tied.length} result(s) have ties at the k-th neighbour (see layerwise.csv)`);
  out.push('');
  return out;
}

/** Held-out accuracy per variant and question type, with chance and shuffled rows, and the patch-shuffle line. */
function accuracyLines(r: DemoResult): string[] {
  const v0 = r.variants[0]!;
  const o = v0.final.original;
  const shuffledRows = r.size.shuffleSeeds.length > 0;
  const out = [
    `Held-out accuracy (%), ${o.questions} questions on ${o.images} images, teacher-forced answers; chance = always the question type's most frequent training answer, scored on the same questions` +
      (shuffledRows ? `; "shuffled" = image tokens permuted before the projector (mean of ${r.size.shuffleSeeds.length} seed(s))` : ''),
  ];
  const types = ['overall', ...QUESTION_TYPES];
  const cellOf = (v: string, t: string) => r.accuracy.find((a) => a.variant === v && a.question_type === t);
  const guess = (t: string) => r.chance[t as keyof DemoResult['chance']]?.answer;
  const body = [
    ['questions', ...types.map((t) => String(cellOf(v0.variant, t)?.total ?? '–'))],
    // "–": no guess (a type never asked in training); the guessed answer in brackets.
    ['chance', ...types.map((t) => (cellOf(v0.variant, t)?.chance == null ? '–' : `${pct(cellOf(v0.variant, t)?.chance)}${guess(t) ? ` (${guess(t)})` : ''}`))],
    ...r.variants.flatMap((v) => [
      [v.variant, ...types.map((t) => pct(cellOf(v.variant, t)?.accuracy))],
      ...(shuffledRows ? [[`${v.variant} shuffled`, ...types.map((t) => pct(cellOf(v.variant, t)?.accuracy_shuffled))]] : []),
    ]),
  ];
  out.push(table(['', ...types], body).trimEnd());
  if (r.shuffle) {
    // The seed-averaged row when there are several seeds, else the single seed's row.
    const all = r.shuffle.rows.filter((x) => x.question_type === 'all');
    const rows = all.some((x) => x.shuffle_seed === null) ? all.filter((x) => x.shuffle_seed === null) : all;
    out.push(
      '',
      `Patch shuffle (paper Table 3), correct answers original → shuffled: ` +
        rows.map((x) => `${x.variant} ${x.correct_original} → ${+x.correct_shuffled.toFixed(1)} (drop ${+x.drop.toFixed(1)}${x.p_value === null ? '' : `, McNemar p = ${x.p_value.toPrecision(2)}`})`).join('; '),
    );
  }
  return out;
}

function filesLines(outDir: string): string[] {
  const d = shown(outDir);
  return [
    '',
    'Files:',
    `  captures      ${d}/<variant>/step-<N>/   (viral-lens layerwise|info|validate|probe <dir>)`,
    `  figure data   ${d}/layerwise.csv, dynamics.csv, accuracy.csv, accuracy_steps.csv, loss.csv, demo.json`,
    `  figures       ${d}/figures/*.vl.json (Vega-Lite, data inline)`,
    `  weights       ${d}/<variant>/model.safetensors; accuracy per step in <variant>/results.json`,
    `  analyses      ${d}/attention.json, shuffle.json   (viral-lens attention|shuffle ${d} recomputes them from the weights)`,
    `  dashboard     viral-lens serve ${d}`,
    '',
  ];
}

/** The printed report: setup, layer-wise tables per target (variants side by side), accuracy, files. */
export function renderDemo(r: DemoResult): string {
  return [...setupLines(r), ...layerwiseLines(r), ...accuracyLines(r), ...filesLines(r.out)].join('\n');
}
