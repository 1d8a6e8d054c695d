import cliProgress from 'cli-progress';

/**
 * Progress on stderr only (stdout carries results). On a TTY: a redrawn bar; otherwise one line per stage when it
 * finishes, so logs of batch jobs stay short.
 */
export class Progress {
  private bar: cliProgress.SingleBar | null = null;
  private stage = '';

  constructor(private readonly enabled = true) {}

  update(stage: string, done: number, total: number): void {
    if (!this.enabled) return;
    if (process.stderr.isTTY) {
      if (stage !== this.stage) {
        this.bar?.stop();
        this.bar = new cliProgress.SingleBar(
          { stream: process.stderr, format: `${stage.padEnd(10)} [{bar}] {value}/{total} {eta_formatted}`, hideCursor: true, clearOnComplete: false },
          cliProgress.Presets.shades_classic,
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
