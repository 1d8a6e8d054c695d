/**
 * demo/compute-gate.ts: worker threads that share one gate never have more than `slots` holders at once, every
 * worker gets its turns, and a holder that throws gives its slot back.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { ComputeGate } from '../demo/compute-gate.js';

const gateUrl = new URL('../demo/compute-gate.ts', import.meta.url).href;
const tsxApi = import.meta.resolve('tsx/esm/api');

// Each worker: `rounds` times, take a slot, count itself in, spin ~1 ms, record the most holders seen, count out.
const workerSource = `
const { workerData, parentPort } = require('node:worker_threads');
import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(gateUrl)}); }).then(({ ComputeGate }) => {
  const gate = new ComputeGate(workerData.gate);
  const s = new Int32Array(workerData.stats);
  for (let i = 0; i < workerData.rounds; i++) {
    gate.run(() => {
      const now = Atomics.add(s, 0, 1) + 1;
      for (;;) { const m = Atomics.load(s, 1); if (now <= m || Atomics.compareExchange(s, 1, m, now) === m) break; }
      const t = Date.now(); while (Date.now() - t < 1) {}
      Atomics.add(s, 2 + workerData.id, 1);
      Atomics.sub(s, 0, 1);
    });
  }
  parentPort.postMessage('done');
});
`;

async function contend(slots: number, workers: number, rounds: number): Promise<Int32Array> {
  const gate = ComputeGate.create(slots);
  const stats = new SharedArrayBuffer(4 * (2 + workers));
  await Promise.all(
    Array.from({ length: workers }, (_, id) => {
      const w = new Worker(workerSource, { eval: true, workerData: { gate: gate.buffer, stats, rounds, id } });
      return new Promise<void>((resolve, reject) => {
        w.on('message', () => void w.terminate().then(() => resolve()));
        w.on('error', reject);
      });
    }),
  );
  return new Int32Array(stats);
}

test('at most `slots` workers hold the gate at once, and every worker finishes its turns', { timeout: 60_000 }, async () => {
  const one = await contend(1, 3, 40);
  assert.equal(one[1], 1, 'one slot: never two holders');
  assert.deepEqual([...one.slice(2)], [40, 40, 40]);
  const two = await contend(2, 4, 40);
  assert.ok(two[1]! <= 2, `two slots: at most two holders, saw ${two[1]}`);
  assert.deepEqual([...two.slice(2)], [40, 40, 40, 40]);
  assert.equal(two[0], 0, 'every holder left');
});

test('a holder that throws gives its slot back; bad construction is refused', () => {
  const gate = ComputeGate.create(1);
  assert.throws(() => gate.run(() => { throw new Error('boom'); }), /boom/);
  // With the slot leaked this would block forever (the test would time out).
  assert.equal(gate.run(() => 7), 7);
  assert.equal(gate.slots, 1);
  assert.throws(() => ComputeGate.create(0), /slots must be an integer ≥ 1/);
  assert.throws(() => new ComputeGate(new SharedArrayBuffer(12)), /not made by ComputeGate.create/);
});
