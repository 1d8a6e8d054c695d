/**
 * The viral-lens dashboard server (Fastify). See server/README.md for the API.
 *
 * - Binds 127.0.0.1:7860 by default; when bound to loopback, requests whose Host header is not a loopback name are
 *   refused (a DNS-rebinding page cannot read the API): exactly 127.0.0.1, localhost, [::1] and the bound host.
 * - Every route has a JSON schema for its params/query/body; unknown query parameters are refused, and every error
 *   is a JSON body `{statusCode, error, message}` whose message names the parameter, file or capture at fault.
 * - Analyses run in worker threads through server/jobs.ts (cached under RUNS_DIR/.viral-lens-cache/, shared
 *   between concurrent requests, cancelled when the client disconnects).
 * - POST /api/ingest takes progress reports from training runs; it needs the bearer token printed at start.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { toCsv } from '../analysis/figures.js';
import { JobRunner } from './jobs.js';
import { InputError } from '../src/core/errors.js';
import { parseManifestJson } from '../src/store/manifest.js';
import { EventHub } from './events.js';
import { analysisFolders, buildFigure, CURVE_DEFAULTS, FIGURES, figureQuerySchema, HOW_TO, PAGE_PARAMS, parseResults, readAnalysis, type FigureName, type FigureQuery } from './figures-api.js';
import { CACHE_DIR_NAME, checkCacheDir, RunsIndex } from './runs.js';

export const DEFAULT_PORT = 7860;
export const DEFAULT_HOST = '127.0.0.1';
/** Body limit of every route but ingest (no other route takes a body). */
const BODY_LIMIT = 64 * 1024;
/** A manifest of 100k samples with a few labels is a few MB. */
const INGEST_BODY_LIMIT = 16 * 1024 * 1024;

export interface ServerOptions {
  runsDir: string;
  port?: number;
  host?: string;
  /** Bearer token for POST /api/ingest; a random one is made (and returned) when absent. */
  token?: string;
  /** Engine for analyses (createEngine name); default auto. */
  engine?: string;
  workers?: number;
  /** Disk cache of analyses (default RUNS_DIR/.viral-lens-cache); null disables it. */
  cacheDir?: string | null;
  /** Poll interval of the RUNS_DIR watcher (ms, default 2000). */
  pollMs?: number;
  logger?: boolean;
}

export interface Dashboard {
  app: FastifyInstance;
  index: RunsIndex;
  runner: JobRunner;
  hub: EventHub;
  token: string;
  close(): Promise<void>;
}

const PUBLIC_DIR = join(dirname(fileURLToPath(import.meta.url)), 'public');
const PAGES = ['/', '/layerwise', '/checkpoints', '/variants', '/embeddings', '/probes', '/attention', '/shuffle', '/capture'];

/** Files under /static/: the page's own assets and the vega builds from node_modules (no front-end build step). */
async function staticFiles(): Promise<Map<string, { path: string; type: string }>> {
  const pkgDir = (name: string) => {
    // Package exports hide build/*.min.js; resolve the entry and walk to the package folder.
    let d = dirname(fileURLToPath(import.meta.resolve(name)));
    while (!d.endsWith(`node_modules/${name}`) && dirname(d) !== d) d = dirname(d);
    return d;
  };
  const js = 'text/javascript; charset=utf-8';
  return new Map([
    ['app.js', { path: join(PUBLIC_DIR, 'app.js'), type: js }],
    ['style.css', { path: join(PUBLIC_DIR, 'style.css'), type: 'text/css; charset=utf-8' }],
    ['vendor/vega.min.js', { path: join(pkgDir('vega'), 'build', 'vega.min.js'), type: js }],
    ['vendor/vega-lite.min.js', { path: join(pkgDir('vega-lite'), 'build', 'vega-lite.min.js'), type: js }],
    ['vendor/vega-embed.min.js', { path: join(pkgDir('vega-embed'), 'build', 'vega-embed.min.js'), type: js }],
  ]);
}

