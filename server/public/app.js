/* global vegaEmbed, history, location, setTimeout, clearTimeout, AbortController, Event */
/**
 * viral-lens dashboard client: plain ES module, no build step. Charts are Vega-Lite specs built on the server
 * (analysis/figures.ts) and rendered here with vega-embed; the same specs are exported server-side. Page state lives
 * in the URL query, so a link reproduces a view. Server-sent events (/api/events) keep the pages live.
 */

const PAGE_BY_PATH = {
  '/': 'overview',
  '/layerwise': 'layerwise',
  '/checkpoints': 'checkpoints',
  '/variants': 'variants',
  '/embeddings': 'embeddings',
  '/probes': 'probes',
  '/attention': 'attention',
  '/shuffle': 'shuffle',
  '/capture': 'capture',
};
/**
 * An analysis parameter as the server defines it (/api/runs `params`, from analysis/params.ts): default, bounds and
 * [value, title] choices, so no selector re-types a list or a bound.
 */
function paramSpec(analysis, name) {
  const spec = state.runs.params[analysis].find((p) => p.name === name);
  if (!spec) throw new Error(`the server defines no parameter ${name} for ${analysis}`);
  return spec;
}

/** A selector for a parameter of `analysis` (choices from the server), with the page's default. */
function choiceParam(analysis, name, fallback, onChange, label = name) {
  return selectParam(name, label, paramSpec(analysis, name).choices, fallback, onChange);
}

/** A number input for a parameter of `analysis`, bounded as the server bounds it. */
function boundedParam(analysis, name, fallback, onChange, label = name) {
  const spec = paramSpec(analysis, name);
  return numberParam(name, label, fallback ?? spec.default, spec.min, spec.max, onChange);
}

/** Query keys each figure uses (the server refuses unknown ones). */
const FIGURE_KEYS = {
  layerwise: ['runs', 'step', 'metric', 'target', 'tokens', 'k', 'preprocess', 'color', 'bootstrap', 'max_rows', 'captures'],
  checkpoints: ['runs', 'metric', 'target', 'tokens', 'k', 'preprocess', 'baseline', 'max_rows'],
  training: ['runs', 'metric', 'target', 'tokens', 'k', 'preprocess', 'layer', 'max_rows'],
  variants: ['runs', 'step', 'metric', 'tokens', 'k', 'preprocess', 'bootstrap', 'max_rows'],
  umap: ['runs', 'step', 'layer', 'label', 'tokens', 'seed', 'max_rows'],
  'pca-grid': ['runs', 'step', 'sample', 'layers'],
  probes: ['runs', 'step'],
  'attention-entropy': ['dir', 'field'],
  'attention-overlay': ['dir', 'variant', 'layer', 'head'],
  'patch-shuffle': ['dir', 'step'],
};
const ENTROPY_FIELDS = [
  ['entropy', 'Shannon entropy (bits)'],
  ['normalised_entropy', 'entropy / log2 N'],
  ['component_entropy', 'component entropy (bits)'],
];

const state = {
  page: PAGE_BY_PATH[location.pathname] ?? 'overview',
  params: new URLSearchParams(location.search),
  runs: null,
  cards: [],
};
window.viralLens = { state, views: {} };

