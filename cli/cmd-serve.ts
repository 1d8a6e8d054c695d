import { parseArgs } from 'node:util';
import { startServer, DEFAULT_HOST, DEFAULT_PORT } from '../server/app.js';
import { InputError } from '../src/errors.js';
import { intOption } from './args.js';

/** `viral-lens serve RUNS_DIR`: the dashboard; runs until interrupted. */
export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      port: { type: 'string' },
      host: { type: 'string', default: DEFAULT_HOST },
      token: { type: 'string' },
      engine: { type: 'string', default: 'auto' },
      workers: { type: 'string' },
      'no-cache': { type: 'boolean', default: false },
      log: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new InputError(`expected one RUNS_DIR, got ${positionals.length} argument(s)`);
  const port = intOption('port', values.port, DEFAULT_PORT);
  if (port < 0 || port > 65535) throw new InputError(`--port: expected 0–65535, got ${port}`);
  const workers = values.workers === undefined ? undefined : intOption('workers', values.workers, 2);
  if (workers !== undefined && workers < 1) throw new InputError(`--workers: expected ≥ 1, got ${workers}`);
  // A token given on the command line is visible in `ps`; the environment is the quieter way.
  const token = values.token ?? process.env.VIRAL_LENS_TOKEN;
  const server = await startServer({
    runsDir: positionals[0]!,
    port,
    host: values.host!,
    engine: values.engine!,
    ...(token ? { token } : {}),
    ...(workers === undefined ? {} : { workers }),
    ...(values['no-cache'] ? { cacheDir: null } : {}),
    logger: values.log!,
  });
  const { index } = server.dashboard;
  process.stdout.write(
    [
      `viral-lens dashboard: ${server.url}`,
      `  runs dir   ${index.root} (${index.captures().length} capture(s), watching: ${index.watching})`,
      `  engine     ${values.engine}`,
      `  ingest     POST ${server.url}api/ingest with header "Authorization: Bearer ${server.token}"`,
      ...(['127.0.0.1', 'localhost', '::1'].includes(values.host!)
        ? []
        : [`  warning    bound to ${values.host}: anyone who can reach this address can read the captures under RUNS_DIR`]),
      '  Ctrl-C to stop',
      '',
    ].join('\n'),
  );
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  process.stderr.write('viral-lens: stopping the dashboard\n');
  await server.close();
  return 0;
}
