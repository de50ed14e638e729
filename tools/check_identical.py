"""Prune every reference and test architecture with several configurations and record the
sha256 of each pruned model, so a refactor can show that its output is byte-identical.

    python tools/check_identical.py save  before.json   # on the old code
    python tools/check_identical.py check before.json   # on the new code: exit 1 on a difference

Configurations: each method at keep 0.5, and asym under a 0.5 params target with sensitivity
and with uniform allocation. 64 calibration samples, CPU, seed 0.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from onnx_subprune.config import PruneConfig  # noqa: E402
from onnx_subprune.graph import load_model  # noqa: E402
from onnx_subprune.pipeline import prune  # noqa: E402

MODELS = {
    "lenet5": ("models/lenet5.onnx", "models/arch/digits_calib_small.npz"),
    "mlp": ("models/mlp.onnx", "models/arch/digits_calib_small.npz"),
    "vgg_bn": ("models/vgg_bn.onnx", "models/arch/digits_calib_small.npz"),
    "resnet_small": ("models/resnet_small.onnx", "models/arch/digits_calib_small.npz"),
    **{
        name: (f"models/arch/{name}.onnx", "models/arch/digits_calib_small.npz")
        for name in ("resnet_mixed", "resnet_mixed_const", "mobilenetv2", "mobilenetv2_const",
                     "mobilenetv3_se", "mobilenetv3_se_const", "csp_split_concat",
                     "csp_split_concat_const", "densenet_block", "densenet_block_const")
    },
    "bert_layer": ("models/arch/bert_layer.onnx", "models/arch/bert_calib.npz"),
    "bert_layer_const": ("models/arch/bert_layer_const.onnx", "models/arch/bert_calib.npz"),
    "nhwc_cnn": ("models/arch/nhwc_cnn.onnx", "models/arch/nhwc_calib.npz"),
}

CONFIGS = {
    **{method: dict(method=method, keep=0.5)
       for method in ("asym", "seq", "layer", "weight-norm", "activation-norm", "random")},
    "target-sensitivity": dict(target_params=0.5),
    "target-uniform": dict(target_params=0.5, allocation="uniform"),
}


def digests() -> dict[str, str]:
    """'model/config' -> sha256 of the pruned model's serialization."""
    result = {}
    for name, (model_path, calib_path) in MODELS.items():
        model = load_model(ROOT / model_path)
        calib = dict(np.load(ROOT / calib_path))
        feeds = {model.graph.input[0].name: next(iter(calib.values()))}
        for label, options in CONFIGS.items():
            config = PruneConfig(device="cpu", seed=0, **options)
            pruned = prune(model, feeds, config).model
            result[f"{name}/{label}"] = hashlib.sha256(pruned.SerializeToString()).hexdigest()
            print(f"{name}/{label}: {result[f'{name}/{label}'][:12]}", file=sys.stderr)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, path = argv
    current = digests()
    if mode == "save":
        Path(path).write_text(json.dumps(current, indent=1) + "\n")
        print(f"{len(current)} digests written to {path}")
        return 0
    saved = json.loads(Path(path).read_text())
    differ = sorted(key for key in saved if current.get(key) != saved[key])
    missing = sorted(set(current) ^ set(saved))
    for key in differ:
        print(f"DIFFERS: {key}")
    for key in missing:
        print(f"ONLY IN ONE RUN: {key}")
    print(f"{len(saved) - len(differ)} of {len(saved)} pruned models byte-identical")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
