export { mulberry32, deriveSeed, randInt, randomPermutation, shuffleInPlace, gaussian, type Rng } from '../core/rng.js';
export { meanSd, quantile, quantileSorted, normalQuantile, wilsonInterval, percentileInterval, checkLevel } from './summary.js';
export { mcnemarExact, mcnemarP, binomialHalfCdf, type McNemarResult } from './paired.js';
export { permuteKnn, restrictKnn } from '../engine/knn-lists.js';
export {
  rowGroups,
  rowsByGroup,
  subsampleGroups,
  bootstrapGroups,
  RowPermuter,
  permutationPValue,
  type RowGroups,
  type PermutationUnit,
} from './resample.js';
