import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inflateSync } from 'node:zlib';
import { crc32, encodePngRgb, pngDataUrl } from '../src/store/png.js';
import { InputError } from '../src/core/errors.js';

test('crc32: the standard check value and an empty input', () => {
  // CRC-32/ISO-HDLC check value (the CRC of the ASCII digits 1–9), as published for the algorithm PNG uses.
  assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
});

test('encodePngRgb: a well-formed PNG whose pixels a real decoder (resvg) reads back', async () => {
  const w = 5;
  const h = 3;
  const rgb = Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * 37 + 11) % 256);
  const png = Buffer.from(encodePngRgb(rgb, w, h));
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  // Walk the chunks by hand: IHDR, IDAT, IEND, each with its CRC over type + data.
  const chunks: { type: string; data: Buffer }[] = [];
  for (let at = 8; at < png.length; ) {
    const len = png.readUInt32BE(at);
    const type = png.toString('latin1', at + 4, at + 8);
    const data = png.subarray(at + 8, at + 8 + len);
    assert.equal(png.readUInt32BE(at + 8 + len), crc32(png.subarray(at + 4, at + 8 + len)), `${type} CRC`);
    chunks.push({ type, data });
    at += 12 + len;
  }
  assert.deepEqual(chunks.map((c) => c.type), ['IHDR', 'IDAT', 'IEND']);
  const ihdr = chunks[0]!.data;
  assert.deepEqual([ihdr.readUInt32BE(0), ihdr.readUInt32BE(4), ...ihdr.subarray(8)], [w, h, 8, 2, 0, 0, 0]);
  const raw = inflateSync(chunks[1]!.data);
  assert.equal(raw.length, h * (1 + 3 * w));
  for (let y = 0; y < h; y++) {
    assert.equal(raw[y * (1 + 3 * w)], 0, 'filter type 0');
    assert.deepEqual([...raw.subarray(y * (1 + 3 * w) + 1, (y + 1) * (1 + 3 * w))], [...rgb.subarray(y * 3 * w, (y + 1) * 3 * w)]);
  }
  // An independent decoder: resvg draws the data URL 1:1; its RGBA pixels must be the input.
  const { Resvg } = await import('@resvg/resvg-js');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><image href="${pngDataUrl(png)}" x="0" y="0" width="${w}" height="${h}" style="image-rendering:pixelated"/></svg>`;
  const px = new Resvg(svg).render().pixels;
  for (let i = 0; i < w * h; i++) {
    assert.deepEqual([px[4 * i], px[4 * i + 1], px[4 * i + 2], px[4 * i + 3]], [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], 255], `pixel ${i}`);
  }
  assert.throws(() => encodePngRgb(rgb, w, h + 1), InputError);
  assert.throws(() => encodePngRgb(rgb, 0, h), InputError);
});
