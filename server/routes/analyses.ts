/** The attention and shuffle pages: the analysis folders under RUNS_DIR and their stored results. */
import type { FastifyInstance } from 'fastify';
import { analysisFolders, HOW_TO, readAnalysis } from '../figures-api.js';
import { emptyQuery, type RouteContext } from './context.js';

/** `dir`: an analysis folder relative to RUNS_DIR ('.' = RUNS_DIR); checked again by RunsIndex.analysisDir. */
const analysisQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { dir: { type: 'string', minLength: 1, maxLength: 1024, pattern: '^[^\\\\\\u0000]+$' } },
} as const;

export function registerAnalyses(app: FastifyInstance, { index }: RouteContext): void {
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
}