function tokenMatches(expected: string, header: string | undefined): 'ok' | 'missing' | 'bad' {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return 'missing';
  // Hash both sides so the comparison is constant-time whatever the lengths.
  const a = createHash('sha256').update(m[1]!).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b) ? 'ok' : 'bad';
}

/** Whether the address the server binds is loopback (127.0.0.0/8 as an IP literal, ::1, localhost). */
function isLoopbackBind(host: string): boolean {
  if (host === 'localhost' || host === '::1' || host === '[::1]') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

/**
 * Host names a loopback-bound server answers to: exactly 127.0.0.1, localhost, [::1] and the bound host. A prefix
 * test would let `127.evil.example` or `127.0.0.1.nip.io` through, names a rebinding page can point at 127.0.0.1.
 */
function allowedHostNames(host: string): Set<string> {
  const bound = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  return new Set(['127.0.0.1', 'localhost', '[::1]', isIP(bound) === 6 ? `[${bound}]` : bound]);
}

/**
 * Whether a Host header is `name` or `name:port` with an allowed name. The port is any valid one, not pinned to
 * the bound port: an SSH tunnel (`ssh -L 9000:localhost:7860`) sends its own, and the name is what a rebinding
 * page controls.
 */
function hostAllowed(header: string | undefined, names: ReadonlySet<string>): boolean {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(header ?? '');
  if (!m || !names.has(m[1]!.toLowerCase())) return false;
  return m[2] === undefined || (Number(m[2]) >= 1 && Number(m[2]) <= 65535);
}

/** The analysis cache folder, checked (server/runs.ts checkCacheDir) before anything is written or pruned there. */
async function cacheDirOf(options: ServerOptions, root: string): Promise<string | null> {
  if (options.cacheDir === null) return null;
  if (options.cacheDir === undefined) return checkCacheDir(join(root, CACHE_DIR_NAME), root);
  return checkCacheDir(options.cacheDir);
}

/** Aborted when the client goes away before the response is complete. */
function requestSignal(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}

class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Entity',
  499: 'Client Closed Request',
  500: 'Internal Server Error',
};

const runParams = {
  type: 'object',
  required: ['run'],
  additionalProperties: false,
  // A run id is its folder's path relative to RUNS_DIR (server/runs.ts runOf); only scanned ids resolve.
  properties: { run: { type: 'string', minLength: 1, maxLength: 1024, pattern: '^[^\\\\\\u0000]+$' } },
} as const;
const captureParams = {
  type: 'object',
  required: ['id'],
  additionalProperties: false,
  properties: { id: { type: 'string', minLength: 1, maxLength: 1024 } },
} as const;
const figureParams = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: { name: { type: 'string', enum: [...FIGURES] } },
} as const;
const emptyQuery = { type: 'object', additionalProperties: false, properties: {} } as const;
/** `dir`: an analysis folder relative to RUNS_DIR ('.' = RUNS_DIR); checked again by RunsIndex.analysisDir. */
const analysisQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { dir: { type: 'string', minLength: 1, maxLength: 1024, pattern: '^[^\\\\\\u0000]+$' } },
} as const;
const ingestBody = {
  type: 'object',
  required: ['run', 'manifest'],
  properties: {
    run: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9_.][A-Za-z0-9_.-]*$' },
    step: { type: ['integer', 'null'], minimum: 0 },
    manifest: { type: 'object' },
  },
} as const;

export interface LiveRun {
  run: string;
  step: number | null;
  variant: string;
  model: string;
  samples: number;
  layers: number;
  targets: string[];
  received: string;
  reports: number;
}

