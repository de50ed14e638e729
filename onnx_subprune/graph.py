"""Loading, saving and small onnx-graphsurgeon helpers shared by analyze and rewrite."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .errors import SubpruneError, quote
from .files import write_atomic

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model; every failure is a one-line :class:`SubpruneError`."""
    return read_model(path)[0]


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, list[str]]:
    """Read and check an ONNX model (see :func:`check_model`): the model, with its external
    data loaded, and the external data files it read (which no output may replace)."""
    path = Path(path)
    shown = os.fspath(path)
    if not path.exists():
        raise SubpruneError(f"model file not found: {shown}")
    if path.is_dir():
        raise SubpruneError(f"cannot read ONNX model {shown}: it is a folder")
    if not path.is_file():
        raise SubpruneError(f"cannot read ONNX model {shown}: it is not a regular file")
    if path.stat().st_size == 0:
        raise SubpruneError(f"cannot read ONNX model {shown}: the file is empty")
    try:
        model = onnx.load(shown, load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise SubpruneError(f"cannot read ONNX model {shown}: {_one_line(exc)}") from None
    external = _external_files(model, path.parent)
    if external:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise SubpruneError(f"cannot read the external data of ONNX model {shown}: {_one_line(exc)}") from None
    check_model(model, shown)
    return model, external


def _external_files(model: onnx.ModelProto, folder: Path) -> list[str]:
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    files = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            try:
                location = ExternalDataInfo(tensor).location
            except Exception:
                continue
            if location:
                files.add(os.path.join(folder, location))
    return sorted(files)


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
             "LayerNormalization")
"""Ops whose constant inputs (weights, biases, scales, statistics) must be finite: pruning
computes with them. Elsewhere an infinite constant may be meant (a -inf mask, a Clip bound)."""


