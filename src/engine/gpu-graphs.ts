import onnxProto from 'onnx-proto';
import { intAttr, model, valueInfo } from './onnx-graphs.js';

/**
 * ONNX graphs for the GPU execution providers. They compute exactly what `gramTopKModel` (onnx-graphs.ts) computes,
 * rows of TopK(tile·Xᵀ), but are shaped so that X crosses the host↔device link once per kNN rather than once per tile:
 *
 * - WebGPU: onnxruntime-node can keep a tensor on the device between runs (`preferredOutputLocation: 'gpu-buffer'`),
 *   so X is uploaded once and each run slices its tile on the device. onnxruntime 1.23's WebGPU EP has no TopK (nor
 *   ScatterElements, nor an int64 Cast), and a CPU TopK would pull the whole t×n Gram tile back to the host, so the
 *   top-k is an unrolled selection built from float ops the EP does have: ReduceMax, Equal, Where, ReduceMin.
 * - CUDA: onnxruntime-node has no device IO binding for CUDA, so the whole tile loop runs inside one graph (an ONNX
 *   Loop over tiles, TopK per tile): X is an input once per call and the CUDA EP keeps it on the device.
 *
 * Both graphs run on the CPU EP as well, which is how their semantics are tested on machines without a GPU.
 */
const { onnx } = onnxProto;

const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;
const BOOL = onnx.TensorProto.DataType.BOOL;

/**
 * Masked-out value in the WebGPU selection. Finite on purpose: WGSL compilers may assume no infinities, so −∞ would
 * not compare reliably. Any real Gram value is far above it.
 */
export const SELECTED_SENTINEL = -3.4028234663852886e38;
/** Index placeholder larger than any row index; indices travel as float32, exact below 2^24. */
const NOT_A_MAXIMUM = 2 ** 24;
/** Largest n whose row indices a float32 holds exactly. */
export const MAX_DEVICE_ROWS = 2 ** 24;

function intsAttr(name: string, ints: number[]) {
  return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INTS, ints });
}

function node(opType: string, input: string[], output: string[], attribute: ReturnType<typeof intAttr>[] = []) {
  return onnx.NodeProto.create({ opType, input, output, attribute });
}

function scalar(name: string, dataType: number, value: number, dims: number[] = []) {
  return dataType === FLOAT
    ? onnx.TensorProto.create({ name, dataType, dims, floatData: [value] })
    : onnx.TensorProto.create({ name, dataType, dims, int64Data: [value] });
}

/** y = Identity(x): run with `preferredOutputLocation: 'gpu-buffer'` it uploads x once and leaves it on the device. */
export function uploadModel(): Uint8Array {
  return model(
    onnx.GraphProto.create({
      name: 'upload',
      node: [node('Identity', ['x'], ['y'])],
      input: [valueInfo('x', FLOAT, ['r', 'c'])],
      output: [valueInfo('y', FLOAT, ['r', 'c'])],
    }),
  );
}

/**
 * values, indices (both float32, t × kk) = the kk largest entries of each row of G = X[start:end]·Xᵀ, in descending
 * order, ties broken by the smaller column index (as TopK and the ref engine do). Inputs: x [n, d], iota [1, n]
 * (0, 1, …, n−1 as float32), start and end [1] (int64). Each of the kk steps takes the row maximum, then the
 * smallest column index holding it, then masks exactly that one entry, so repeated values are all kept.
 */
export function deviceTopKModel(kk: number): Uint8Array {
  if (!Number.isInteger(kk) || kk < 1) throw new Error(`deviceTopKModel: kk must be a positive integer, got ${kk}`);
  const nodes = [node('Slice', ['x', 'start', 'end', 'axis0'], ['tile']), node('Gemm', ['tile', 'x'], ['g0'], [intAttr('transB', 1)])];
  const values: string[] = [];
  const indices: string[] = [];
  for (let s = 0; s < kk; s++) {
    const g = `g${s}`;
    nodes.push(
      node('ReduceMax', [g], [`v${s}`], [intsAttr('axes', [1]), intAttr('keepdims', 1)]),
      node('Equal', [g, `v${s}`], [`isMax${s}`]),
      node('Where', [`isMax${s}`, 'iota', 'notMax'], [`cand${s}`]),
      node('ReduceMin', [`cand${s}`], [`a${s}`], [intsAttr('axes', [1]), intAttr('keepdims', 1)]),
    );
    if (s < kk - 1) {
      nodes.push(node('Equal', ['iota', `a${s}`], [`hit${s}`]), node('Where', [`hit${s}`, 'sentinel', g], [`g${s + 1}`]));
    }
    values.push(`v${s}`);
    indices.push(`a${s}`);
  }
  nodes.push(node('Concat', values, ['values'], [intAttr('axis', 1)]), node('Concat', indices, ['indices'], [intAttr('axis', 1)]));
  return model(
    onnx.GraphProto.create({
      name: 'device_gram_topk',
      node: nodes,
      initializer: [scalar('sentinel', FLOAT, SELECTED_SENTINEL, [1, 1]), scalar('notMax', FLOAT, NOT_A_MAXIMUM, [1, 1]), scalar('axis0', INT64, 0, [1])],
      input: [valueInfo('x', FLOAT, ['n', 'd']), valueInfo('iota', FLOAT, [1, 'n']), valueInfo('start', INT64, [1]), valueInfo('end', INT64, [1])],
      output: [valueInfo('values', FLOAT, ['t', kk]), valueInfo('indices', FLOAT, ['t', kk])],
    }),
  );
}

