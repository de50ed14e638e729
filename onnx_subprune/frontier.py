"""Capture that runs each calibration sample through each model about once (seq and asym).

Groups are pruned one after the other, and group i's statistics need its consumers' inputs in
the model pruned by the groups before it. A tensor that descends from no producer of group i or
of a later group is *final* at step i: no later plan changes it. A :class:`Frontier` keeps the
final tensors that nodes still to be computed read (for every batch, in a :class:`Cache`) and
runs only the part of the model between them and the tensors asked for. On a chain each layer
is then computed twice in the pruned model (once before its group is pruned, once after) and
once in the original, instead of once per group.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Hashable, Iterable, Sequence

import numpy as np
import onnx
from onnx import helper

from . import runtime
from .errors import InternalError
from .graph import shape_info, subgraph_reads
from .rewrite import rewrite_part
from .types import GroupPlan

Key = Hashable
"""Names one batch of samples: the same batches are fed at every step."""


class Cache:
    """Per-batch arrays of named tensors: in memory up to ``budget`` bytes in all, then each
    array in its own .npy file of a temporary directory, memory-mapped when read. The directory
    is removed by :meth:`close` (use the cache as a context manager)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.in_memory = 0
        self.peak = 0
        self._arrays: dict[str, dict[Key, np.ndarray]] = defaultdict(dict)
        self._files: dict[str, dict[Key, Path]] = defaultdict(dict)
        self._folder: tempfile.TemporaryDirectory | None = None
        self._written = 0

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def put(self, name: str, key: Key, array: np.ndarray) -> None:
        if self.in_memory + array.nbytes <= self.budget:
            self._arrays[name][key] = array
            self.in_memory += array.nbytes
            self.peak = max(self.peak, self.in_memory)
            return
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="onnx-subprune-cache-")
        self._written += 1
        path = Path(self._folder.name) / f"{self._written}.npy"
        np.save(path, np.ascontiguousarray(array))
        self._files[name][key] = path

    def get(self, name: str, key: Key) -> np.ndarray:
        if key in self._arrays.get(name, {}):
            return self._arrays[name][key]
        return np.load(self._files[name][key], mmap_mode="r")

    def drop(self, name: str) -> None:
        self.in_memory -= sum(a.nbytes for a in self._arrays.pop(name, {}).values())
        for path in self._files.pop(name, {}).values():
            path.unlink(missing_ok=True)

    @property
    def spilled(self) -> bool:
        """Whether any array went to disk."""
        return self._folder is not None

    def close(self) -> None:
        self._arrays.clear()
        self._files.clear()
        self.in_memory = 0
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


