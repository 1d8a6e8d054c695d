import onnxProto from 'onnx-proto';

// onnx-proto is the protobufjs build of onnx.proto; serialising a ModelProto ourselves means no Python `onnx`
// package and no model files on disk: the few graphs the engine needs are built here, once per process.
const { onnx } = onnxProto;

const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;

export type Dim = string | number;

/** Graph-building helpers shared with gpu-graphs.ts. */
export function valueInfo(name: string, elemType: number, dims: Dim[]) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

export function intAttr(name: string, i: number) {
  return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INT, i });
}

export function model(graph: InstanceType<typeof onnx.GraphProto>): Uint8Array {
  const m = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'viral-lens',
    opsetImport: [{ domain: '', version: 17 }],
    graph,
  });
  return onnx.ModelProto.encode(m).finish();
}

/** values, indices = TopK(Gemm(tile, X, transB=1), k): the Gram tile never leaves the runtime. */
export function gramTopKModel(): Uint8Array {
  return model(
    onnx.GraphProto.create({
      name: 'gram_topk',
      node: [
        onnx.NodeProto.create({ opType: 'Gemm', input: ['tile', 'x'], output: ['gram'], attribute: [intAttr('transB', 1)] }),
        onnx.NodeProto.create({
          opType: 'TopK',
          input: ['gram', 'k'],
          output: ['values', 'indices'],
          attribute: [intAttr('axis', 1), intAttr('largest', 1), intAttr('sorted', 1)],
        }),
      ],
      input: [valueInfo('tile', FLOAT, ['t', 'd']), valueInfo('x', FLOAT, ['n', 'd']), valueInfo('k', INT64, [1])],
      output: [valueInfo('values', FLOAT, ['t', 'kk']), valueInfo('indices', INT64, ['t', 'kk'])],
    }),
  );
}

/** Y = A·Bᵀ (transB) or Aᵀ·B (transA). */
export function gemmModel(trans: 'transA' | 'transB'): Uint8Array {
  const aDims = trans === 'transA' ? ['n', 'p'] : ['p', 'd'];
  const bDims = trans === 'transA' ? ['n', 'q'] : ['q', 'd'];
  return model(
    onnx.GraphProto.create({
      name: `gemm_${trans}`,
      node: [onnx.NodeProto.create({ opType: 'Gemm', input: ['a', 'b'], output: ['y'], attribute: [intAttr(trans, 1)] })],
      input: [valueInfo('a', FLOAT, aDims), valueInfo('b', FLOAT, bDims)],
      output: [valueInfo('y', FLOAT, ['p', 'q'])],
    }),
  );
}