/**
 * values [m, t, kk], indices [m, t, kk] (int64): TopK of X[s_i : s_i + t]·Xᵀ for i = 0 … m−1, where
 * s_i = min(i·t, n − t), so the last tile overlaps its predecessor instead of being shorter (Loop concatenates
 * per-iteration outputs, which must have one shape). Inputs: x [n, d], k [1], t [1] (rows per tile), m [] (tiles),
 * last [1] (= n − t), first [1] (the first tile index of this call, so one graph serves any range of tiles).
 */
export function loopTopKModel(): Uint8Array {
  const body = onnx.GraphProto.create({
    name: 'tile_body',
    node: [
      node('Unsqueeze', ['i', 'axis0'], ['i1']),
      node('Add', ['i1', 'first'], ['tileIndex']),
      node('Mul', ['tileIndex', 't'], ['s0']),
      node('Min', ['s0', 'last'], ['s']),
      node('Add', ['s', 't'], ['e']),
      node('Slice', ['x', 's', 'e', 'axis0'], ['tile']),
      node('Gemm', ['tile', 'x'], ['gram'], [intAttr('transB', 1)]),
      node('TopK', ['gram', 'k'], ['v', 'ix'], [intAttr('axis', 1), intAttr('largest', 1), intAttr('sorted', 1)]),
      node('Identity', ['cond'], ['condOut']),
    ],
    initializer: [scalar('axis0', INT64, 0, [1])],
    input: [valueInfo('i', INT64, []), valueInfo('cond', BOOL, [])],
    output: [valueInfo('condOut', BOOL, []), valueInfo('v', FLOAT, ['t', 'kk']), valueInfo('ix', INT64, ['t', 'kk'])],
  });
  const loop = onnx.NodeProto.create({
    opType: 'Loop',
    input: ['m', 'true'],
    output: ['values', 'indices'],
    attribute: [onnx.AttributeProto.create({ name: 'body', type: onnx.AttributeProto.AttributeType.GRAPH, g: body })],
  });
  return model(
    onnx.GraphProto.create({
      name: 'loop_gram_topk',
      node: [loop],
      initializer: [onnx.TensorProto.create({ name: 'true', dataType: BOOL, dims: [], int32Data: [1] })],
      input: [
        valueInfo('x', FLOAT, ['n', 'd']),
        valueInfo('k', INT64, [1]),
        valueInfo('t', INT64, [1]),
        valueInfo('m', INT64, []),
        valueInfo('last', INT64, [1]),
        valueInfo('first', INT64, [1]),
      ],
      output: [valueInfo('values', FLOAT, ['m', 't', 'kk']), valueInfo('indices', INT64, ['m', 't', 'kk'])],
    }),
  );
}

/**
 * A band of a symmetric Gram matrix, used twice: G = A·Bᵀ (A = row block I, B = the rows from block I on),
 * rowValues/rowIndices = TopK(G, kr) along axis 1 (candidates for the rows of A among B's rows) and
 * colValues/colIndices = TopK(Gᵀ, kc) along axis 1 (candidates for the rows of B among A's rows, [tB, kc]).
 * K = X·Xᵀ is symmetric, so computing only the upper triangle halves the Gram work of an exact kNN (CPU engine).
 */
export function pairTopKModel(): Uint8Array {
  return model(
    onnx.GraphProto.create({
      name: 'pair_gram_topk',
      node: [
        node('Gemm', ['a', 'b'], ['gram'], [intAttr('transB', 1)]),
        node('TopK', ['gram', 'kr'], ['rowValues', 'rowIndices'], [intAttr('axis', 1), intAttr('largest', 1), intAttr('sorted', 1)]),
        // TopK along axis 0 is a strided walk in onnxruntime's CPU kernel (about as slow as the Gemm itself);
        // an explicit transpose first makes it a contiguous row TopK.
        node('Transpose', ['gram'], ['gramT'], [intsAttr('perm', [1, 0])]),
        node('TopK', ['gramT', 'kc'], ['colValues', 'colIndices'], [intAttr('axis', 1), intAttr('largest', 1), intAttr('sorted', 1)]),
      ],
      input: [valueInfo('a', FLOAT, ['ta', 'd']), valueInfo('b', FLOAT, ['tb', 'd']), valueInfo('kr', INT64, [1]), valueInfo('kc', INT64, [1])],
      output: [
        valueInfo('rowValues', FLOAT, ['ta', 'kr']),
        valueInfo('rowIndices', INT64, ['ta', 'kr']),
        valueInfo('colValues', FLOAT, ['tb', 'kc']),
        valueInfo('colIndices', INT64, ['tb', 'kc']),
      ],
    }),
  );
}
