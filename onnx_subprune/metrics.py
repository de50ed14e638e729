"""Model size: float parameters and multiply-accumulates (per run with symbolic dims as 1), in
exact integer arithmetic (Python ints: no overflow on huge declared dims)."""

from __future__ import annotations

import math

import onnx

from .graph import FLOAT_TYPES, proto_attrs, shape_info, static_dim
from .ops import LAYERS


def count_params(model: onnx.ModelProto) -> int:
    """Number of float entries in initializers and Constant nodes, those of subgraphs (If and
    Loop bodies) included: onnx-graphsurgeon moves an outer initializer that only a branch reads
    into that branch."""
    return graph_params(model.graph)


def graph_params(graph: onnx.GraphProto, nested: bool = True) -> int:
    """:func:`count_params` of one graph; ``nested``: with its subgraphs' (recursively)."""
    tensors = list(graph.initializer)
    tensors += [
        attr.t for node in graph.node if node.op_type == "Constant"
        for attr in node.attribute if attr.name == "value"
    ]
    own = sum(math.prod(int(d) for d in t.dims) for t in tensors if t.data_type in FLOAT_TYPES)
    if not nested:
        return own
    return own + sum(graph_params(inner) for node in graph.node for attr in node.attribute
                     for inner in ([attr.g] if attr.HasField("g") else list(attr.graphs)))


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the layers (Conv, Gemm, MatMul: :data:`ops.LAYERS`) for one sample;
    a MatMul of two activations (attention's scores and context) is not a layer and not counted.

    Shapes come from shape inference; symbolic or unknown dims (batch, sequence) count as 1.
    """
    return count_macs_open(model)[0]


def count_macs_open(model: onnx.ModelProto) -> tuple[int, list[str]]:
    """:func:`count_macs` and the layers whose output has a symbolic or unknown dim past the
    sample axis (counted as 1: their MACs are too low unless that dim is 1)."""
    layers = _layers(model)
    return sum(macs for _, macs, _ in layers), [name for name, _, open_dims in layers if open_dims]


def layer_macs(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(node name, MACs for one sample) of every layer node whose output and weight shapes are
    known, in graph order (see :func:`count_macs`)."""
    return [(name, macs) for name, macs, _ in _layers(model)]


def _layers(model: onnx.ModelProto) -> list[tuple[str, int, bool]]:
    """(node name, MACs for one sample, output dims left open) of every layer node whose output
    and weight shapes are known."""
    inferred = shape_info(model, values=True)  # dims behind computed Reshape shapes too
    shapes = {
        info.name: [static_dim(d) for d in info.type.tensor_type.shape.dim]
        for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    shapes.update({init.name: list(init.dims) for init in inferred.graph.initializer})
    constants = {init.name for init in inferred.graph.initializer}
    constants |= {out for node in inferred.graph.node if node.op_type == "Constant" for out in node.output}
    result = []
    for node in inferred.graph.node:
        if node.op_type not in LAYERS or len(node.input) < 2:
            continue
        if node.op_type == "MatMul" and node.input[1] not in constants:
            continue  # a product of two activations (attention), no layer of weights
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
        if not out or not weight:
            continue
        open_dims = any(d is None for d in out[1:])
        out, weight = ([1 if d is None else int(d) for d in dims] for dims in (out, weight))
        macs = int(LAYERS[node.op_type].macs(proto_attrs(node), out, weight))
        result.append((node.name, macs, open_dims))
    return result
