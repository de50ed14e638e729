"""Shared test utilities: running models and masking channels in the original."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from click.testing import CliRunner

from onnx_subprune.cli import main
from onnx_subprune.ops import LAYERS
from onnx_subprune.types import ChannelGroup

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ARCH = MODELS / "arch"


def invoke(*args):
    """Run the CLI in-process; stdout and stderr are captured separately (click >= 8.2)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of ``model`` on ``feeds`` (CPU)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def masked(model: onnx.ModelProto, group: ChannelGroup, kept) -> onnx.ModelProto:
    """Copy of ``model`` whose consumers of ``group`` ignore the removed channels (weights zeroed)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {init.name: init for init in copy.graph.initializer}
    inits.update({n.output[0]: n.attribute[0].t for n in copy.graph.node if n.op_type == "Constant"})
    for consumer in group.consumers:
        layout = consumer.layout
        where = layout.positions()
        removed = where[(where >= 0) & ~np.isin(np.arange(group.channels), kept)]
        weight = numpy_helper.to_array(inits[consumer.weight]).copy()
        index = [slice(None)] * weight.ndim
        rows = LAYERS[consumer.op].row_block(consumer)  # weight entries per channel (unit)
        index[consumer.in_axis] = (removed[:, None] * rows + np.arange(rows)).ravel()
        weight[tuple(index)] = 0
        inits[consumer.weight].CopyFrom(numpy_helper.from_array(weight, inits[consumer.weight].name))
    return copy


def block_import(monkeypatch, module: str) -> None:
    """Make ``import module`` (and its submodules) fail with ImportError, as when not installed."""
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)


def random_feeds(model: onnx.ModelProto, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs; symbolic dims other than the first become 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in inp.type.tensor_type.shape.dim]
        dims[0] = samples
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def save_onnx(path: Path, model: onnx.ModelProto) -> Path:
    """Write ``model`` to ``path``; returns ``path``."""
    onnx.save(model, path)
    return path


def save_npz(path: Path, **arrays) -> Path:
    """Write ``arrays`` as an .npz at ``path``; returns ``path``."""
    np.savez(path, **arrays)
    return path


def save_bytes(path: Path, content: bytes) -> Path:
    """Write raw ``content`` to ``path``; returns ``path``."""
    path.write_bytes(content)
    return path
