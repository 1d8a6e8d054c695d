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
import { isIP, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { JobRunner } from './jobs.js';
import { InputError } from '../src/core/errors.js';
import { EventHub } from './events.js';
import { CACHE_DIR_NAME, checkCacheDir, RunsIndex } from './runs.js';
import { registerAnalyses } from './routes/analyses.js';
import { HttpError, type LiveRun, type RouteContext } from './routes/context.js';
import { registerFigures } from './routes/figures.js';
import { registerLive } from './routes/live.js';
import { registerPages } from './routes/pages.js';
import { registerRuns } from './routes/runs.js';

export type { LiveRun } from './routes/context.js';

export const DEFAULT_PORT = 7860;
export const DEFAULT_HOST = '127.0.0.1';
/** Body limit of every route but ingest (no other route takes a body). */
const BODY_LIMIT = 64 * 1024;

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

/**
 * The bearer-token check of POST /api/ingest, run in onRequest: before the body is read, so unauthenticated 16 MiB
 * bodies cost nothing to refuse.
 */
function tokenCheck(token: string) {
  return async (request: FastifyRequest, reply: FastifyReply) => {
    const auth = tokenMatches(token, request.headers.authorization);
    if (auth === 'ok') return;
    reply.header('www-authenticate', 'Bearer realm="viral-lens ingest"');
    // The unread body would otherwise keep the socket busy; the client is told not to reuse it.
    reply.header('connection', 'close');
    throw new HttpError(401, auth === 'missing' ? 'missing bearer token (Authorization: Bearer <token printed at server start>)' : 'invalid bearer token');
  };
}

/** Every error as `{statusCode, error, message}`: validation 400, InputError 422, client gone 499, bugs 500. */
function sendError(err: Error & { statusCode?: number; validation?: unknown; code?: string }, request: FastifyRequest, reply: FastifyReply): void {
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
}

/** The Fastify instance with the security headers, the Host allow-list of a loopback bind and the JSON errors. */
function createFastify(options: ServerOptions, host: string): FastifyInstance {
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
  app.setErrorHandler(sendError);
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ statusCode: 404, error: 'Not Found', message: `no route ${request.method} ${request.url.split('?')[0]}` });
  });
  return app;
}

export async function buildApp(options: ServerOptions): Promise<Dashboard> {
  const index = await RunsIndex.open(options.runsDir, { pollMs: options.pollMs });
  const hub = new EventHub();
  const runner = new JobRunner({
    cacheDir: await cacheDirOf(options, index.root),
    workers: options.workers,
    onEvent: (e) => {
      if (e.state !== 'progress' || hub.size) hub.send('job', e);
    },
  });
  const token = options.token ?? randomBytes(24).toString('base64url');
  const ctx: RouteContext = { index, runner, hub, token, engine: options.engine ?? 'auto', live: new Map<string, LiveRun>() };
  const app = createFastify(options, options.host ?? DEFAULT_HOST);

  index.on('change', (change) => hub.send('runs', change));
  index.on('error', (err: Error) => app.log.error(err));
  index.watch();

  await registerPages(app);
  registerRuns(app, ctx);
  registerFigures(app, ctx);
  registerAnalyses(app, ctx);
  registerLive(app, ctx, tokenCheck(token));

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
