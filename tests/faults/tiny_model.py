"""The fault suite's model: a tiny dense classifier (28x28 -> softmax over 10 classes) as a float32 .tflite file,
written with LiteRT's own flatbuffer schema, so neither the test process nor the fault workers import TensorFlow
(a worker serving it through LiteRT starts in ~2 s instead of ~10 s).

The faults are about delivery, not accuracy: the weights are seeded noise, the interface is the product's.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

SIDE, CLASSES = 28, 10


def _tensor(name: str, shape: list[int], buffer: int, *, batch: bool) -> tfl.TensorT:
    t = tfl.TensorT()
    t.name, t.type, t.buffer = name.encode(), tfl.TensorType.FLOAT32, buffer
    t.shape = shape
    t.shapeSignature = [-1, *shape[1:]] if batch else list(shape)
    return t


def _buffer(data: np.ndarray | None = None) -> tfl.BufferT:
    b = tfl.BufferT()
    b.data = None if data is None else np.frombuffer(data.astype(np.float32).tobytes(), dtype=np.uint8)
    return b


def _op(code: int, inputs: list[int], outputs: list[int], options_type: int, options: object) -> tfl.OperatorT:
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, inputs, outputs
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _code(builtin: int) -> tfl.OperatorCodeT:
    c = tfl.OperatorCodeT()
    c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, builtin, 1
    return c


def tiny_tflite(seed: int = 0) -> bytes:
    """The model's .tflite bytes: FULLY_CONNECTED (784 -> 10, the input flattened) then SOFTMAX, any batch size."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, size=(CLASSES, SIDE * SIDE))
    graph = tfl.SubGraphT()
    graph.tensors = [
        _tensor("image", [1, SIDE, SIDE, 1], 1, batch=True),
        _tensor("weights", [CLASSES, SIDE * SIDE], 2, batch=False),
        _tensor("bias", [CLASSES], 3, batch=False),
        _tensor("logits", [1, CLASSES], 4, batch=True),
        _tensor("probabilities", [1, CLASSES], 5, batch=True),
    ]
    graph.inputs, graph.outputs = [0], [4]
    dense = tfl.FullyConnectedOptionsT()  # keep_num_dims=False: the input is flattened to (N, 784)
    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 1.0
    graph.operators = [
        _op(0, [0, 1, 2], [3], tfl.BuiltinOptions.FullyConnectedOptions, dense),
        _op(1, [3], [4], tfl.BuiltinOptions.SoftmaxOptions, softmax),
    ]
    model = tfl.ModelT()
    model.version, model.description = 3, b"inferq fault-suite model"
    model.operatorCodes = [_code(tfl.BuiltinOperator.FULLY_CONNECTED), _code(tfl.BuiltinOperator.SOFTMAX)]
    model.subgraphs = [graph]
    model.buffers = [_buffer(), _buffer(), _buffer(weights), _buffer(np.zeros(CLASSES)), _buffer(), _buffer()]
    builder = flatbuffers.Builder(64 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write(path: Path) -> Path:
    """Write the model to `path` and return it."""
    path.write_bytes(tiny_tflite())
    return path
