/**
 * A first-come-first-served counting semaphore over a SharedArrayBuffer, so that worker threads take turns on the
 * cores. Why: the demo trains three variants on a 2-core machine, and three runnable wasm threads on two cores cost
 * far more than the 1.5× their share predicts (measured, one baseline model per process, median training step:
 * alone 108 ms, two at once 125–131 ms, three at once 226–261 ms). With the gate at most `slots` workers compute at
 * a time; the others sleep in Atomics.wait, and tickets keep the turns fair, so every variant advances at the same pace.
 *
 * Ticket t may run once t < released + slots: tickets are granted in order, so at most `slots` holders at once.
 */
const NEXT_TICKET = 0;
const RELEASED = 1;
const SLOTS = 2;

export class ComputeGate {
  private readonly state: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    if (buffer.byteLength < 3 * 4) throw new Error('ComputeGate: the shared buffer must hold 3 int32 counters');
    this.state = new Int32Array(buffer, 0, 3);
    if (Atomics.load(this.state, SLOTS) < 1) throw new Error('ComputeGate: the shared buffer was not made by ComputeGate.create');
  }

  /** A gate letting `slots` holders in at a time (≥ 1). */
  static create(slots: number): ComputeGate {
    if (!Number.isInteger(slots) || slots < 1) throw new Error(`ComputeGate: slots must be an integer ≥ 1, got ${slots}`);
    const buffer = new SharedArrayBuffer(3 * 4);
    Atomics.store(new Int32Array(buffer), SLOTS, slots);
    return new ComputeGate(buffer);
  }

  get slots(): number {
    return Atomics.load(this.state, SLOTS);
  }

  /** Blocks this thread until it holds a slot. */
  acquire(): void {
    const ticket = Atomics.add(this.state, NEXT_TICKET, 1);
    for (;;) {
      const released = Atomics.load(this.state, RELEASED);
      if (ticket - released < this.slots) return;
      Atomics.wait(this.state, RELEASED, released);
    }
  }

  release(): void {
    Atomics.add(this.state, RELEASED, 1);
    Atomics.notify(this.state, RELEASED);
  }

  /** fn() while holding a slot; the slot is given back even if fn throws. */
  run<T>(fn: () => T): T {
    this.acquire();
    try {
      return fn();
    } finally {
      this.release();
    }
  }
}
