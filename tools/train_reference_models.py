#!/usr/bin/env python3
"""Train and export the small ONNX reference models used by onnx-subprune.

Data: scikit-learn's bundled handwritten digits (load_digits, 1797 8x8 images,
no network access needed), scaled to [0, 1], bilinearly upsampled to 28x28 and
normalized with a scalar mean/std computed on the train split.  The
normalization is baked into the data files, not into the models.

Outputs (in --out):
    lenet5.onnx, vgg_bn.onnx, mlp.onnx, resnet_small.onnx
    digits_calib.npz ("input": float32 [512,1,28,28]), digits_calib.npy
    digits_test.npz  ("input": float32 [500,1,28,28], "label": int64 [500])
    README.md        (table of models, params and test accuracy)

Every model has input "input" [N,1,28,28] float32 (dynamic batch axis "N")
and output "logits" [N,10].  BatchNormalization nodes are kept (not folded
into the convolutions) so that BN slicing can be tested.

Usage:
    python tools/train_reference_models.py --out models/

Requirements: torch (CPU build is fine), scikit-learn, onnx, onnxruntime, numpy.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OPSET = 17
NUM_CLASSES = 10
IMG = 28
TEST_SIZE = 500
SPLIT_SEED = 0
CALIB_SIZE = 512


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------

def set_determinism(seed: int, threads: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:  # pragma: no cover - very old torch
        pass
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def load_data():
    """Return dict with normalized train/test tensors and the mean/std used."""
    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0          # [1797, 8, 8] in [0,1]
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)

    xt = torch.from_numpy(x).unsqueeze(1)                 # [N,1,8,8]
    with torch.no_grad():
        xt = F.interpolate(xt, size=(IMG, IMG), mode="bilinear",
                           align_corners=False)
    xt = xt.numpy().astype(np.float32)

    x_train, x_test = xt[train_idx], xt[test_idx]
    y_train, y_test = y[train_idx], y[test_idx]
    mean = float(x_train.mean())
    std = float(x_train.std())
    x_train = ((x_train - mean) / std).astype(np.float32)
    x_test = ((x_test - mean) / std).astype(np.float32)
    return {
        "x_train": x_train, "y_train": y_train,
        "x_test": x_test, "y_test": y_test,
        "mean": mean, "std": std,
        "background": (0.0 - mean) / std,
    }


def random_shift(xb: torch.Tensor, max_shift: int, fill: float,
                 gen: torch.Generator) -> torch.Tensor:
    """Shift every image by an independent random (dy, dx) in [-s, s]."""
    if max_shift <= 0:
        return xb
    b, c, h, w = xb.shape
    s = max_shift
    padded = F.pad(xb, (s, s, s, s), value=fill)
    dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None, :]          # [B,H]
    cols = dx[:, None] + torch.arange(w)[None, :]          # [B,W]
    bi = torch.arange(b)[:, None, None]
    out = padded[:, 0][bi, rows[:, :, None], cols[:, None, :]]  # [B,H,W]
    return out.unsqueeze(1).contiguous()


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

class LeNet5(nn.Module):
    """LeNet-5 variant: 28 -conv3-> 26 -pool-> 13 -conv3-> 11 -pool-> 5."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, NUM_CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGBN(nn.Module):
    """Small VGG with BN: 32,32,M,64,64,M,128,M -> fc256 -> dropout -> fc10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(128 * 3 * 3, 256), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(256, NUM_CLASSES),
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class MLP(nn.Module):
    """784 -> 256 -> 128 -> 10."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IMG * IMG, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, NUM_CLASSES)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout))
        else:
            self.shortcut = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNetSmall(nn.Module):
    """stem conv16 -> block16 x2 -> block32 (stride 2, 1x1 shortcut) ->
    block32 -> global avg pool -> fc10."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2),
                                    BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


# name, class, epochs, lr, weight_decay, architecture description, min acc
SPECS = [
    ("lenet5", LeNet5, 40, 2e-3, 0.0,
     "LeNet-5: conv3x3 1->6, ReLU, maxpool2, conv3x3 6->16, ReLU, maxpool2, "
     "flatten 400, fc 120, ReLU, fc 84, ReLU, fc 10", 0.97),
    ("vgg_bn", VGGBN, 20, 2e-3, 1e-4,
     "VGG-style with BatchNorm: [conv32 BN ReLU]x2, maxpool, "
     "[conv64 BN ReLU]x2, maxpool, conv128 BN ReLU, maxpool, flatten 1152, "
     "fc 256, ReLU, dropout (absent from the eval-mode ONNX), fc 10", 0.98),
    ("mlp", MLP, 40, 1e-3, 1e-4,
     "MLP: flatten 784, fc 256, ReLU, fc 128, ReLU, fc 10", 0.95),
    ("resnet_small", ResNetSmall, 20, 2e-3, 1e-4,
     "ResNet-style with BatchNorm: stem conv16 BN ReLU, 2 basic blocks (16), "
     "basic block 16->32 stride 2 with 1x1 conv+BN shortcut, basic block "
     "(32), global average pool, fc 10", 0.97),
]


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def train_model(model: nn.Module, data: dict, epochs: int, lr: float,
                wd: float, seed: int, batch_size: int, max_shift: int,
                log=print) -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"])
    n = len(y)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.2)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, n, batch_size):
            bi = perm[i:i + batch_size]
            xb = random_shift(x[bi], max_shift, data["background"], gen)
            yb = y[bi]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(bi)
            correct += int((out.argmax(1) == yb).sum())
            total += len(bi)
        if epoch == epochs - 1 or (epoch + 1) % 10 == 0:
            log(f"    epoch {epoch + 1:3d}/{epochs}: loss "
                f"{loss_sum / total:.4f}, train acc {correct / total:.4f}")
    model.eval()
    return model


# --------------------------------------------------------------------------
# Export and checks
# --------------------------------------------------------------------------

def materialize_initializer_identities(model: onnx.ModelProto) -> None:
    """The TorchScript exporter deduplicates equal initializers and wires the
    duplicates through Identity nodes.  Replace every Identity fed by an
    initializer with its own copy of the initializer so that each parameter
    is a plain initializer (simpler for graph surgery)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]]).copy()
            g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    # drop initializers that are no longer referenced
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (``/<op_type>_<index>`` where it has none), in place."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"/{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def export_onnx(model: nn.Module, path: str) -> onnx.ModelProto:
    model.eval()
    dummy = torch.zeros(2, 1, IMG, IMG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PRESERVE with the model in eval mode keeps BatchNormalization nodes
        # (training_mode=0); EVAL mode would fuse Conv+BN.
        torch.onnx.export(
            model, (dummy,), path,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    m = onnx.load(path)
    materialize_initializer_identities(m)
    name_nodes(m)
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return m


def run_onnx(path: str, x: np.ndarray, batch: int = 256) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    outs = [sess.run(["logits"], {"input": x[i:i + batch]})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs, 0)


def op_sequence(m: onnx.ModelProto) -> str:
    """Compact op-type sequence, collapsing consecutive repeats."""
    ops = [n.op_type for n in m.graph.node]
    out = []
    for op in ops:
        if out and out[-1][0] == op:
            out[-1][1] += 1
        else:
            out.append([op, 1])
    return " ".join(op if k == 1 else f"{op}x{k}" for op, k in out)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def write_readme(out_dir: str, rows: list, data: dict) -> None:
    lines = [
        "# Reference models",
        "",
        "Small ONNX models (opset 17) trained on scikit-learn's bundled "
        "handwritten digits (`sklearn.datasets.load_digits`), used as test "
        "fixtures and examples for onnx-subprune.",
        "",
        "Every model takes `input` float32 `[N,1,28,28]` (dynamic batch axis "
        "`N`) and returns `logits` `[N,10]`. BatchNormalization nodes are kept "
        "(not folded into the convolutions).",
        "",
        "| file | architecture | params | test accuracy |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| `{r['file']}` | {r['arch']} | {r['params']:,} | "
                     f"{100 * r['acc']:.2f}% |")
    lines += [
        "",
        "Test accuracy is measured on the exported ONNX files with "
        "onnxruntime (CPU) on the 500 test images.",
        "",
        "## Data files",
        "",
        "Images are scaled to [0,1] (divided by 16), bilinearly upsampled from "
        "8x8 to 28x28 (`align_corners=False`) and normalized as "
        f"`(x - {data['mean']:.6f}) / {data['std']:.6f}` (mean/std of the "
        "train split). The normalization is baked into the data files, not "
        "the models. Split: `train_test_split(test_size=500, random_state=0, "
        "stratify=labels)` giving 1297 train / 500 test images.",
        "",
        "| file | content |",
        "| --- | --- |",
        f"| `digits_calib.npz` | `input`: float32 [{CALIB_SIZE},1,28,28], the "
        "first 512 train images (unlabeled) |",
        "| `digits_calib.npy` | the same calibration array as a plain `.npy` |",
        "| `digits_test.npz` | `input`: float32 [500,1,28,28], `label`: int64 "
        "[500] |",
        "",
        "## Regenerate",
        "",
        "```",
        "python tools/train_reference_models.py --out models/",
        "```",
        "",
        "Needs torch (a CPU build is enough), scikit-learn, onnx, onnxruntime "
        "and numpy. Training is seeded and deterministic (single CPU thread "
        "by default; rerunning gives byte-identical files) and takes about a "
        "minute on CPU.",
        "",
    ]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models", help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 gives bitwise reproducibility)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-shift", type=int, default=2,
                    help="max random shift (pixels) for augmentation")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply every model's epoch count (for quick runs)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="train only these models (names: "
                         + ", ".join(s[0] for s in SPECS) + ")")
    ap.add_argument("--no-readme", action="store_true",
                    help="do not write README.md in --out")
    ap.add_argument("--no-accuracy-check", action="store_true",
                    help="do not fail when an accuracy target is missed")
    args = ap.parse_args(argv)

    t0 = time.time()
    set_determinism(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)

    data = load_data()
    print(f"data: train {data['x_train'].shape}, test {data['x_test'].shape}, "
          f"mean {data['mean']:.6f}, std {data['std']:.6f}")
    calib = np.ascontiguousarray(data["x_train"][:CALIB_SIZE], dtype=np.float32)
    np.savez(os.path.join(args.out, "digits_calib.npz"), input=calib)
    np.save(os.path.join(args.out, "digits_calib.npy"), calib)
    np.savez(os.path.join(args.out, "digits_test.npz"),
             input=np.ascontiguousarray(data["x_test"], dtype=np.float32),
             label=data["y_test"].astype(np.int64))

    rows, failures = [], []
    for i, (name, cls, epochs, lr, wd, arch, target) in enumerate(SPECS):
        if args.only and name not in args.only:
            continue
        ts = time.time()
        torch.manual_seed(args.seed + i)
        model = cls()
        n_params = sum(p.numel() for p in model.parameters())
        ep = max(1, int(round(epochs * args.epochs_scale)))
        print(f"[{name}] params {n_params:,}, epochs {ep}")
        train_model(model, data, ep, lr, wd, args.seed + 100 + i,
                    args.batch_size, args.max_shift)

        path = os.path.join(args.out, f"{name}.onnx")
        m = export_onnx(model, path)

        x_test = data["x_test"]
        with torch.no_grad():
            ref = model(torch.from_numpy(x_test)).numpy()
        got = run_onnx(path, x_test)
        diff = float(np.abs(ref - got).max())
        acc = float((got.argmax(1) == data["y_test"]).mean())
        n_bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
        print(f"[{name}] onnx ops: {op_sequence(m)}")
        print(f"[{name}] BatchNormalization nodes: {n_bn}, "
              f"max|torch-onnx| {diff:.2e}, time {time.time() - ts:.1f}s")
        print(f"[{name}] test accuracy (onnxruntime): {100 * acc:.2f}%")
        if diff >= 1e-4:
            failures.append(f"{name}: torch/onnx mismatch {diff:.2e}")
        if isinstance(model, (VGGBN, ResNetSmall)) and n_bn == 0:
            failures.append(f"{name}: BatchNormalization nodes were folded")
        if acc < target and not args.no_accuracy_check:
            failures.append(f"{name}: accuracy {acc:.4f} < target {target}")
        rows.append({"file": f"{name}.onnx", "arch": arch,
                     "params": n_params, "acc": acc})

    total = time.time() - t0
    if not args.no_readme and not args.only:
        write_readme(args.out, rows, data)
    print("summary:")
    for r in rows:
        print(f"  {r['file']:<20s} params {r['params']:>9,}  "
              f"test acc {100 * r['acc']:.2f}%")
    print(f"total time {total:.1f}s")
    if failures:
        for f in failures:
            print("FAILED:", f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