export async function buildApp(options: ServerOptions): Promise<Dashboard> {
  const index = await RunsIndex.open(options.runsDir, options.pollMs === undefined ? {} : { pollMs: options.pollMs });
  const hub = new EventHub();
  const runner = new JobRunner({
    cacheDir: await cacheDirOf(options, index.root),
    ...(options.workers === undefined ? {} : { workers: options.workers }),
    onEvent: (e) => {
      if (e.state !== 'progress' || hub.size) hub.send('job', e);
    },
  });
  const token = options.token ?? randomBytes(24).toString('base64url');
  const engine = options.engine ?? 'auto';
  const host = options.host ?? DEFAULT_HOST;
  const live = new Map<string, LiveRun>();
  const files = await staticFiles();

  index.on('change', (change) => hub.send('runs', change));
  index.on('error', (err: Error) => app.log.error(err));
  index.watch();

  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: BODY_LIMIT,
    // Unknown query parameters are errors, not silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  });

  const hostNames = isLoopbackBind(host) ? allowedHostNames(host) : null;
  app.addHook('onRequest', async (request, reply) => {
    if (hostNames && !hostAllowed(request.headers.host, hostNames)) {
      throw new HttpError(403, `Host header '${(request.headers.host ?? '').slice(0, 200)}' is not allowed (the server is bound to ${host}; use ${[...hostNames].join(', ')})`);
    }
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
  });

  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown; code?: string }, request, reply) => {
    let status: number;
    let message = err.message;
    if (err.validation) status = 400;
    else if (err instanceof HttpError) status = err.statusCode;
    else if (err instanceof InputError) status = (err as { statusCode?: number }).statusCode ?? 422;
    else if (err.name === 'AbortError') status = 499;
    else if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) status = err.statusCode;
    else {
      status = 500;
      request.log.error(err);
      message = `internal error: ${err.message}`;
    }
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') message = `request body too large (limit ${request.routeOptions.bodyLimit ?? BODY_LIMIT} bytes)`;
    void reply.status(status).type('application/json; charset=utf-8').send({ statusCode: status, error: STATUS_TEXT[status] ?? 'Error', message });
  });

  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ statusCode: 404, error: 'Not Found', message: `no route ${request.method} ${request.url.split('?')[0]}` });
  });

  // ---------------------------------------------------------------- pages and assets
  const indexHtml = () => readFile(join(PUBLIC_DIR, 'index.html'), 'utf8');
  for (const page of PAGES) {
    app.get(page, { schema: { querystring: { type: 'object', additionalProperties: true } } }, async (_request, reply) => {
      reply.header('cache-control', 'no-cache');
      reply.header(
        'content-security-policy',
        // vega compiles its expressions with Function(): 'unsafe-eval' is the price of client-side rendering.
        "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
      );
      return reply.type('text/html; charset=utf-8').send(await indexHtml());
    });
  }
  app.get('/static/*', { schema: { querystring: emptyQuery } }, async (request, reply) => {
    const rel = (request.params as { '*': string })['*'];
    const f = files.get(rel);
    if (!f) throw new HttpError(404, `no static file '${rel}'`);
    reply.header('cache-control', rel.startsWith('vendor/') ? 'public, max-age=86400' : 'no-cache');
    return reply.type(f.type).send(await readFile(f.path));
  });

  // ---------------------------------------------------------------- JSON API
  app.get('/api/health', { schema: { querystring: emptyQuery } }, async () => ({
    ok: true,
    runs_dir: index.root,
    captures: index.captures().length,
    watching: index.watching,
    engine,
    jobs: { running: runner.running.length, ...runner.stats },
  }));

  app.get('/api/runs', { schema: { querystring: emptyQuery } }, async () => {
    const runs = await Promise.all(
      index.runs().map(async (r) => {
        const dir = await index.runDir(r.run).catch(() => null);
        const results = dir ? await index.readJson(join(dir, 'results.json')).catch(() => undefined) : null;
        return { ...r, has_results: results !== null && results !== undefined };
      }),
    );
    // The controls' defaults come from here, so the page and the API cannot disagree on them.
    return { runs_dir: index.root, runs, captures: index.captures(), live: [...live.values()], defaults: CURVE_DEFAULTS, params: PAGE_PARAMS };
  });

  app.get('/api/runs/:run', { schema: { params: runParams, querystring: emptyQuery } }, async (request) => {
    const { run } = request.params as { run: string };
    const summary = index.runs().find((r) => r.run === run);
    if (!summary) throw new HttpError(404, `no run '${run}' under RUNS_DIR`);
    const dir = await index.runDir(run).catch(() => null);
    let results: unknown = null;
    let resultsError: string | null = null;
    if (dir) {
      try {
        results = await index.readJson(join(dir, 'results.json'));
      } catch (err) {
        resultsError = (err as Error).message;
      }
    }
    const latest = index.get(summary.captures.at(-1)!);
    return {
      ...summary,
      captures: summary.captures.map((id) => index.get(id)),
      results,
      results_error: resultsError,
      accuracy: results ? parseResults(results, latest?.step ?? null) : null,
      live: live.get(run) ?? null,
    };
  });

  app.get('/api/captures/:id', { schema: { params: captureParams, querystring: emptyQuery } }, async (request) => {
    const { id } = request.params as { id: string };
    const c = index.get(id);
    if (!c) throw new HttpError(404, `no capture '${id}' under RUNS_DIR`);
    return c;
  });

  app.get(
    '/api/captures/:id/samples',
    { schema: { params: captureParams, querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'integer', minimum: 1, maximum: 100000 } } } } },
    async (request) => {
      const { id } = request.params as { id: string };
      const { limit = 5000 } = request.query as { limit?: number };
      if (!index.get(id)) throw new HttpError(404, `no capture '${id}' under RUNS_DIR`);
      const ids = await index.sampleIds(id);
      return { capture: id, total: ids.length, ids: ids.slice(0, limit) };
    },
  );

  const context = { index, runner, engine };

  app.get('/api/layerwise', { schema: { querystring: figureQuerySchema } }, async (request, reply) => {
    const q = request.query as FigureQuery;
    const fig = await buildFigure(context, 'layerwise', q, requestSignal(reply));
    return { params: q, provenance: fig.provenance, captures: fig.captures, errors: fig.errors, notes: fig.notes, rows: fig.data };
  });

  app.get('/api/figures/:name', { schema: { params: figureParams, querystring: figureQuerySchema } }, async (request, reply) => {
    const { name } = request.params as { name: FigureName };
    const fig = await buildFigure(context, name, request.query as FigureQuery, requestSignal(reply));
    const { data: _data, ...rest } = fig;
    return rest;
  });

  app.get('/api/export/:name', { schema: { params: figureParams, querystring: figureQuerySchema } }, async (request, reply) => {
    const { name } = request.params as { name: FigureName };
    const q = request.query as FigureQuery;
    const format = q.format ?? 'svg';
    const signal = requestSignal(reply);
    const fig = await buildFigure(context, name, q, signal);
    const stem = `viral-lens-${name}${q.metric ? `-${q.metric}` : ''}${q.target ? `-${q.target.replace(/[^A-Za-z0-9_.-]/g, '_')}` : ''}`;
    reply.header('content-disposition', `attachment; filename="${stem}.${format}"`);
    if (format === 'json') {
      return reply.type('application/json; charset=utf-8').send(JSON.stringify({ figure: name, provenance: fig.provenance, notes: fig.notes, errors: fig.errors, rows: fig.data }, null, 2));
    }
    if (format === 'csv') return reply.type('text/csv; charset=utf-8').send(toCsv(fig.data));
    const { result } = await runner.run('render', { spec: fig.spec, format }, { signal });
    return reply.type(result.contentType).send(typeof result.body === 'string' ? result.body : Buffer.from(result.body));
  });

  app.get('/api/analyses', { schema: { querystring: emptyQuery } }, async () => ({ runs_dir: index.root, folders: await analysisFolders(index), how_to: HOW_TO }));

  app.get('/api/attention', { schema: { querystring: analysisQuery } }, async (request) => {
    const { dir } = request.query as { dir?: string };
    const a = await readAnalysis(index, 'attention.json', dir);
    return { dir: a.dir, file: a.file, results: a.results };
  });

  app.get('/api/shuffle', { schema: { querystring: analysisQuery } }, async (request) => {
    const { dir } = request.query as { dir?: string };
    const a = await readAnalysis(index, 'shuffle.json', dir);
    return { dir: a.dir, file: a.file, results: a.results };
  });

  app.get('/api/jobs', { schema: { querystring: emptyQuery } }, async () => ({ running: runner.running, stats: runner.stats, workers_started: runner.workersStarted }));

  app.get('/api/events', { schema: { querystring: emptyQuery } }, (request, reply) => hub.handle(request, reply));

  // The token is checked in onRequest, before the body is read: unauthenticated 16 MiB bodies cost nothing to refuse.
  const requireToken = async (request: FastifyRequest, reply: FastifyReply) => {
    const auth = tokenMatches(token, request.headers.authorization);
    if (auth === 'ok') return;
    reply.header('www-authenticate', 'Bearer realm="viral-lens ingest"');
    // The unread body would otherwise keep the socket busy; the client is told not to reuse it.
    reply.header('connection', 'close');
    throw new HttpError(401, auth === 'missing' ? 'missing bearer token (Authorization: Bearer <token printed at server start>)' : 'invalid bearer token');
  };
  app.post('/api/ingest', { bodyLimit: INGEST_BODY_LIMIT, onRequest: requireToken, schema: { body: ingestBody, querystring: emptyQuery } }, async (request, reply) => {
    const body = request.body as { run: string; step?: number | null; manifest: unknown };
    const parsed = parseManifestJson(body.manifest, 'manifest');
    if (!parsed.ok) throw new HttpError(400, `${parsed.problems[0]}${parsed.problems.length > 1 ? ` (and ${parsed.problems.length - 1} more)` : ''}`);
    const m = parsed.manifest;
    const prev = live.get(body.run);
    live.delete(body.run);
    const report: LiveRun = {
      run: body.run,
      step: body.step ?? m.checkpoint?.step ?? null,
      variant: m.variant,
      model: String(m.model.name),
      samples: m.samples.count,
      layers: m.layers.length,
      targets: m.targets.map((t) => t.name),
      received: new Date().toISOString(),
      reports: (prev?.reports ?? 0) + 1,
    };
    live.set(body.run, report);
    // Keep the most recently reporting runs only (the map is for the overview, not an archive).
    while (live.size > 200) live.delete(live.keys().next().value!);
    hub.send('ingest', report);
    // The files themselves are the source of truth: rescan in case the writer writes under RUNS_DIR.
    void index.refresh().catch(() => {});
    return reply.status(202).send({ accepted: true, run: report.run, step: report.step, samples: report.samples });
  });

  const close = async () => {
    index.close();
    hub.close();
    await app.close();
    await runner.close();
  };
  return { app, index, runner, hub, token, close };
}

export interface StartedServer {
  url: string;
  token: string;
  dashboard: Dashboard;
  close(): Promise<void>;
}

/** Starts the dashboard and listens; `npm run demo` and `viral-lens serve` call this. */
export async function startServer(options: ServerOptions): Promise<StartedServer> {
  const dashboard = await buildApp(options);
  const host = options.host ?? DEFAULT_HOST;
  try {
    await dashboard.app.listen({ port: options.port ?? DEFAULT_PORT, host });
  } catch (err) {
    await dashboard.close();
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new InputError(`port ${options.port ?? DEFAULT_PORT} on ${host} is in use; pass --port`);
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') throw new InputError(`cannot bind to host '${host}'`);
    throw err;
  }
  const addr = dashboard.app.server.address() as AddressInfo;
  const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return { url: `http://${shown}:${addr.port}/`, token: dashboard.token, dashboard, close: dashboard.close };
}
