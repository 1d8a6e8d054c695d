/** The overview and capture pages: health, the runs under RUNS_DIR, one run with its results, one capture. */
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { CURVE_DEFAULTS, PAGE_PARAMS, parseResults } from '../figures-api.js';
import { emptyQuery, HttpError, type RouteContext } from './context.js';

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
const samplesQuery = { type: 'object', additionalProperties: false, properties: { limit: { type: 'integer', minimum: 1, maximum: 100000 } } } as const;

/** A run's results.json, or the reason it cannot be used (the run is still listed). */
async function runResults(ctx: RouteContext, run: string): Promise<{ results: unknown; error: string | null }> {
  const dir = await ctx.index.runDir(run).catch(() => null);
  if (!dir) return { results: null, error: null };
  try {
    return { results: await ctx.index.readJson(join(dir, 'results.json')), error: null };
  } catch (err) {
    return { results: null, error: (err as Error).message };
  }
}

export function registerRuns(app: FastifyInstance, ctx: RouteContext): void {
  const { index, runner, live } = ctx;

  app.get('/api/health', { schema: { querystring: emptyQuery } }, async () => ({
    ok: true,
    runs_dir: index.root,
    captures: index.captures().length,
    watching: index.watching,
    engine: ctx.engine,
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
    const { results, error } = await runResults(ctx, run);
    const latest = index.get(summary.captures.at(-1)!);
    return {
      ...summary,
      captures: summary.captures.map((id) => index.get(id)),
      results,
      results_error: error,
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

  app.get('/api/captures/:id/samples', { schema: { params: captureParams, querystring: samplesQuery } }, async (request) => {
    const { id } = request.params as { id: string };
    const { limit = 5000 } = request.query as { limit?: number };
    if (!index.get(id)) throw new HttpError(404, `no capture '${id}' under RUNS_DIR`);
    const ids = await index.sampleIds(id);
    return { capture: id, total: ids.length, ids: ids.slice(0, limit) };
  });
}
