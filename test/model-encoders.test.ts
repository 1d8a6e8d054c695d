/**
 * The frozen encoders shipped in npm packages (demo/model/encoders.ts): they load without network, give a 7×7 token
 * grid aligned between encoder and teacher, respond locally to image content, and the float16 cache round-trips.
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
// One red square in the bottom-right cell: pixels 149–224, i.e. tokens (row, col) ≥ (4, 4) of the 7×7 grid.
const corner: Scene = { ...empty, id: 'corner', objects: [{ shape: 'square', colour: 'red', row: 2, col: 2, cx: 2.5 * cell, cy: 2.5 * cell, r: 28 }] };

test('encoder (CLIP stand-in) and teacher (DINOv2 stand-in): aligned 7×7 grids, local response, float16 cache', async () => {
  const enc = await loadVisionEncoder();
  const tea = await loadTeacher();
  try {
    assert.deepEqual([enc.spec.grid, enc.spec.dim, enc.spec.package], [[7, 7], 160, 'nsfwjs']);
    assert.deepEqual([tea.spec.grid, tea.spec.dim, tea.spec.package], [[7, 7], 480, '@vladmandic/human']);
    assert.match(enc.spec.description, /CLIP stand-in/);
    assert.match(tea.spec.description, /DINOv2 stand-in/);
    const f = await extractSceneFeatures([empty, corner], enc, tea, { sceneSeed: 77, cacheDir: tmp });
    assert.equal(f.cached, false);
    for (const [x, dim] of [
      [f.encoder.data, 160],
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
      assert.ok(change(5 * 7 + 5) > 3 * change(2 * 7 + 2), `dim ${dim}: object token change ${change(40)} vs token (2, 2) ${change(16)}`);
    }
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
