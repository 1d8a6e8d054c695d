/** The page (one index.html for every path the client-side router knows) and its static assets. */
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { emptyQuery, HttpError } from './context.js';

const PUBLIC_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'public');
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

export async function registerPages(app: FastifyInstance): Promise<void> {
  const files = await staticFiles();
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
}
