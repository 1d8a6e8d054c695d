/**
 * Shared helpers for the figure notebooks (Deno Jupyter kernel). Each notebook reads one run folder and writes its
 * figures as SVG + PDF (+ the numbers behind them as JSON) into a figures folder:
 *   VIRAL_LENS_RUN      run folder (default runs/demo, relative to the repository root)
 *   VIRAL_LENS_FIGURES  output folder (default <run>/figures)
 *   VIRAL_LENS_ENGINE   compute engine for similarity notebooks (default auto)
 */
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderSvg, svgToPdf, type Figure, type VlSpec } from '../analysis/figures.ts';
import { listRuns, openCapture, type Capture } from '../src/store/capture.ts';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function env(name: string): string | undefined {
  return Deno.env.get(name) || undefined;
}

export function runDir(): string {
  const r = env('VIRAL_LENS_RUN') ?? 'runs/demo';
  return isAbsolute(r) ? r : join(ROOT, r);
}

export function figuresDir(): string {
  const f = env('VIRAL_LENS_FIGURES');
  return f ? (isAbsolute(f) ? f : join(ROOT, f)) : join(runDir(), 'figures');
}

export function engineName(): string {
  return env('VIRAL_LENS_ENGINE') ?? 'auto';
}

/** Fails with a message that says what the notebook needs, instead of a bare ENOENT deep inside. */
export async function requireFile(path: string, what: string): Promise<void> {
  try {
    await Deno.stat(path);
  } catch {
    throw new Error(`${path} not found: this notebook needs ${what}. Set VIRAL_LENS_RUN to a run folder that has it (see notebooks/README.md).`);
  }
}

/** Every capture under the run, opened. */
export async function allCaptures(): Promise<Capture[]> {
  const run = runDir();
  await requireFile(run, 'a run folder with captures');
  const entries = (await listRuns(run)).filter((e) => !e.error);
  if (entries.length === 0) throw new Error(`${run}: no capture (manifest.json) found`);
  return Promise.all(entries.map((e) => openCapture(e.dir)));
}

/** The capture with the latest step of each (run, variant): the "final" model of each variant. */
export async function latestPerVariant(): Promise<Capture[]> {
  const best = new Map<string, Capture>();
  for (const c of await allCaptures()) {
    const key = c.manifest.variant;
    const step = c.manifest.checkpoint?.step ?? -1;
    const prev = best.get(key);
    if (!prev || step > (prev.manifest.checkpoint?.step ?? -1)) best.set(key, c);
  }
  const order = ['baseline', 'residual', 'viral', 'other'];
  return [...best.values()].sort((a, b) => order.indexOf(a.manifest.variant) - order.indexOf(b.manifest.variant));
}

/** Renders a figure to SVG and PDF in the figures folder, writes its data + provenance as JSON, shows the SVG. */
export async function save(fig: Figure | { name: string; spec: VlSpec; data?: unknown; provenance?: unknown }): Promise<string[]> {
  const out = figuresDir();
  await Deno.mkdir(out, { recursive: true });
  const warnings: string[] = [];
  const svg = await renderSvg(fig.spec, { onWarning: (w) => warnings.push(w) });
  const pdf = await svgToPdf(svg);
  const base = join(out, fig.name);
  await Deno.writeTextFile(`${base}.svg`, svg);
  await Deno.writeFile(`${base}.pdf`, pdf);
  await Deno.writeTextFile(`${base}.json`, JSON.stringify({ provenance: fig.provenance ?? null, data: fig.data ?? null }, null, 1));
  const jupyter = (Deno as unknown as { jupyter?: { display: (b: unknown, o: unknown) => Promise<void> } }).jupyter;
  if (jupyter) await jupyter.display({ 'image/svg+xml': svg }, { raw: true });
  for (const w of warnings) console.warn(`vega: ${w}`);
  console.log(`wrote ${base}.svg, ${base}.pdf, ${base}.json`);
  return [`${base}.svg`, `${base}.pdf`];
}

/**
 * The per-image label the probe notebooks decode: VIRAL_LENS_PROBE_LABEL, else the first of `count` (hand-made
 * captures) and `n_objects` (the demo's object count) that every capture has; null when none has one.
 */
export function probeLabel(captures: readonly Capture[]): string | null {
  const wanted = env('VIRAL_LENS_PROBE_LABEL');
  if (wanted) return wanted;
  return ['count', 'n_objects'].find((l) => captures.length > 0 && captures.every((c) => l in c.labels)) ?? null;
}

/** The layer a capture's variant trained (VIRAL aligned / residual re-injected), from its manifest's model object. */
export function trainedLayer(c: Capture): number | null {
  const m = c.manifest.model as Record<string, unknown>;
  // `aligned_layer` is the documented key (server/README.md); `align_layer` is accepted as an alias.
  const v = m.aligned_layer ?? m.align_layer;
  return typeof v === 'number' && Number.isInteger(v) ? v : null;
}

/** A series label per capture: the variant, plus the step when several steps of one variant are shown. */
export function seriesOf(c: Capture, withStep = false) {
  const m = c.manifest;
  const step = m.checkpoint?.step ?? null;
  return { label: withStep && step !== null ? `${m.variant} @ ${step}` : m.variant, variant: m.variant, step };
}

/**
 * The demo's chance level per question type ('overall', 'count', …; demo/model/chance.ts) from <run>/demo.json, as a
 * fraction; null when the run has no demo.json or an older one without the field (e.g. a PyTorch run).
 */
export async function chanceLevels(): Promise<Map<string, number | null> | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(join(runDir(), 'demo.json'));
  } catch {
    return null;
  }
  const rows = (JSON.parse(text) as { accuracy?: { question_type: string; chance?: number | null }[] }).accuracy ?? [];
  const out = new Map<string, number | null>();
  for (const r of rows) if (r.chance !== undefined && !out.has(r.question_type)) out.set(r.question_type, r.chance);
  return out.size ? out : null;
}
