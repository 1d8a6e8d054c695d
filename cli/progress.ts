import type cliProgressTypes from 'cli-progress';
import { createRequire } from 'node:module';

// Required on first use: only a TTY draws a bar, and `compare` (which shares cmd-layerwise's helpers) never does, so
// its start-up does not pay for loading cli-progress.
let cliProgress: typeof cliProgressTypes | undefined;
const loadCliProgress = () => (cliProgress ??= createRequire(import.meta.url)('cli-progress') as typeof cliProgressTypes);

/**
 * Progress on stderr only (stdout carries results). On a TTY: a redrawn bar; otherwise one line per stage when it
 * finishes, so logs of batch jobs stay short.
 */
export class Progress {
  private bar: cliProgressTypes.SingleBar | null = null;
  private stage = '';

  constructor(private readonly enabled = true) {}

  update(stage: string, done: number, total: number): void {
    if (!this.enabled) return;
    if (process.stderr.isTTY) {
      if (stage !== this.stage) {
        this.bar?.stop();
        const bars = loadCliProgress();
        this.bar = new bars.SingleBar(
          { stream: process.stderr, format: `${stage.padEnd(10)} [{bar}] {value}/{total} {eta_formatted}`, hideCursor: true, clearOnComplete: false },
          bars.Presets.shades_classic,
        );
        this.bar.start(total, done);
        this.stage = stage;
      } else this.bar?.update(done);
    } else if (done === total) {
      process.stderr.write(`${stage}: ${done}/${total}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
    this.stage = '';
  }
}
