import { parseArgs } from 'node:util';
import { startServer, DEFAULT_HOST, DEFAULT_PORT } from '../server/app.js';
import { InputError } from '../src/core/errors.js';
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
  const server = await startDashboard(positionals[0]!, {
    port,
    host: values.host!,
    engine: values.engine!,
    ...(token ? { token } : {}),
    ...(workers === undefined ? {} : { workers }),
    ...(values['no-cache'] ? { cacheDir: null } : {}),
    logger: values.log!,
  });
  await untilInterrupted();
  process.stderr.write('viral-lens: stopping the dashboard\n');
  await server.close();
  return 0;
}

type DashboardOptions = Omit<Parameters<typeof startServer>[0], 'runsDir'>;

/** Starts the dashboard on RUNS_DIR and prints where it is (shared with `demo`, which serves while it trains). */
export async function startDashboard(runsDir: string, options: DashboardOptions): Promise<Awaited<ReturnType<typeof startServer>>> {
  const host = options.host ?? DEFAULT_HOST;
  const server = await startServer({ runsDir, ...options });
  const { index } = server.dashboard;
  process.stdout.write(
    [
      `viral-lens dashboard: ${server.url}`,
      `  runs dir   ${index.root} (${index.captures().length} capture(s), watching: ${index.watching})`,
      `  engine     ${options.engine ?? 'auto'}`,
      `  ingest     POST ${server.url}api/ingest with header "Authorization: Bearer ${server.token}"`,
      ...(['127.0.0.1', 'localhost', '::1'].includes(host)
        ? []
        : [`  warning    bound to ${host}: anyone who can reach this address can read the captures under RUNS_DIR`]),
      '',
    ].join('\n'),
  );
  return server;
}

export function untilInterrupted(): Promise<void> {
  process.stdout.write('  Ctrl-C to stop the dashboard\n');
  return new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
