/**
 * The figure pages (layer-wise, checkpoints, variants, embeddings, probes, ...): figure specs with their provenance,
 * and their exports (svg/png/pdf rendered in a worker, json, csv). server/figures-api.ts builds the figures.
 */
import type { FastifyInstance } from 'fastify';
import { toCsv } from '../../analysis/figures.js';
import { buildFigure, FIGURES, figureQuerySchema, type FigureName, type FigureQuery } from '../figures-api.js';
import { requestSignal, type RouteContext } from './context.js';

const figureParams = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: { name: { type: 'string', enum: [...FIGURES] } },
} as const;

/** The download's file name: the figure, its metric and target (made file-name safe). */
function exportStem(name: FigureName, q: FigureQuery): string {
  return `viral-lens-${name}${q.metric ? `-${q.metric}` : ''}${q.target ? `-${q.target.replace(/[^A-Za-z0-9_.-]/g, '_')}` : ''}`;
}

export function registerFigures(app: FastifyInstance, ctx: RouteContext): void {
  const context = { index: ctx.index, runner: ctx.runner, engine: ctx.engine };

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
    reply.header('content-disposition', `attachment; filename="${exportStem(name, q)}.${format}"`);
    if (format === 'json') {
      return reply.type('application/json; charset=utf-8').send(JSON.stringify({ figure: name, provenance: fig.provenance, notes: fig.notes, errors: fig.errors, rows: fig.data }, null, 2));
    }
    if (format === 'csv') return reply.type('text/csv; charset=utf-8').send(toCsv(fig.data));
    const { result } = await ctx.runner.run('render', { spec: fig.spec, format }, { signal });
    return reply.type(result.contentType).send(typeof result.body === 'string' ? result.body : Buffer.from(result.body));
  });
}
