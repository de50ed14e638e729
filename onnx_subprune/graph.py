"""Loading, saving and small onnx-graphsurgeon helpers shared by analyze and rewrite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .errors import SubpruneError
from .files import write_atomic


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model; every failure is a one-line :class:`SubpruneError`."""
    path = Path(path)
    if not path.is_file():
        raise SubpruneError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types
        raise SubpruneError(f"cannot read ONNX model {path}: {_one_line(exc)}") from None
    if not model.graph.node:
        raise SubpruneError(f"cannot read ONNX model {path}: the graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise SubpruneError(f"invalid ONNX model {path}: {_one_line(exc)}") from None
    return model


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically."""
    write_atomic(path, model.SerializeToString())


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Shape-infer ``model`` (nodes named by :func:`name_nodes`) and import it."""
    return gs.import_onnx(infer_shapes(name_nodes(model)))


def proto_attrs(node: onnx.NodeProto) -> dict:
    """A NodeProto's attributes as a dict of Python values (as ``gs.Node.attrs`` has them)."""
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def static_dim(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    """The size a declared dim fixes, or None when it is dynamic: symbolic, unset, or a value of
    0 or -1 (as some exporters write a dynamic dim)."""
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def pin_input_dims(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose dynamic input dims take the sizes of the arrays in ``feeds``
    (first axis = samples, pinned to 1), so that MACs are counted at the size the model runs
    at; ``model`` itself when no input has a dynamic dim past the batch axis."""
    inputs = [value for value in model.graph.input if value.name in feeds]
    if not any(static_dim(dim) is None for value in inputs for dim in value.type.tensor_type.shape.dim[1:]):
        return model
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for value in pinned.graph.input:
        if value.name not in feeds:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis and static_dim(dim) is None and axis < feeds[value.name].ndim:
                dim.dim_value = int(feeds[value.name].shape[axis])
    return pinned


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes, or as it is where onnx's shape inference fails on it
    (custom domains, ops newer than the installed onnx)."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model analysis and rewrite work on: every node named, constant layout ops folded."""
    return fold_constants(name_nodes(model))


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose nameless nodes carry the names :func:`import_graph` gives."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = {node.name for node in named.graph.node}
    for index, node in enumerate(named.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return named


FOLDABLE = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Cast", "Slice")
"""Ops that only lay out or convert a constant; exporters (paddle2onnx) leave them in front of
biases and scales, e.g. a Conv bias as Reshape(Constant, [1, C, 1, 1]) added after the Conv."""


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every :data:`FOLDABLE` node whose inputs are all constants replaced by an
    initializer holding its output (same name), so that such parameters are plain constants to
    analyze and rewrite; the model itself when there is none. The computation is unchanged."""
    from onnx.reference import ReferenceEvaluator

    constants = {init.name for init in model.graph.initializer}
    constants |= {node.output[0] for node in model.graph.node if node.op_type == "Constant" and node.output}
    outputs = {out.name for out in model.graph.output}
    folded: dict[str, np.ndarray] = {}
    drop = set()
    for index, node in enumerate(model.graph.node):
        inputs = [name for name in node.input if name]
        if (node.op_type not in FOLDABLE or node.domain not in ("", "ai.onnx") or not inputs
                or not all(name in constants for name in inputs) or len(node.output) != 1
                or node.output[0] in outputs):
            continue
        values = read_constants(model, set(inputs) - set(folded)) | {n: folded[n] for n in inputs if n in folded}
        if len(values) != len(set(inputs)):
            continue
        try:
            (result,) = ReferenceEvaluator(_single_node_model(model, node, values)).run(None, {})
        except Exception:  # leave what the reference evaluator cannot compute as it is
            continue
        folded[node.output[0]] = np.asarray(result)
        constants.add(node.output[0])
        drop.add(index)
    if not folded:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    kept = [node for index, node in enumerate(model.graph.node) if index not in drop]
    read = {name for node in kept for name in node.input} | outputs | _subgraph_inputs(kept)
    del result.graph.node[:]
    result.graph.node.extend(node for node in kept
                             if node.op_type != "Constant" or any(out in read for out in node.output))
    used = [init for init in result.graph.initializer if init.name in read or init.name not in constants]
    del result.graph.initializer[:]
    result.graph.initializer.extend(used)
    result.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in folded.items() if name in read)
    return result


def _single_node_model(model: onnx.ModelProto, node: onnx.NodeProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model computing ``node`` from the constant ``values`` of its inputs."""
    graph = onnx.helper.make_graph(
        [node], "fold", [], [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in values.items()],
    )
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _subgraph_inputs(nodes) -> set[str]:
    """Names read by the subgraphs (If/Loop/Scan bodies) of ``nodes``, which may use outer values."""
    names = set()
    for node in nodes:
        for attr in node.attribute:
            for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= {name for inner in graph.node for name in inner.input}
                names |= _subgraph_inputs(graph.node)
    return names


def read_constants(model: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    """Values of the named initializers and ``Constant`` node outputs of ``model`` (also when
    reached through ``Identity`` nodes)."""
    alias = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Identity"}
    source = {}
    for name in names:
        origin = name
        while origin in alias:
            origin = alias[origin]
        source[name] = origin
    wanted = set(source.values())
    found = {
        init.name: numpy_helper.to_array(init) for init in model.graph.initializer if init.name in wanted
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = numpy_helper.to_array(value.t)
    return {name: found[origin] for name, origin in source.items() if origin in found}


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer, ``Constant`` node output, or either behind
    ``Identity`` nodes), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    source = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if source is not None and source.op == "Constant":
        value = source.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    if source is not None and source.op == "Identity":
        return const_value(source.inputs[0])
    return None


def set_const_value(graph: gs.Graph, node: gs.Node, index: int, value: np.ndarray) -> None:
    """Give input ``index`` of ``node`` the constant ``value``.

    The tensor is changed in place when ``node`` is its only reader (names are kept); a shared
    constant, or one behind an Identity, is left alone and the node gets a fresh initializer.
    """
    tensor = node.inputs[index]
    readers = [user for user in tensor.outputs if user is not node]
    if not readers and not _is_graph_output(graph, tensor):
        if isinstance(tensor, gs.Constant):
            tensor.values = value
            return
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is not None and producer.op == "Constant":
            producer.attrs["value"] = gs.Constant(tensor.name + "_value", value)
            return
    fresh = gs.Constant(_fresh_name(graph, f"{tensor.name}_pruned"), value)
    node.inputs[index] = fresh


def _is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out.name == tensor.name for out in graph.outputs)


def _fresh_name(graph: gs.Graph, base: str) -> str:
    taken = set(graph.tensors().keys())
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    return name


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
