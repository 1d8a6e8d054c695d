#!/usr/bin/env node
import { pathToFileURL } from 'node:url';
import { boundMessage, InputError, ParamError } from '../src/core/errors.js';
import { flagFor } from './args.js';
import { COMMANDS } from './commands.js';

/** Exit code for bad input (files, flags, manifests): the message is one line naming the file/field/row. */
export const EXIT_INPUT = 2;

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'viral-lens — layer-wise representation analysis for multimodal LLMs',
    '',
    'usage: viral-lens <command> [options]      (viral-lens <command> --help for its options)',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name ? 0 : EXIT_INPUT;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`viral-lens: unknown command '${boundMessage(name).slice(0, 100)}' (commands: ${Object.keys(COMMANDS).join(', ')}; see viral-lens --help)\n`);
    return EXIT_INPUT;
  }
  try {
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`usage: viral-lens ${name} ${command.usage}\n`);
      return 0;
    }
    const loadStart = performance.now();
    const mod = await command.load();
    const runStart = performance.now();
    const code = (await mod.run(rest)) ?? 0;
    // For bench/startup.bench.ts: splits a call's wall time into node's start, module loading and the command's work.
    if (process.env.VIRAL_LENS_TIMING === '1') {
      const ms = (x: number) => x.toFixed(1);
      process.stderr.write(`viral-lens timing: start ${ms(loadStart)} ms, load ${ms(runStart - loadStart)} ms, run ${ms(performance.now() - runStart)} ms\n`);
    }
    return code;
  } catch (err) {
    if (err instanceof InputError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      const message = err instanceof ParamError ? `${flagFor(err.param)}: ${err.detail}` : (err as Error).message;
      process.stderr.write(`viral-lens ${name}: ${boundMessage(message.split('\n')[0]!)}\n`);
      return EXIT_INPUT;
    }
    throw err;
  }
}

const isEntry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isEntry) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`viral-lens: internal error (please report): ${err?.stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
