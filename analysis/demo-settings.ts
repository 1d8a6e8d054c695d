import { K } from '../src/metrics/params.js';

/**
 * How the embedded demo and its readout (bench/readout.bench.ts, the README's tables) compute layer-wise numbers,
 * recorded with every row; the dashboard opens on the same settings, so its default view shows the readout's
 * numbers (per-token: n = probe images × image tokens, 48 × 36 = 1728 in the default demo). A module of its own so
 * that the server can read it without loading the demo's training code (tfjs).
 */
export const DEMO_METRIC = { metric: 'cknna' as const, k: K.default!, preprocess: 'prh' as const, tokenMode: 'per-token' as const };