// ------------------------------------------------------------------------------------------------ helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof window.Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, signal) {
  const res = await fetch(path, { signal, headers: { accept: 'application/json' } });
  let body = null;
  try {
    body = await res.json();
  } catch {
    throw new Error(`${res.status} ${res.statusText}`);
  }
  if (!res.ok) throw new Error(body?.message ?? `${res.status} ${res.statusText}`);
  return body;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${u[i]}`;
}

function fmtAgo(ms) {
  if (!ms) return '–';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 10);
}

function stepsText(steps) {
  if (!steps.length) return '–';
  if (steps.length <= 4) return steps.join(', ');
  return `${steps[0]} … ${steps[steps.length - 1]} (${steps.length})`;
}

function variantTag(v) {
  return h('span', { class: `tag ${v}` }, v);
}

function setParam(key, value) {
  if (value === undefined || value === null || value === '') state.params.delete(key);
  else state.params.set(key, String(value));
  const qs = state.params.toString();
  history.replaceState(null, '', `${location.pathname}${qs ? `?${qs}` : ''}`);
}

function param(key, fallback) {
  return state.params.get(key) ?? fallback;
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

// ------------------------------------------------------------------------------------------------ controls

function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

/** A <select> bound to a URL parameter; `onChange` reloads what depends on it. */
function selectParam(key, label, options, fallback, onChange) {
  const current = param(key, fallback);
  const sel = h('select', { name: key, 'aria-label': label });
  for (const [value, text] of options) sel.append(h('option', { value, selected: String(value) === String(current) }, text));
  if (![...sel.options].some((o) => o.selected) && sel.options.length) sel.options[0].selected = true;
  sel.addEventListener('change', () => {
    setParam(key, sel.value === String(fallback) ? '' : sel.value);
    onChange();
  });
  return field(label, sel);
}

function numberParam(key, label, fallback, min, max, onChange) {
  const input = h('input', { type: 'number', name: key, min, max, value: param(key, fallback), 'aria-label': label });
  input.addEventListener(
    'change',
    debounce(() => {
      const v = Number(input.value);
      if (!Number.isFinite(v) || v < min || v > max) return;
      setParam(key, v === Number(fallback) ? '' : v);
      onChange();
    }, 250),
  );
  return field(label, input);
}

/** Run checkboxes; all checked = no `runs` parameter, so runs that appear later are included automatically. */
function runsParam(onChange) {
  const all = state.runs.runs.map((r) => r.run);
  const chosen = state.params.get('runs')?.split(',') ?? all;
  const box = h('div', { class: 'checks', role: 'group', 'aria-label': 'runs' });
  for (const r of state.runs.runs) {
    const cb = h('input', { type: 'checkbox', name: 'run', value: r.run, checked: chosen.includes(r.run) });
    cb.addEventListener('change', () => {
      const picked = [...box.querySelectorAll('input:checked')].map((x) => x.value);
      if (picked.length === 0) {
        // An empty selection would read as "all runs": keep at least one.
        cb.checked = true;
        return;
      }
      setParam('runs', picked.length === all.length ? '' : picked.join(','));
      onChange();
    });
    box.append(h('label', {}, cb, r.run, ' ', ...r.variants.map(variantTag)));
  }
  return field('runs', box);
}

function selectedCaptures() {
  const chosen = state.params.get('runs')?.split(',');
  return state.runs.captures.filter((c) => !c.error && (!chosen || chosen.includes(c.run)));
}

function union(list) {
  return [...new Set(list)];
}

function stepOptions() {
  const steps = union(selectedCaptures().map((c) => c.step).filter((s) => s !== null)).sort((a, b) => a - b);
  return [['latest', 'latest'], ...steps.map((s) => [String(s), `step ${s}`])];
}

function targetOptions() {
  const t = union(selectedCaptures().flatMap((c) => c.targets.map((x) => x.name)));
  return t.map((x) => [x, x]);
}

function layerOptions() {
  const seen = new Map();
  for (const c of selectedCaptures()) for (const l of c.layers) if (!seen.has(l.index)) seen.set(l.index, l.name);
  return [...seen.entries()].sort((a, b) => a[0] - b[0]).map(([i, n]) => [String(i), `${i} · ${n}`]);
}

function labelOptions() {
  return union(selectedCaptures().flatMap((c) => c.labels)).map((x) => [x, x]);
}

// ------------------------------------------------------------------------------------------------ chart cards

class ChartCard {
  constructor(figure, title, subtitle) {
    this.figure = figure;
    this.controller = null;
    this.version = 0;
    this.result = null;
    this.el = h('section', { class: 'card', dataset: { figure, state: 'idle', version: '0' } });
    this.chart = h('div', { class: 'chart' });
    this.busy = h('div', { class: 'busy' }, 'computing…');
    this.messages = h('div', { class: 'messages' });
    this.exports = h('div', { class: 'exports' });
    this.el.append(
      h('div', { class: 'card-head' }, h('span', { class: 'card-title' }, title), subtitle ? h('span', { class: 'card-sub' }, subtitle) : null, this.exports),
      h('div', { class: 'card-body' }, this.busy, this.chart),
      this.messages,
    );
    state.cards.push(this);
  }

  query() {
    const q = new URLSearchParams();
    for (const key of FIGURE_KEYS[this.figure]) {
      const v = state.params.get(key);
      if (v !== null && v !== '') q.set(key, v);
    }
    return q;
  }

  async load() {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.el.dataset.state = 'loading';
    const q = this.query();
    this.renderExports(q);
    try {
      const res = await api(`/api/figures/${this.figure}?${q}`, controller.signal);
      if (controller.signal.aborted) return;
      this.result?.finalize();
      this.result = await vegaEmbed(this.chart, res.spec, { actions: false, renderer: this.figure === 'pca-grid' ? 'canvas' : 'svg' });
      window.viralLens.views[this.figure] = this.result.view;
      this.showMessages(res.notes, res.errors);
      this.el.dataset.rows = String(res.rows);
      this.el.dataset.captures = res.captures.join(',');
      this.el.dataset.version = String(++this.version);
      this.el.dataset.state = 'ready';
    } catch (err) {
      if (controller.signal.aborted || err.name === 'AbortError') return;
      this.result?.finalize();
      this.result = null;
      this.chart.replaceChildren(h('div', { class: 'empty' }, 'No chart.'));
      this.showMessages([], [{ capture: null, error: err.message }]);
      this.el.dataset.state = 'error';
      this.el.dataset.version = String(++this.version);
    }
  }

  renderExports(q) {
    this.exports.replaceChildren(
      ...['svg', 'png', 'pdf', 'csv', 'json'].map((f) => {
        const e = new URLSearchParams(q);
        e.set('format', f);
        return h('a', { href: `/api/export/${this.figure}?${e}`, download: '', title: `download ${f.toUpperCase()}`, dataset: { format: f } }, f.toUpperCase());
      }),
    );
  }

  showMessages(notes, errors) {
    this.messages.replaceChildren(
      ...errors.map((e) =>
        h('div', { class: 'msg error' }, e.capture ? h('span', {}, 'capture ', h('a', { class: 'mono', href: `/capture?id=${encodeURIComponent(e.capture)}` }, e.capture), ': ') : null, e.error),
      ),
      // Caveats on the numbers themselves (e.g. CKNNA at small n, from the metric's own rule) stand out from notes.
      ...notes.map((n) => h('div', { class: n.startsWith('warning:') ? 'msg note warning' : 'msg note' }, n)),
    );
  }
}

function reloadCards() {
  for (const c of state.cards) c.load();
}

// ------------------------------------------------------------------------------------------------ pages

function pageHeader(title, lede) {
  return [h('h1', {}, title), lede ? h('p', { class: 'lede' }, lede) : null];
}

/** The server's defaults for metric, k, preprocess and tokens (/api/runs `defaults`: the demo readout's settings). */
function defaults() {
  return state.runs.defaults;
}

function similarityControls(onChange, extra = []) {
  const targets = targetOptions();
  const d = defaults();
  return [
    choiceParam('curves', 'metric', d.metric, onChange),
    targets.length ? selectParam('target', 'target', targets, targets.some(([t]) => t === 'clip') ? 'clip' : targets[0][0], onChange) : null,
    choiceParam('curves', 'tokens', d.tokens, onChange),
    boundedParam('curves', 'k', d.k, onChange),
    choiceParam('curves', 'preprocess', d.preprocess, onChange),
    ...extra,
  ];
}

/** One run on the overview: a link to its curves, models, variants, steps, size, status. */
function runRow(r) {
  return h(
    'tr',
    { dataset: { run: r.run } },
    h('td', {}, h('a', { href: `/layerwise?runs=${encodeURIComponent(r.run)}&color=step` }, h('b', {}, r.run))),
    h('td', { class: 'mono' }, r.models.join(', ') || '–'),
    h('td', {}, ...r.variants.map(variantTag)),
    h('td', { class: 'num' }, stepsText(r.steps)),
    h('td', { class: 'num' }, r.samples ?? '–'),
    h('td', {}, r.targets.join(', ') || '–'),
    h('td', { class: 'num' }, fmtBytes(r.size_bytes)),
    h('td', {}, r.has_results ? 'results.json' : h('span', { class: 'muted' }, '–')),
    h('td', { class: 'num' }, fmtAgo(r.updated)),
    h('td', {}, r.errors ? h('span', { class: 'tag err' }, `${r.errors} error${r.errors > 1 ? 's' : ''}`) : h('span', { class: 'muted' }, 'ok')),
  );
}

/** One capture on the overview, read from its manifest. */
function captureRow(c) {
  return h(
    'tr',
    { dataset: { capture: c.id } },
    h('td', {}, h('a', { class: 'mono', href: `/capture?id=${encodeURIComponent(c.id)}` }, c.id)),
    h('td', { class: 'num' }, c.step ?? '–'),
    h('td', {}, c.variant ? variantTag(c.variant) : '–'),
    h('td', { class: 'num' }, c.samples ?? '–'),
    h('td', { class: 'num' }, c.tokens === null ? '–' : `${c.tokens}${c.grid ? ` (${c.grid[0]}×${c.grid[1]})` : ''}`),
    h('td', { class: 'num' }, c.layers.length || '–'),
    h('td', {}, c.targets.map((t) => `${t.name} (${t.dim})`).join(', ') || '–'),
    h('td', {}, c.labels.join(', ') || '–'),
    h('td', { class: 'num' }, fmtBytes(c.size_bytes)),
    h('td', {}, c.error ? h('span', { class: 'tag err', title: c.error }, 'error') : c.has_probes ? h('span', { class: 'tag' }, 'probes') : ''),
  );
}

/** One run reporting through /api/ingest. */
function liveRow(l) {
  return h(
    'tr',
    {},
    h('td', {}, h('span', { class: 'tag live' }, 'live'), ' ', h('b', {}, l.run)),
    h('td', { class: 'num' }, l.step ?? '–'),
    h('td', {}, variantTag(l.variant)),
    h('td', { class: 'mono' }, l.model),
    h('td', { class: 'num' }, l.samples),
    h('td', { class: 'num' }, l.layers),
    h('td', {}, l.targets.join(', ')),
    h('td', { class: 'num' }, fmtAgo(Date.parse(l.received))),
  );
}

const PAGES = {
  overview() {
    const { runs, captures, live, runs_dir: dir } = state.runs;
    const total = captures.reduce((a, c) => a + (c.size_bytes ?? 0), 0);
    const bad = captures.filter((c) => c.error).length;
    const runRows = runs.map(runRow);
    const capRows = captures.map(captureRow);
    const liveRows = live.map(liveRow);
    const th = (...names) => h('thead', {}, h('tr', {}, ...names.map((n) => h('th', {}, n))));
    return [
      ...pageHeader('Runs and captures', 'Every capture under RUNS_DIR (runs/<run>/step-<N>/), read from its manifest. The pages update by themselves while a run writes new steps.'),
      h(
        'div',
        { class: 'stats' },
        h('div', { class: 'stat' }, h('b', {}, runs.length), h('span', {}, 'runs')),
        h('div', { class: 'stat' }, h('b', {}, captures.length), h('span', {}, 'captures')),
        h('div', { class: 'stat' }, h('b', {}, union(captures.map((c) => c.variant).filter(Boolean)).length), h('span', {}, 'variants')),
        h('div', { class: 'stat' }, h('b', {}, fmtBytes(total)), h('span', {}, 'on disk')),
        h('div', { class: 'stat' }, h('b', { class: bad ? 'err' : '' }, bad), h('span', {}, 'captures with errors')),
      ),
      live.length ? [h('h2', {}, 'Live runs (ingest)'), h('table', { class: 'grid', id: 'live-runs' }, th('run', 'step', 'variant', 'model', 'samples', 'layers', 'targets', 'last report'), h('tbody', {}, liveRows))] : null,
      h('h2', {}, 'Runs'),
      runs.length
        ? h('table', { class: 'grid', id: 'runs-table' }, th('run', 'model', 'variants', 'steps', 'samples', 'targets', 'size', 'accuracy', 'updated', 'status'), h('tbody', {}, runRows))
        : h('p', { class: 'empty' }, `No captures under ${dir} yet. Write runs/<run>/step-<N>/ captures there (see docs/capture-format.md); this page will update.`),
      captures.length ? [h('h2', {}, 'Captures'), h('table', { class: 'grid', id: 'captures-table' }, th('capture', 'step', 'variant', 'samples', 'tokens', 'layers', 'targets', 'labels', 'size', ''), h('tbody', {}, capRows))] : null,
    ];
  },

  layerwise() {
    const card = new ChartCard('layerwise', 'Similarity per layer', 'image-token hidden states of each layer vs the target features');
    const reload = () => card.load();
    const byStep = param('color', 'variant') === 'step';
    return [
      ...pageHeader(
        'Layer-wise similarity',
        'One line per variant (latest or chosen step) or per checkpoint of the selected runs. Bands: bootstrap confidence intervals when requested. Dashed rules: the layer VIRAL aligns and the layers the residual variant re-injects.',
      ),
      h(
        'div',
        { class: 'controls' },
        runsParam(rebuild),
        h('div', { class: 'sep' }),
        selectParam('color', 'lines per', [['variant', 'variant'], ['step', 'checkpoint']], 'variant', rebuild),
        byStep ? null : selectParam('step', 'step', stepOptions(), 'latest', reload),
        ...similarityControls(reload, [selectParam('bootstrap', 'CI', [['', 'none'], ['100', '95% (100 draws)'], ['300', '95% (300 draws)']], '', reload)]),
      ),
      card.el,
    ];
  },

  checkpoints() {
    const heat = new ChartCard('checkpoints', 'Layer × step', 'per run, and the difference to the baseline run at the same step');
    const line = new ChartCard('training', 'One layer across training');
    const reload = () => reloadCards();
    const runs = state.runs.runs.map((r) => [r.run, `${r.run} (${r.variants.join(', ')})`]);
    return [
      ...pageHeader('Checkpoint comparison', 'How the similarity profile moves during training: every captured step of every selected run.'),
      h(
        'div',
        { class: 'controls' },
        runsParam(reload),
        h('div', { class: 'sep' }),
        ...similarityControls(reload),
        selectParam('baseline', 'baseline', [['', 'auto (variant baseline)'], ...runs], '', reload),
        selectParam('layer', 'layer (lower chart)', [['', 'aligned layer'], ...layerOptions()], '', () => line.load()),
      ),
      heat.el,
      line.el,
    ];
  },

  variants() {
    const card = new ChartCard('variants', 'Curves per target and accuracy per variant');
    const reload = () => card.load();
    return [
      ...pageHeader(
        'Baseline vs residual vs VIRAL',
        'For every target: one curve per variant, the trained layer marked; right: task accuracy from runs/<run>/results.json when present.',
      ),
      h(
        'div',
        { class: 'controls' },
        runsParam(rebuild),
        h('div', { class: 'sep' }),
        selectParam('step', 'step', stepOptions(), 'latest', reload),
        choiceParam('curves', 'metric', defaults().metric, reload),
        choiceParam('curves', 'tokens', defaults().tokens, reload),
        boundedParam('curves', 'k', defaults().k, reload),
        choiceParam('curves', 'preprocess', defaults().preprocess, reload),
        selectParam('bootstrap', 'CI', [['', 'none'], ['100', '95% (100 draws)'], ['300', '95% (300 draws)']], '', reload),
      ),
      card.el,
    ];
  },

  embeddings() {
    const umap = new ChartCard('umap', 'UMAP of one layer', 'one map per variant, same seed, axes aligned by Procrustes');
    const grid = new ChartCard('pca-grid', 'PCA-RGB token grids', "one image's tokens → PCs 1–3 → RGB, per layer");
    const labels = labelOptions();
    const sampleSel = h('select', { name: 'sample', 'aria-label': 'sample' }, h('option', { value: '' }, 'first sample'));
    const first = selectedCaptures()[0];
    if (first) {
      api(`/api/captures/${encodeURIComponent(first.id)}/samples?limit=2000`)
        .then((s) => {
          for (const id of s.ids) sampleSel.append(h('option', { value: id, selected: id === param('sample', '') }, id));
        })
        .catch(() => {});
    }
    sampleSel.addEventListener('change', () => {
      setParam('sample', sampleSel.value);
      grid.load();
    });
    return [
      ...pageHeader('Embeddings', 'Where samples (or tokens) of one layer sit relative to each other, per variant; and what one image looks like to each layer.'),
      h(
        'div',
        { class: 'controls' },
        runsParam(rebuild),
        h('div', { class: 'sep' }),
        selectParam('step', 'step', stepOptions(), 'latest', reloadCards),
        selectParam('layer', 'layer', [['', 'aligned / middle'], ...layerOptions()], '', () => umap.load()),
        labels.length ? selectParam('label', 'colour by', labels, labels[0][0], () => umap.load()) : null,
        selectParam('tokens', 'points', [['mean', 'images (mean)'], ['per-token', 'tokens (≤ 2000)']], 'mean', () => umap.load()),
        boundedParam('umap', 'seed', undefined, () => umap.load()),
      ),
      umap.el,
      h('div', { class: 'controls' }, field('image', sampleSel)),
      grid.el,
    ];
  },

  probes() {
    const card = new ChartCard('probes', 'Probe accuracy per layer', 'from probes.json in each capture (viral-lens probe)');
    return [
      ...pageHeader('Linear probes', 'Cross-validated probe scores per layer for the labels that were probed.'),
      h('div', { class: 'controls' }, runsParam(rebuild), h('div', { class: 'sep' }), selectParam('step', 'step', stepOptions(), 'latest', () => card.load())),
      card.el,
    ];
  },

  attention() {
    const { folders, how_to: howTo } = state.analyses;
    const withFile = folders.filter((f) => f.attention);
    const header = pageHeader(
      'Attention entropy',
      'Spatial entropy of the text→image attention per layer × head (VIRAL paper Fig. 4/12; lower = more focused), from attention.json of a run folder; below, one head\'s attention over the image-token grid.',
    );
    if (!withFile.length) return [...header, missingAnalysis('attention.json', howTo['attention.json'])];
    const dir = folderParam(withFile, 'attention');
    const folder = withFile.find((f) => f.dir === dir);
    if (folder.attention.error) return [...header, folderControls(withFile, 'attention'), h('div', { class: 'msg error', id: 'analysis-error' }, folder.attention.error)];
    const results = folder.attention.results;
    const variants = union(results.map((r) => r.variant));
    const variant = variants.includes(param('variant', '')) ? param('variant', '') : variants[0];
    const current = results.filter((r) => r.variant === variant).sort((a, b) => (b.step ?? -1) - (a.step ?? -1))[0];
    const heat = new ChartCard('attention-entropy', 'Entropy per layer × head', `${folder.attention.file} · one panel per variant`);
    const overlay = new ChartCard('attention-overlay', 'One head over the token grid', 'default: the most focused layer × head of the variant');
    const reloadOverlay = () => overlay.load();
    return [
      ...header,
      h(
        'div',
        { class: 'controls' },
        folderField(withFile, 'attention'),
        selectParam('field', 'heatmap value', ENTROPY_FIELDS.filter(([f]) => f !== 'component_entropy' || results.some((r) => r.has_components)), 'entropy', () => heat.load()),
        h('div', { class: 'sep' }),
        selectParam('variant', 'overlay variant', variants.map((v) => [v, v]), variants[0], rebuild),
        selectParam('layer', 'layer', [['', 'most focused'], ...current.layers.map((l) => [String(l.index), `${l.index} · ${l.name}`])], '', reloadOverlay),
        selectParam('head', 'head', [['', 'most focused'], ...current.heads.map((x) => [String(x), `head ${x}`])], '', reloadOverlay),
      ),
      heat.el,
      overlay.el,
    ];
  },

  shuffle() {
    const { folders, how_to: howTo } = state.analyses;
    const withFile = folders.filter((f) => f.shuffle);
    const header = pageHeader(
      'Patch shuffle',
      'Accuracy on the same held-out questions with the image tokens in place and randomly permuted before the projector (VIRAL paper Table 3): a larger drop = more reliance on spatial layout. From shuffle.json of a run folder.',
    );
    if (!withFile.length) return [...header, missingAnalysis('shuffle.json', howTo['shuffle.json'])];
    const dir = folderParam(withFile, 'shuffle');
    const folder = withFile.find((f) => f.dir === dir);
    if (folder.shuffle.error) return [...header, folderControls(withFile, 'shuffle'), h('div', { class: 'msg error', id: 'analysis-error' }, folder.shuffle.error)];
    const steps = union(folder.shuffle.results.map((r) => r.step).filter((x) => x !== null)).sort((a, b) => a - b);
    const card = new ChartCard('patch-shuffle', 'Accuracy in place vs shuffled', `${folder.shuffle.file} · one panel per question type`);
    const tableBox = h('div', { id: 'shuffle-table-box' });
    const loadTable = () => loadShuffleTable(tableBox);
    loadTable();
    return [
      ...header,
      h(
        'div',
        { class: 'controls' },
        folderField(withFile, 'shuffle'),
        steps.length > 1
          ? selectParam('step', 'step', [['latest', 'latest'], ...steps.map((x) => [String(x), `step ${x}`])], 'latest', () => {
              card.load();
              loadTable();
            })
          : null,
      ),
      card.el,
      tableBox,
    ];
  },

  capture() {
    const id = param('id', '');
    const c = state.runs.captures.find((x) => x.id === id);
    if (!c) return [...pageHeader('Capture'), h('div', { class: 'msg error' }, `No capture '${id}' under RUNS_DIR.`)];
    const rows = [
      ['run', c.run],
      ['step', c.step ?? '–'],
      ['variant', c.variant ?? '–'],
      ['model', c.model ?? '–'],
      ['samples', c.samples ?? '–'],
      ['tokens per sample', c.tokens === null ? '–' : `${c.tokens}${c.grid ? ` on a ${c.grid[0]}×${c.grid[1]} grid` : ''} (pooling ${c.pooling ?? '–'})`],
      ['layers', c.layers.length ? `${c.layers.length}: ${c.layers[0].name} … ${c.layers[c.layers.length - 1].name} (dim ${c.layers[0].dim})` : '–'],
      ['targets', c.targets.map((t) => `${t.name} (${t.tokens}×${t.dim})${t.description ? ` – ${t.description}` : ''}`).join('; ') || '–'],
      ['labels', c.labels.join(', ') || '–'],
      ['aligned layer', c.aligned_layer ?? '–'],
      ['residual layers', c.residual_layers.join(', ') || '–'],
      ['size', fmtBytes(c.size_bytes)],
      ['probes.json', c.has_probes ? 'yes' : 'no'],
    ];
    return [
      ...pageHeader(`Capture ${c.id}`),
      c.error ? h('div', { class: 'msg error', id: 'capture-error' }, c.error) : null,
      h('section', { class: 'card' }, h('dl', { class: 'kv' }, ...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]))),
      c.error ? null : h('p', {}, h('a', { href: `/layerwise?captures=${encodeURIComponent(c.id)}` }, 'Layer-wise curves of this capture →')),
    ];
  },
};

// ------------------------------------------------------------------------------------------------ analysis pages

/** The analysis folder shown: `dir` when it is one that has the file, else the first that has it. */
function folderParam(withFile) {
  const dir = param('dir', '');
  return withFile.some((f) => f.dir === dir) ? dir : withFile[0].dir;
}

function folderLabel(dir) {
  return dir === '.' ? 'RUNS_DIR' : dir;
}

function folderField(withFile, key) {
  if (withFile.length < 2) return field('file', h('div', { class: 'mono static' }, `RUNS_DIR/${withFile[0][key].file}`));
  return selectParam('dir', 'run folder', withFile.map((f) => [f.dir, folderLabel(f.dir)]), withFile[0].dir, rebuild);
}

function folderControls(withFile, key) {
  return h('div', { class: 'controls' }, folderField(withFile, key));
}

function missingAnalysis(file, howTo) {
  return h(
    'section',
    { class: 'card' },
    h('div', { class: 'msg note', id: 'analysis-missing' }, h('b', {}, `No ${file} under ${state.runs.runs_dir}`), ' (looked in RUNS_DIR and every folder above a capture). ', howTo),
  );
}

const fmtP = (p) => (p === null || p === undefined ? '–' : p < 0.001 ? p.toExponential(1) : p.toPrecision(2));
const fmtPct = (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : `${(100 * x).toFixed(1)}`);

/** The numbers of the shuffle chart as a table: per variant and question type, accuracy, drop and McNemar p. */
async function loadShuffleTable(box) {
  const q = new URLSearchParams();
  if (param('dir', '')) q.set('dir', param('dir', ''));
  try {
    const res = await api(`/api/shuffle?${q}`);
    const steps = res.results.map((r) => r.step);
    const want = param('step', 'latest');
    const result = want === 'latest' ? res.results.filter((r) => r.step === Math.max(...steps.filter((x) => x !== null), -1)).at(-1) ?? res.results.at(-1) : res.results.find((r) => String(r.step) === want);
    if (!result) throw new Error(`no result at step ${want}`);
    const several = result.seeds.length > 1;
    const rows = result.rows.filter((r) => r.shuffle_seed === (several ? null : result.seeds[0]));
    const th = (...names) => h('thead', {}, h('tr', {}, ...names.map((n) => h('th', {}, n))));
    box.replaceChildren(
      h('h2', {}, `Per variant and question type${several ? ` (mean of ${result.seeds.length} shuffle seeds; McNemar per seed below)` : ` (shuffle seed ${result.seeds[0]})`}`),
      h(
        'table',
        { class: 'grid', id: 'shuffle-table' },
        th('variant', 'question type', 'n', 'correct in place', 'correct shuffled', 'accuracy in place %', 'accuracy shuffled %', 'drop', 'lost / gained', 'McNemar p'),
        h(
          'tbody',
          {},
          rows.map((r) =>
            h(
              'tr',
              { dataset: { variant: r.variant, type: r.question_type } },
              h('td', {}, variantTag(r.variant)),
              h('td', {}, r.question_type),
              h('td', { class: 'num' }, r.n),
              h('td', { class: 'num' }, r.correct_original),
              h('td', { class: 'num' }, +r.correct_shuffled.toFixed(2)),
              h('td', { class: 'num' }, fmtPct(r.acc_original)),
              h('td', { class: 'num' }, fmtPct(r.acc_shuffled)),
              h('td', { class: 'num' }, +r.drop.toFixed(2)),
              h('td', { class: 'num' }, r.lost === null ? '–' : `${r.lost} / ${r.gained}`),
              h('td', { class: 'num' }, several ? result.rows.filter((x) => x.variant === r.variant && x.question_type === r.question_type && x.shuffle_seed !== null).map((x) => fmtP(x.p_value)).join(', ') : fmtP(r.p_value)),
            ),
          ),
        ),
      ),
      h('p', { class: 'muted small' }, `${result.description}. Drop = correct in place − correct shuffled; lost / gained = questions right only in place / only shuffled; p: ${rows.find((r) => r.test)?.test ?? result.rows.find((r) => r.test)?.test ?? 'McNemar exact'} on the paired answers.`),
    );
  } catch (err) {
    box.replaceChildren(h('div', { class: 'msg error' }, err.message));
  }
}

// ------------------------------------------------------------------------------------------------ wiring

async function loadRuns() {
  const [runs, analyses] = await Promise.all([api('/api/runs'), api('/api/analyses')]);
  state.runs = runs;
  state.analyses = analyses;
  document.getElementById('runs-dir').textContent = state.runs.runs_dir;
}

function rebuild() {
  for (const c of state.cards) {
    c.controller?.abort();
    c.result?.finalize();
  }
  state.cards = [];
  const main = document.getElementById('main');
  main.replaceChildren(...PAGES[state.page]().flat().filter(Boolean));
  reloadCards();
}

function connectEvents() {
  const dot = document.getElementById('live');
  const text = document.getElementById('live-text');
  const jobs = document.getElementById('jobs');
  const running = new Map();
  const es = new window.EventSource('/api/events');
  es.addEventListener('open', () => {
    dot.dataset.state = 'open';
    text.textContent = 'live';
  });
  es.addEventListener('error', () => {
    dot.dataset.state = 'error';
    text.textContent = 'reconnecting';
  });
  // What the controls are built from: when it is unchanged, charts reload in place (no flicker of the controls).
  const shape = () => JSON.stringify([state.runs.runs.map((r) => [r.run, r.steps, r.variants, r.targets, r.errors]), state.analyses.folders]);
  const refresh = debounce(async () => {
    const before = state.runs ? shape() : '';
    await loadRuns();
    // The shuffle page's table is not a chart card: rebuild it too when a new shuffle.json arrives.
    if (['overview', 'capture', 'shuffle'].includes(state.page) || shape() !== before) rebuild();
    else reloadCards();
  }, 300);
  es.addEventListener('runs', () => {
    text.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    refresh();
  });
  es.addEventListener('ingest', () => {
    if (state.page === 'overview') refresh();
  });
  es.addEventListener('job', (ev) => {
    const e = JSON.parse(ev.data);
    if (e.state === 'running' || e.state === 'progress') running.set(e.key, e);
    else running.delete(e.key);
    const one = [...running.values()].at(-1);
    jobs.textContent = running.size
      ? `computing ${running.size} analysis job${running.size > 1 ? 's' : ''}${one?.progress ? ` · ${one.kind} ${one.progress.stage} ${one.progress.done}/${one.progress.total}` : ''}`
      : '';
    for (const c of state.cards) if (c.el.dataset.state === 'loading' && one?.progress) c.busy.textContent = `computing… ${one.kind}: ${one.progress.stage} ${one.progress.done}/${one.progress.total}`;
  });
  window.viralLens.events = es;
}

async function start() {
  for (const a of document.querySelectorAll('.sidebar a')) if (a.dataset.page === state.page) a.classList.add('active');
  try {
    await loadRuns();
  } catch (err) {
    document.getElementById('main').replaceChildren(h('div', { class: 'msg error' }, `Cannot reach the server: ${err.message}`));
    return;
  }
  rebuild();
  connectEvents();
  document.dispatchEvent(new Event('viral-lens:ready'));
}

start();