class Wiring:
    """Who makes and who reads every tensor of a model's main graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {init.name for init in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
        self.inputs = {inp.name: inp for inp in graph.input if inp.name not in self.initializers}
        self.made_by: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.made_by[name] = index
        known = self.made_by.keys() | self.inputs.keys() | self.initializers
        self.reads: list[set[str]] = [
            {name for name in [*node.input, *subgraph_reads([node])] if name in known} for node in self.nodes
        ]
        self.readers: dict[str, list[int]] = defaultdict(list)
        for index, names in enumerate(self.reads):
            for name in names:
                self.readers[name].append(index)

    def outputs(self, index: int) -> list[str]:
        return [name for name in self.nodes[index].output if name]

    def volatile(self, producers: Iterable[str]) -> set[str]:
        """Tensors that are not kept once computed: those descending from the nodes named
        ``producers`` (a plan changes them), and those that are neither data (computed from a
        graph input through something other than a shape) nor the output of Shape / Size:
        constants, and shape computations, whose constant pieces a plan may renumber (the
        head count of a Reshape). Those are cheap and computed again wherever needed."""
        named = set(producers)
        changing = {name for i, node in enumerate(self.nodes) if node.name in named for name in self.outputs(i)}
        data, sizes = set(self.inputs), set()
        for index, names in enumerate(self.reads):  # nodes are in topological order
            outs = self.outputs(index)
            if names & changing:
                changing.update(outs)
            if names & data:
                (sizes if self.nodes[index].op_type in ("Shape", "Size") else data).update(outs)
        return changing | (self.made_by.keys() - data - sizes)


class Frontier:
    """One model's tensors for a sequence of steps; the model may change between steps (a
    plan prunes it), but only in nodes that descend from the producers named as changing.

    Use: :meth:`step` for each group (the model now, the tensors wanted, the producers of this
    and every later group), then call the frontier on every batch (``frontier(key, feed,
    names)``, as :func:`calibrate.capture_stats` does) and :meth:`settle`.
    """

    def __init__(self, cache: Cache, tag: str, providers: list[str], fixed_batch: int | None):
        self.cache, self.tag, self.providers, self.fixed = cache, tag, providers, fixed_batch
        self.final: set[str] = set()
        self.stored: dict[str, int] = {}  # name -> onnx element type
        self.types: dict[str, int] = {}
        self.infos: dict[str, onnx.ValueInfoProto] = {}  # inferred in the unpruned model
        self._session = None
        self._wiring: tuple[onnx.ModelProto, Wiring] | None = None  # of the model the steps run
        self._fed: list[str] = []
        self._loaded: list[str] = []
        self._kept: list[str] = []
        self._served: list[str] = []
        self._evict: set[str] = set()
        self._dtypes: dict[str, np.dtype] = {}

    def step(self, model: onnx.ModelProto, wanted: Sequence[str], changing: Iterable[str],
             later: Iterable[str] = (), plans: Sequence[GroupPlan] = ()) -> None:
        """Prepare the run that gives ``wanted`` in ``model`` pruned by ``plans``; ``changing``:
        names of the producer nodes that later plans (and this step's) will prune; ``later``:
        tensors later steps will want (kept when this run computes them final). Only the part
        of ``model`` that the run needs is pruned (:func:`rewrite.rewrite_part`), so a step
        costs the size of that part, not of the model."""
        if self._wiring is None or self._wiring[0] is not model:  # the same model at every step
            self._wiring = (model, Wiring(model))
        wiring = self._wiring[1]
        volatile = wiring.volatile(changing)
        nodes, fed, loaded, served = self._needed(wiring, wanted)
        final = self.final | {name for i in nodes for name in wiring.outputs(i) if name not in volatile}

        def done(index: int) -> bool:
            return all(name in final for name in wiring.outputs(index))

        wanted_later = set(later)

        def read_later(name: str) -> bool:
            return name in wanted_later or any(not done(reader) for reader in wiring.readers.get(name, ()))

        kept = [name for i in sorted(nodes) for name in wiring.outputs(i)
                if name in final and name not in self.stored and read_later(name)]
        self._evict = {name for name in self.stored if not read_later(name)}
        self.final = final
        self._types(model, [*wanted, *kept])
        outputs = [name for name in dict.fromkeys([*wanted, *kept]) if name not in served]
        self._session = None
        if outputs:
            part = self._submodel(model, wiring, nodes, fed, loaded, outputs, shaped=bool(plans))
            if plans:
                part = rewrite_part(part, plans)
                for value in [*part.graph.input, *part.graph.output]:  # kept and wanted: pruned channels
                    if value.name in loaded or value.name in outputs:
                        value.type.tensor_type.ClearField("shape")
            self._session = runtime.session(part, self.providers)
        self._fed, self._loaded, self._kept, self._served = fed, loaded, kept, served

    def _needed(self, wiring: Wiring, wanted: Sequence[str]):
        """The nodes to run for ``wanted``; the graph inputs and the kept tensors they read; the
        wanted tensors that are kept already (served from the cache)."""
        served = [name for name in dict.fromkeys(wanted) if name in self.stored]
        nodes, fed, hits, seen = set(), [], set(), set()
        stack = [name for name in wanted if name not in self.stored]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.stored:
                hits.add(name)
            elif name in wiring.inputs:
                fed.append(name)
            elif name in wiring.made_by:
                index = wiring.made_by[name]
                nodes.add(index)
                stack.extend(wiring.reads[index])
            elif name not in wiring.initializers:
                raise InternalError(f"tensor {name!r} is neither computed, fed nor constant in the model")
        return nodes, sorted(fed), sorted(hits), served

    def _types(self, model: onnx.ModelProto, names: Sequence[str]) -> None:
        """Learn the element types of ``names`` (shape inference, once while names are new)."""
        if all(name in self.types for name in names):
            return
        inferred = shape_info(model).graph
        for info in [*inferred.value_info, *inferred.output, *inferred.input]:
            if info.type.HasField("tensor_type"):
                self.types.setdefault(info.name, info.type.tensor_type.elem_type)
                self.infos.setdefault(info.name, info)
        for name in names:  # what inference could not tell is taken as float
            self.types.setdefault(name, onnx.TensorProto.FLOAT)

    def _submodel(self, model: onnx.ModelProto, wiring: Wiring, nodes: set[int], fed: list[str],
                  loaded: list[str], outputs: list[str], shaped: bool = False) -> onnx.ModelProto:
        """The part of ``model`` from the fed and kept tensors to ``outputs``; ``shaped``: the
        kept tensors declared with their shapes in ``model`` (when known), as the rewrite of
        the part wants them."""
        reads = set().union(*(wiring.reads[i] for i in nodes)) if nodes else set()
        inputs = [wiring.inputs[name] for name in fed]
        inputs += [self.infos[name] if shaped and name in self.infos
                   else helper.make_tensor_value_info(name, self.stored[name], None) for name in loaded]
        graph = helper.make_graph(
            [wiring.nodes[i] for i in sorted(nodes)], f"{model.graph.name}-part",
            inputs,
            [helper.make_tensor_value_info(name, self.types[name], None) for name in outputs],
            initializer=[init for init in model.graph.initializer if init.name in reads],
            sparse_initializer=[s for s in model.graph.sparse_initializer if s.values.name in reads],
        )
        part = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        part.functions.extend(model.functions)
        return part

    def __call__(self, key: Key, feed: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Tensors ``names`` (wanted at :meth:`step`) for the batch ``key`` whose graph inputs
        are ``feed`` (first axis = samples); the batch's frontier tensors are kept."""
        samples = len(next(iter(feed.values())))
        padded = self.fixed is not None and samples < self.fixed
        values: dict[str, np.ndarray] = {}
        if self._session is not None:
            inputs = {name: runtime.pad(feed[name], self.fixed) if padded else feed[name] for name in self._fed}
            inputs.update({name: self.cache.get(self._name(name), key) for name in self._loaded})
            outputs = [o.name for o in self._session.get_outputs()]
            values = runtime.run(self._session, inputs, outputs)
        for name in self._kept:
            self.cache.put(self._name(name), key, values[name])
            self._dtypes[name] = values[name].dtype
        values.update({name: self.cache.get(self._name(name), key) for name in self._served})
        return {name: runtime.real_rows(values[name], samples, self.fixed) if padded else values[name]
                for name in names}

    def settle(self) -> None:
        """End the step: keep this step's new frontier tensors, drop those nothing reads now."""
        for name in self._kept:
            self.stored[name] = helper.np_dtype_to_tensor_dtype(self._dtypes[name])
        for name in self._evict:
            self.cache.drop(self._name(name))
            self.stored.pop(name, None)
        self._session, self._kept, self._evict = None, [], set()

    def _name(self, name: str) -> str:
        return f"{self.tag}/{name}"
