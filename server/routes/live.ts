/**
 * Live state for every page: the server-sent event stream, the analyses running in the workers, and the progress
 * reports training runs POST to /api/ingest (shown on the overview until their captures appear under RUNS_DIR).
 */
import type { FastifyInstance, onRequestHookHandler } from 'fastify';
import { parseManifestJson } from '../../src/store/manifest.js';
import { emptyQuery, HttpError, type LiveRun, type RouteContext } from './context.js';

/** A manifest of 100k samples with a few labels is a few MB. */
const INGEST_BODY_LIMIT = 16 * 1024 * 1024;
/** Ingest reports kept: the map is for the overview, not an archive. */
const LIVE_RUNS_KEPT = 200;

const ingestBody = {
  type: 'object',
  required: ['run', 'manifest'],
  properties: {
    run: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9_.][A-Za-z0-9_.-]*$' },
    step: { type: ['integer', 'null'], minimum: 0 },
    manifest: { type: 'object' },
  },
} as const;

interface IngestBody {
  run: string;
  step?: number | null;
  manifest: unknown;
}

/** Records a report as the run's latest (moved to the end: the most recently reporting runs are the ones kept). */
function recordReport(live: Map<string, LiveRun>, body: IngestBody): LiveRun {
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
  while (live.size > LIVE_RUNS_KEPT) live.delete(live.keys().next().value!);
  return report;
}

/** `requireToken` runs in onRequest, before the body is read (buildApp owns the token check). */
export function registerLive(app: FastifyInstance, ctx: RouteContext, requireToken: onRequestHookHandler): void {
  const { index, runner, hub, live } = ctx;

  app.get('/api/events', { schema: { querystring: emptyQuery } }, (request, reply) => hub.handle(request, reply));

  app.get('/api/jobs', { schema: { querystring: emptyQuery } }, async () => ({ running: runner.running, stats: runner.stats, workers_started: runner.workersStarted }));

  app.post('/api/ingest', { bodyLimit: INGEST_BODY_LIMIT, onRequest: requireToken, schema: { body: ingestBody, querystring: emptyQuery } }, async (request, reply) => {
    const report = recordReport(live, request.body as IngestBody);
    hub.send('ingest', report);
    // The files themselves are the source of truth: rescan in case the writer writes under RUNS_DIR.
    void index.refresh().catch(() => {});
    return reply.status(202).send({ accepted: true, run: report.run, step: report.step, samples: report.samples });
  });
}
