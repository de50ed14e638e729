"""Pinned input shapes (``--input-shape NAME:1x3x224x224``) and the model's declared interface.

Pinning makes the symbolic dims of an input static before analysis, so that MACs, size targets
and the calibration check see the size the model will run at; the written model keeps the
original's inputs and outputs (:func:`keep_interface`). The first dim is the sample axis:
given, it is checked against a static batch but left as it is (calibration runs in batches and
MACs are counted per sample).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import onnx

from .errors import SubpruneError, quote
from .graph import infer_shapes, static_dim

InputShapes = tuple[tuple[str, tuple[int, ...]], ...]
"""Pinned shapes as :class:`config.PruneConfig` holds them: (input name, dims) pairs."""


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"NAME:1x3x224x224"`` -> ``("NAME", (1, 3, 224, 224))``; the name may contain colons
    (the last one separates the dims). A one-line :class:`SubpruneError` when malformed."""
    name, sep, dims = text.rpartition(":")
    parts = dims.lower().replace(",", "x").split("x")
    if not sep or not name or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise SubpruneError(f"input shape {quote(text)} is not NAME:DIMS with positive integer dims "
                            f"separated by x (e.g. input:1x3x224x224)")
    return name, tuple(int(p) for p in parts)


def pin_shapes(model: onnx.ModelProto, shapes: Iterable[tuple[str, Iterable[int]]]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``shapes`` have the given dims past the first
    (sample) axis, shapes re-inferred; ``model`` itself when ``shapes`` is empty.

    A one-line error for an input the model does not have, a wrong rank, a dim that conflicts
    with a static one (the sample axis included) or a name given twice.
    """
    shapes = [(name, tuple(int(d) for d in dims)) for name, dims in shapes]
    if not shapes:
        return model
    inputs = {value.name: value for value in model.graph.input}
    constants = {init.name for init in model.graph.initializer}
    seen = set()
    for name, dims in shapes:
        if name in seen:
            raise SubpruneError(f"input shape: input {quote(name)} is given twice")
        seen.add(name)
        value = inputs.get(name)
        if value is None or name in constants:
            names = ", ".join(quote(n) for n in inputs if n not in constants)
            raise SubpruneError(f"input shape: the model has no input {quote(name)} (inputs: {names})")
        declared = value.type.tensor_type.shape.dim
        if len(declared) != len(dims):
            raise SubpruneError(f"input shape {_text(dims)} for input {quote(name)}: rank {len(dims)}, the model "
                                f"declares rank {len(declared)} ({_text([static_dim(d) for d in declared])})")
        for axis, (dim, want) in enumerate(zip(declared, dims)):
            fixed = static_dim(dim)
            if fixed is not None and fixed != want:
                raise SubpruneError(f"input shape {_text(dims)} for input {quote(name)}: dim {axis} is {want}, the "
                                    f"model fixes it at {fixed} ({_text([static_dim(d) for d in declared])})")
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    wanted = dict(shapes)
    for value in pinned.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim if value.name in wanted else ()):
            if axis:
                dim.dim_value = wanted[value.name][axis]
    del pinned.graph.value_info[:]  # inferred from the symbolic dims: infer again from the pinned ones
    return infer_shapes(pinned)


def check_pinned(feeds: Mapping[str, np.ndarray], shapes: InputShapes, source: str) -> None:
    """Every array of ``feeds`` has the pinned dims past its sample axis (one-line error)."""
    for name, dims in shapes:
        array = feeds.get(name)
        if array is not None and tuple(array.shape[1:]) != tuple(dims[1:]):
            raise SubpruneError(f"{source}: input {quote(name)} has samples of shape {_text(array.shape[1:])}, the "
                                f"input shape pins {_text(dims[1:])}")


def keep_interface(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the declared types of ``original``'s graph inputs and outputs (same names):
    their symbolic dims keep their names, none gains a made-up one (``unk__0``) or a pinned
    size. ``model`` itself when nothing differs; else a copy with its inner shapes re-inferred."""
    declared = {value.name: value.type for value in [*original.graph.input, *original.graph.output]}
    values = [*model.graph.input, *model.graph.output]
    if all(v.name not in declared or v.type == declared[v.name] for v in values):
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    result = infer_shapes(_declare(result, declared))
    return _declare(result, declared)


def _declare(model: onnx.ModelProto, declared: Mapping[str, onnx.TypeProto]) -> onnx.ModelProto:
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in declared:
            value.type.CopyFrom(declared[value.name])
    return model


def open_dims_note(layers: list[str]) -> str:
    """The warning for MACs counted with symbolic dims left open (each counted as 1)."""
    named = ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
    return (f"warning: MACs count symbolic dims as 1 in {len(layers)} layers ({named}): pin the input's "
            f"dims (input shape NAME:DIMS) to count them at the size the model runs at")


def _text(dims: Iterable[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims) or "scalar"
