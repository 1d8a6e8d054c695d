export { lbfgs, type LbfgsOptions, type LbfgsResult } from './lbfgs.js';
export { fitLogistic, predictLogistic, type LogisticModel } from './logistic.js';
export { fitRidge, predictRidge, type RidgeModel } from './ridge.js';
export { groupFolds, fitStandardiser, applyStandardiser } from './cv.js';
export {
  runProbe,
  encodeLabels,
  inferTask,
  DEFAULT_L2_GRID,
  type ProbeInput,
  type ProbeOptions,
  type ProbeScore,
  type ProbeTask,
  type ControlBy,
} from './probe.js';