def check_model(model: onnx.ModelProto, source: str) -> None:
    """A one-line :class:`SubpruneError` unless ``model`` has nodes, passes ``onnx.checker`` and
    strict shape inference, its layers' constant inputs are finite (no constant holds NaN) and
    every Conv's weight matches its input channels, and its text is valid UTF-8."""
    if not model.graph.node:
        raise SubpruneError(f"cannot read ONNX model {source}: the graph has no nodes")
    _check_text(model, source)
    try:
        check_onnx(model)
    except Exception as exc:
        raise SubpruneError(f"invalid ONNX model {source}: {_one_line(exc)}") from None
    try:
        inferred = _inferred(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise SubpruneError(f"invalid ONNX model {source}: {_one_line(exc)}") from None
    _check_values(model, source)
    _check_convs(inferred, source)


def _check_text(message, source: str, path: str = "model") -> None:
    """Every string field of ``message`` (recursively) is valid UTF-8, as protobuf requires (a
    corrupt one reads back as bytes and fails wherever it is written again), naming the field."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import Message

    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            items = [(where, value)] if isinstance(value, Message) else [(f"{where}[{i}]", v) for i, v in enumerate(value)]
            for name, item in items:
                _check_text(item, source, name)
        elif field.type == FieldDescriptor.TYPE_STRING:
            texts = [value] if isinstance(value, (str, bytes)) else list(value)
            if any(not isinstance(text, str) for text in texts):
                raise SubpruneError(f"invalid ONNX model {source}: {where} is not valid UTF-8")


def _check_values(model: onnx.ModelProto, source: str) -> None:
    """No NaN in any float constant; no infinity in a constant input of :data:`LAYER_OPS`."""
    read_by_layer = {}
    for node in model.graph.node:
        if node.op_type in LAYER_OPS and node.domain in ("", "ai.onnx"):
            for name in node.input[1:]:
                read_by_layer.setdefault(name, node.name or node.op_type)
    tensors = [(init.name, init) for init in model.graph.initializer]
    tensors += [(node.output[0], attr.t) for node in model.graph.node if node.op_type == "Constant" and node.output
                for attr in node.attribute if attr.name == "value" and attr.HasField("t")]
    for name, tensor in tensors:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        try:
            values = numpy_helper.to_array(tensor)
            if values.dtype.kind != "f":  # bfloat16 and other extension types
                values = values.astype(np.float32)
        except Exception as exc:
            raise SubpruneError(f"invalid ONNX model {source}: tensor {quote(name)} cannot be read: "
                                f"{_one_line(exc)}") from None
        if np.isnan(values).any():
            raise SubpruneError(f"model {source}: weight {quote(name)} contains NaN")
        if name in read_by_layer and np.isinf(values).any():
            raise SubpruneError(f"model {source}: weight {quote(name)} of node {quote(read_by_layer[name])} "
                                f"contains Inf")


def _check_convs(model: onnx.ModelProto, source: str) -> None:
    """Every Conv with a constant weight and a known input channel count: C_in = weight dim 1 x
    group, and group divides the output channels (onnx's shape inference does not check it)."""
    shapes = {info.name: info.type.tensor_type.shape for info in [*model.graph.value_info, *model.graph.input]}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    weights.update({node.output[0]: list(attr.t.dims) for node in model.graph.node
                    if node.op_type == "Constant" and node.output for attr in node.attribute
                    if attr.name == "value" and attr.HasField("t")})
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        weight, shape = weights.get(node.input[1]), shapes.get(node.input[0])
        if weight is None or len(weight) < 3 or shape is None or len(shape.dim) < 2:
            continue
        group = int(proto_attrs(node).get("group", 1))
        channels = static_dim(shape.dim[1])
        if group < 1 or weight[0] % group or (channels is not None and channels != weight[1] * group):
            raise SubpruneError(
                f"invalid ONNX model {source}: Conv {quote(node.name or node.output[0])} has weight "
                f"{quote(node.input[1])} of shape {weight} and group {group} for an input of "
                f"{channels if channels is not None else '?'} channels")
        bias = weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias != weight[:1]:
            raise SubpruneError(f"invalid ONNX model {source}: Conv {quote(node.name or node.output[0])} has bias "
                                f"{quote(node.input[2])} of shape {bias} for {weight[0]} output channels")


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically."""
    write_atomic(path, model_bytes(model))


def model_bytes(model: onnx.ModelProto) -> bytes:
    """``model`` serialized; a one-line error beyond protobuf's 2 GiB limit."""
    from google.protobuf.message import EncodeError

    try:
        return model.SerializeToString()
    except (ValueError, EncodeError) as exc:
        raise SubpruneError(f"cannot serialize the model ({proto_bytes(model):,} bytes): {_one_line(exc)}; "
                            f"write its weights as external data (--external-data)") from None


PROTO_LIMIT = 2**31 - 1
"""Bytes protobuf can serialize in one message: a larger model must keep its weights outside
(see :func:`is_huge`)."""

EXTERNAL_THRESHOLD = 1024
"""Initializers of at least this many bytes go to the external data file."""

_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                "external_data", "data_location")
"""The fields of a TensorProto that hold its data or say where it is."""


def is_huge(model: onnx.ModelProto) -> bool:
    """``model`` is beyond :data:`PROTO_LIMIT`: it cannot be serialized whole, so onnx's checker
    and onnxruntime read it from a file with external data (:func:`on_disk`)."""
    return proto_bytes(model) > PROTO_LIMIT


def proto_bytes(model: onnx.ModelProto) -> int:
    """Bytes ``model`` takes serialized, counted without serializing its initializers' raw data
    (protobuf cannot past :data:`PROTO_LIMIT`): that data by dims and element type, everything
    else by ``ByteSize``."""
    head = onnx.ModelProto()
    _copy_fields(model, head, ("graph",))
    _copy_fields(model.graph, head.graph, ("initializer",))
    return head.ByteSize() + sum(_tensor_bytes(tensor) for tensor in model.graph.initializer)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes ``tensor`` takes serialized as an initializer (an upper bound for raw data)."""
    if not tensor.HasField("raw_data"):
        return tensor.ByteSize() + 6
    meta = onnx.TensorProto()
    _copy_fields(tensor, meta, ("raw_data",))
    return meta.ByteSize() + 12 + _data_bytes(tensor)  # two tags and two lengths


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of ``tensor``'s values as raw data, from its dims and element type (sub-byte types
    counted a byte per value; not for strings)."""
    try:
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # an element type this onnx does not know
        size = 16
    return int(np.prod(tensor.dims, dtype=np.int64)) * size


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    """Copy every field set in protobuf message ``source`` into ``target`` (same type), but those
    named in ``skip`` (never read: ``ListFields`` would copy a tensor's raw data)."""
    from google.protobuf.message import Message

    for field in source.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        value = getattr(source, field.name)
        if isinstance(value, Message):
            if source.HasField(field.name):
                getattr(target, field.name).CopyFrom(value)
        elif hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif source.HasField(field.name):
            setattr(target, field.name, value)


def _skeleton(model: onnx.ModelProto, location: str) -> tuple[onnx.ModelProto, list[tuple[onnx.TensorProto, onnx.TensorProto]]]:
    """(skeleton, moved): a copy of ``model`` whose initializers of at least
    :data:`EXTERNAL_THRESHOLD` bytes (neither strings nor external already) are placeholders
    without data, stored externally in file ``location``; ``moved`` pairs each placeholder with
    the initializer of ``model`` it stands for. Offsets and lengths are set by
    :func:`_write_external`; onnx's shape inference needs neither."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, ("graph",))
    _copy_fields(model.graph, skeleton.graph, ("initializer",))
    moved = []
    for tensor in model.graph.initializer:
        placeholder = skeleton.graph.initializer.add()
        if (tensor.data_type == onnx.TensorProto.STRING or tensor.data_location == onnx.TensorProto.EXTERNAL
                or _data_bytes(tensor) < EXTERNAL_THRESHOLD):
            placeholder.CopyFrom(tensor)
            continue
        _copy_fields(tensor, placeholder, _DATA_FIELDS)
        placeholder.data_location = onnx.TensorProto.EXTERNAL
        entry = placeholder.external_data.add()
        entry.key, entry.value = "location", location
        moved.append((placeholder, tensor))
    return skeleton, moved


def _write_external(moved: list[tuple[onnx.TensorProto, onnx.TensorProto]], write: Callable[[bytes], object]) -> None:
    """Pass the raw bytes of each moved initializer (see :func:`_skeleton`) to ``write``, one
    after the other from offset 0, each at a 64-byte aligned offset (zeros between), and give
    its placeholder that offset and length."""
    offset = 0
    for placeholder, tensor in moved:
        raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
        padding = -offset % 64
        write(bytes(padding))
        write(raw)
        for key, value in (("offset", offset + padding), ("length", len(raw))):
            entry = placeholder.external_data.add()
            entry.key, entry.value = key, str(value)
        offset += padding + len(raw)


def external_data_path(output: str | os.PathLike) -> Path:
    """Where the weights of a model written to ``output`` with external data go: beside it,
    named after it (``model.onnx`` -> ``model.onnx.data``)."""
    output = Path(output)
    return output.with_name(output.name + ".data")


def needs_external_data(model: onnx.ModelProto, external: list[str], asked: bool) -> bool:
    """The output keeps its weights in an external data file: when asked, when the input had
    one (``external``: its files), or when the model is beyond protobuf's limit."""
    return asked or bool(external) or is_huge(model)


def split_external_data(model: onnx.ModelProto, location: str) -> tuple[bytes, bytearray]:
    """(model bytes, data bytes): ``model`` with every initializer of at least
    :data:`EXTERNAL_THRESHOLD` bytes moved to one external data file named ``location`` (a
    file name, beside the model), each tensor at a 64-byte aligned offset. ``model`` is not
    changed, nor copied whole."""
    skeleton, moved = _skeleton(model, location)
    data = bytearray()
    _write_external(moved, data.extend)
    return model_bytes(skeleton), data


@contextlib.contextmanager
def on_disk(model: onnx.ModelProto) -> Iterator[Path]:
    """``model`` written into a new temporary folder with its weights in an external data file
    beside it (as :func:`split_external_data` lays them out), so also a model beyond
    :data:`PROTO_LIMIT`: yields the model file's path; the folder is removed on exit."""
    with tempfile.TemporaryDirectory(prefix="onnx-subprune-") as folder:
        path = Path(folder) / "model.onnx"
        data = external_data_path(path)
        skeleton, moved = _skeleton(model, data.name)
        with open(data, "wb") as handle:
            _write_external(moved, handle.write)
        path.write_bytes(model_bytes(skeleton))
        yield path


def check_onnx(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model`` on ``model``; beyond :data:`PROTO_LIMIT`, on a copy written
    :func:`on_disk` (the path-based checker)."""
    if not is_huge(model):
        onnx.checker.check_model(model)
        return
    with on_disk(model) as path:
        onnx.checker.check_model(path)


def import_graph(model: onnx.ModelProto, values: bool = False) -> gs.Graph:
    """Shape-infer ``model`` (nodes named by :func:`name_nodes`; ``values``: see
    :func:`infer_shapes`) and import it. The inferred shapes are lent to ``model`` for the
    import, so that its weights are not copied."""
    info = shape_info(model, values)
    named = name_nodes(model)
    if named is not model:  # a copy of our own
        return gs.import_onnx(_attach(named, info))
    saved = _attach(onnx.ModelProto(), model)
    try:
        return gs.import_onnx(_attach(model, info))
    finally:
        _attach(model, saved)


def proto_attrs(node: onnx.NodeProto) -> dict:
    """A NodeProto's attributes as a dict of Python values (as ``gs.Node.attrs`` has them)."""
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def static_dim(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    """The size a declared dim fixes, or None when it is dynamic: symbolic, unset, or a value of
    0 or -1 (as some exporters write a dynamic dim)."""
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def sample_axis(dims: list[int | None], per_sample: tuple[int, ...]) -> int | None:
    """The axis of a model input declared ``dims`` (None: dynamic) that holds the samples of
    arrays shaped (n, *per_sample): calibration data stacks samples on its first axis, and an
    input may keep them elsewhere (a recurrent state [2, batch, 128]). The first axis whose
    removal leaves a shape that ``per_sample`` fits, a dynamic axis before a static one; None
    when no axis fits (or ``dims`` is a scalar's)."""
    fits = [axis for axis in range(len(dims))
            if len(per_sample) == len(dims) - 1
            and all(want is None or want == got for want, got in zip(dims[:axis] + dims[axis + 1:], per_sample))]
    dynamic = [axis for axis in fits if dims[axis] is None]
    return (dynamic or fits or [None])[0]


def pin_input_dims(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose dynamic input dims take the sizes of the arrays in ``feeds``
    (first axis = samples; the input's sample axis, :func:`sample_axis`, is pinned to 1), so
    that MACs are counted at the size the model runs at; ``model`` itself when no input has a
    dynamic dim besides its sample axis."""
    pins = {}
    for value in model.graph.input:
        if value.name not in feeds:
            continue
        dims = [static_dim(dim) for dim in value.type.tensor_type.shape.dim]
        per_sample = feeds[value.name].shape[1:]
        axis = sample_axis(dims, per_sample)
        if axis is None:
            continue
        sizes = [*per_sample[:axis], 1, *per_sample[axis:]]
        pins[value.name] = {i: int(size) for i, (dim, size) in enumerate(zip(dims, sizes)) if dim is None and i != axis}
    if not any(pins.values()):
        return model
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for value in pinned.graph.input:
        for axis, size in pins.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_value = size
    return pinned


def infer_shapes(model: onnx.ModelProto, values: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` with inferred shapes, or ``model`` as it is where onnx's shape
    inference fails on it (custom domains, ops newer than the installed onnx). ``values``: also
    propagate the values of small shape computations (Shape -> Gather -> Concat -> Reshape, as
    exporters write a reshape into attention heads), so that more dims are known; plain
    inference where that fails. Models beyond :data:`PROTO_LIMIT` too (see :func:`_inferred`)."""
    info = shape_info(model, values)
    if info is model:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return _attach(copy, info)


def infer_shapes_in_place(model: onnx.ModelProto, values: bool = False) -> onnx.ModelProto:
    """``model`` itself with its shapes inferred (as :func:`infer_shapes`, without a copy)."""
    return _attach(model, shape_info(model, values))


def shape_info(model: onnx.ModelProto, values: bool = False) -> onnx.ModelProto:
    """What onnx's shape inference says of ``model`` (``values``: see :func:`infer_shapes`):
    its value infos, graph inputs and outputs, and initializers whose large ones are
    placeholders with their dims but no data (:func:`_skeleton`); ``model`` itself where
    inference fails. For reading shapes and types without copying the weights."""
    for options in ({"data_prop": True},) * values + ({},):
        try:
            return _inferred(model, **options)
        except Exception:
            pass
    return model


def _attach(model: onnx.ModelProto, info: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, changed in place: its value infos and graph outputs replaced by ``info``'s."""
    if info is not model:
        del model.graph.value_info[:]
        model.graph.value_info.extend(info.graph.value_info)
        del model.graph.output[:]
        model.graph.output.extend(info.graph.output)
    return model


def _inferred(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` (raising as it does) of ``model``'s
    :func:`_skeleton`: its large initializers are placeholders without data in the result.
    Shape inference reads no large initializer's values (shapes, axes and pads are small), and
    the weights are then never serialized: protobuf cannot beyond :data:`PROTO_LIMIT`, and
    below it each call would copy them four times (serialized, parsed by onnx, serialized
    back, parsed again)."""
    skeleton, _ = _skeleton(model, "weights.data")  # a location that is never read
    return onnx.shape_inference.infer_shapes(skeleton, **options)


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model analysis and rewrite work on: every node named (uniquely), nodes no graph output
    needs removed, constant layout ops folded. The computation is unchanged."""
    return fold_constants(drop_dead_nodes(name_nodes(model)))


def drop_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the nodes whose outputs no graph output needs (the rewrite's cleanup
    would drop them and their weights, so the size model must not count them); ``model`` itself
    when every node is needed."""
    needed = {out.name for out in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(subgraph_reads([node]))
    if len(kept) == len(model.graph.node):
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(reversed(kept))
    return result


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose nameless nodes carry the names :func:`import_graph` gives, and
    whose nodes have unique names: a name given to several nodes stays with the first, the
    others get ``<name>_<index>`` (analysis, size model and rewrite refer to nodes by name)."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    return _name_in_place(named)


def _name_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, its nodes named as :func:`name_nodes` says."""
    taken = {node.name for node in model.graph.node}
    seen = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"{node.name or node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
        seen.add(node.name)
    return model


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
    read = {name for node in kept for name in node.input} | outputs | subgraph_reads(kept)
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


def subgraph_reads(nodes) -> set[str]:
    """Names read by the subgraphs (If/Loop/Scan bodies) of ``nodes``, which may use outer values."""
    names = set()
    for node in nodes:
        for attr in node.attribute:
            for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= {name for inner in graph.node for name in inner.input}
                names |= subgraph_reads(graph.node)
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

    The tensor is changed in place when ``node`` is its only reader, at this input only (names
    are kept); a shared constant (also one the node reads at two inputs), or one behind an
    Identity, is left alone and the node gets a fresh initializer.
    """
    tensor = node.inputs[index]
    readers = [user for user in tensor.outputs if user is not node]
    once = sum(t.name == tensor.name for t in node.inputs) == 1
    if not readers and once and not _is_graph_output(graph, tensor):
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
