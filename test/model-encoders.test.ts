/**
 * The frozen encoders shipped in npm packages (demo/model/encoders.ts): they load without network, give a 6×6 token
 * grid aligned between encoder and teacher, respond locally to image content (the encoder, which reads each grid
 * cell as its own tile, only in that cell's 2×2 tokens), and the float16 cache round-trips.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../demo/model/backend.js';
import { extractSceneFeatures, loadTeacher, loadVisionEncoder, PATCH_TOKENS } from '../demo/model/encoders.js';
import { IMAGE_SIZE, type Scene } from '../demo/model/scenes.js';
import { floatToHalf, halfToFloat } from '../src/store/dtype.js';

await initBackend();
const tmp = await mkdtemp(join(tmpdir(), 'vl-enc-'));
test.after(() => rm(tmp, { recursive: true, force: true }));

const empty: Scene = { id: 'empty', index: 0, objects: [], background: 240, noiseSeed: 4 };
const cell = IMAGE_SIZE / 3;
// One red square in the bottom-right cell: pixels 128–192, i.e. tokens (row, col) ≥ (4, 4) of the 6×6 grid.
const corner: Scene = { ...empty, id: 'corner', objects: [{ shape: 'square', colour: 'red', row: 2, col: 2, cx: 2.5 * cell, cy: 2.5 * cell, r: 24 }] };
// One blue triangle in the top row, middle cell: tokens rows 0–1, cols 2–3 (not symmetric, so a transposed tiling shows).
const top: Scene = { ...empty, id: 'top', objects: [{ shape: 'triangle', colour: 'blue', row: 0, col: 1, cx: 1.5 * cell, cy: 0.5 * cell, r: 24 }] };

test('encoder (CLIP stand-in) and teacher (DINOv2 stand-in): aligned 6×6 grids, local response, float16 cache', async () => {
  const enc = await loadVisionEncoder();
  const tea = await loadTeacher();
  try {
    assert.deepEqual([enc.spec.grid, enc.spec.dim, enc.spec.package], [[6, 6], 96, 'nsfwjs']);
    assert.deepEqual([tea.spec.grid, tea.spec.dim, tea.spec.package], [[6, 6], 480, '@vladmandic/human']);
    assert.match(enc.spec.description, /CLIP stand-in/);
    assert.match(tea.spec.description, /DINOv2 stand-in/);
    const f = await extractSceneFeatures([empty, corner], enc, tea, { sceneSeed: 77, cacheDir: tmp });
    assert.equal(f.cached, false);
    for (const [x, dim] of [
      [f.encoder.data, 96],
      [f.teacher.data, 480],
    ] as const) {
      assert.equal(x.length, 2 * PATCH_TOKENS * dim);
      assert.ok(x.every(Number.isFinite));
      // Rounded to float16 on extraction, so cached and fresh runs agree bit for bit.
      for (let i = 0; i < x.length; i += 97) assert.equal(x[i], halfToFloat(floatToHalf(x[i]!)));
      // The object changes the token over it (5, 5) far more than a token away from it (2, 2). (Border tokens are
      // avoided: the detector's squeeze-excite blocks pool globally and its (0, 0) token reacts to any change.)
      const change = (tok: number) => {
        let s = 0;
        for (let d = 0; d < dim; d++) s += (x[(PATCH_TOKENS + tok) * dim + d]! - x[tok * dim + d]!) ** 2;
        return Math.sqrt(s);
      };
      assert.ok(change(5 * 6 + 5) > 3 * change(2 * 6 + 2), `dim ${dim}: object token change ${change(35)} vs token (2, 2) ${change(14)}`);
    }
    // The encoder's tiles are independent: an object changes exactly its own cell's 2×2 tokens, in place.
    const tiles = await extractSceneFeatures([empty, top], enc, tea, { sceneSeed: 79 });
    const d = enc.spec.dim;
    const changed: string[] = [];
    for (let tok = 0; tok < PATCH_TOKENS; tok++) {
      const a = tiles.encoder.data.subarray(tok * d, (tok + 1) * d);
      const b = tiles.encoder.data.subarray((PATCH_TOKENS + tok) * d, (PATCH_TOKENS + tok + 1) * d);
      if (a.some((v, i) => v !== b[i])) changed.push(`${Math.floor(tok / 6)},${tok % 6}`);
    }
    assert.deepEqual(changed, ['0,2', '0,3', '1,2', '1,3']);
    const again = await extractSceneFeatures([empty, corner], enc, tea, { sceneSeed: 77, cacheDir: tmp });
    assert.equal(again.cached, true);
    assert.deepEqual(again.encoder.data, f.encoder.data);
    assert.deepEqual(again.teacher.data, f.teacher.data);
    // A different scene seed is a different cache entry.
    assert.equal((await extractSceneFeatures([empty, corner], enc, tea, { sceneSeed: 78, cacheDir: tmp })).cached, false);
  } finally {
    enc.dispose();
    tea.dispose();
  }
});

test('encoder options: an unknown MobileNetV2 layer or a tiling that does not fit the patch grid is a one-line error', async () => {
  await assert.rejects(loadVisionEncoder({ node: 'block_99_add' }), /--node: MobileNetV2 has no layer 'block_99_add'/);
  await assert.rejects(loadVisionEncoder({ crops: 5 }), /--crops: 5 tiles per side do not divide a 192 px image into 6×6 patch tokens/);
});
