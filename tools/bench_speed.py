"""Speed and memory of onnx-subprune on the digits models, and ORT latency of its output.

stages    For each model and calibration size (128, 512, 2048 by default), one fresh child
          process runs ``onnx-subprune prune MODEL --target-params 0.25 --method asym
          --device cpu --quiet --report R`` (allocation: --allocation, sensitivity by
          default, the CLI's default); reported: the report's wall time per stage
          (``seconds``: analyze, allocation, capture, select, rewrite, verify), the child's
          whole wall time (imports and file I/O included) and its peak RSS (ru_maxrss from
          os.wait4, bench_prune.run_measured). Calibration sets: the first N images of
          models/digits_calib.npz, grown past its 512 images by shifted copies
          (bench_prune.build_calibration_sets: np.roll by a random non-zero (dy, dx) in
          [-2, 2]^2, blank pixels shifted in, seeded, all distinct).
selector  The Gram-form greedy vs the naive lstsq greedy on random conv-shaped problems
          (bench_selector.bench_naive: block 9, N = d + 64, k = n/2; the naive run is stopped
          after --naive-timeout s and then reported as a lower bound), and the greedy + refit
          of a 512-channel 3x3 consumer (bench_selector.bench_large).
latency   For each model, prunes it (asym, --allocation uniform by default, seed 0, the
          128-image calibration subset of seed 0 as in bench_quality.py) at each params
          compression ratio (once per --round-to value: 1 and 8 by default, since ORT's
          blocked Conv kernels want channel counts that are multiples of 8), then times the
          original and every pruned model with onnxruntime CPU (--threads intra-op threads, sequential execution) on test images at batch 1 and
          64: --rounds rounds, each running every model --repeats times after 3 warm-up runs,
          models interleaved so load changes hit them alike; the median per model over all
          runs, and the speed-up original / pruned from the same process.

depth     Prune time against the depth of the model: plain chains of --depths 3x3 Conv + Relu
          layers (--chain-channels channels on --chain-size square inputs, 32 and 32 by default,
          random He weights, then global pooling and a Gemm), the test architectures of
          models/arch and, with --resnet50-samples, a ResNet-50-shaped model (resnet50_shaped:
          224x224, 53 Conv layers, random weights) on that many random inputs, and the --zoo
          models (real exports, tools/zoo.py) on their in-domain inputs; each pruned at
          keep 0.5 by layer, seq and asym (the ResNet: --resnet50-methods at its smallest sample
          count, asym at the others) in a fresh child process (peak RSS from os.wait4) on
          --depth-samples random inputs. Reported: the report's stage seconds divided by the
          seconds of one forward pass of the same inputs through the original (onnxruntime CPU,
          measured in this process, median of 3, right before and right after each prune:
          their mean; a prune under 10 s runs 3 times and the median run is kept), and a plot
          of seconds vs depth
          (docs/speed_depth.png).

Writes docs/results/speed_<section>.csv and .md and replaces the section's block in
docs/RESULTS.md.

Usage: python tools/bench_speed.py {stages,selector,latency,depth,all} [--models ...] [--samples ...]
           [--depths 8 16 32 64] [--resnet50-samples 32 512]
           [--ratios 2 4 8 16] [--naive-sizes 32 64 128] [--no-large] [--threads 1]
           [--out docs/results] [--results docs/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_prune import build_calibration_sets, cli_command, run_measured
from common import (
    CALIB, MODELS, ROOT, TEST, calibration_subset, cpu_model, environment, markdown_table, splice, write_csv,
)

STAGES = ("analyze", "allocation", "capture", "select", "rewrite", "verify")
ARCH = MODELS / "arch"


def machine_line() -> str:
    env = environment()
    import onnxruntime

    return (f"Machine: {env['cpus']} CPUs ({cpu_model()}), OPENBLAS_CORETYPE={env['openblas_coretype']}, "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, Python {env['python']}, "
            f"numpy {env['numpy']}, onnxruntime {onnxruntime.__version__}; load average at the end "
            f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min: other jobs share the machine, "
            f"so timings are noisy).{gpu_note()}")


def gpu_note() -> str:
    """' GPU: <name>.' where nvidia-smi answers, else ''."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return ""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return ""
    names = [n.strip() for n in names if n.strip()]
    return f" GPU: {', '.join(names)}." if names else ""


def command_line(section: str, args, flags: list[str]) -> str:
    parts = ["python tools/bench_speed.py", section]
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if isinstance(value, bool):
            if value:
                parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(flag + " " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def publish(section: str, args, text: str, rows: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"speed_{section}.csv", rows)
    (args.out / f"speed_{section}.md").write_text(text + "\n")
    if str(args.results) != "-":
        splice(args.results, f"speed {section}", text)
    print(text)


# --------------------------------------------------------------------------- stages


def cmd_stages(args) -> int:
    sizes = sorted(set(args.samples))
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        tmp = Path(tmp)
        paths = build_calibration_sets(sizes, tmp, args.seed, "background")
        for name in args.models:
            for size in sizes:
                report = tmp / f"{name}_{size}.json"
                command = cli_command() + [
                    "prune", str(MODELS / f"{name}.onnx"), "-o", str(tmp / f"{name}_{size}.onnx"),
                    "--calib", str(paths[size]), "--target-params", f"{1 / args.ratio:g}",
                    "--allocation", args.allocation, "--method", "asym", "--device", "cpu", "--quiet",
                    "--report", str(report),
                ]
                measures = []
                for repeat in range(args.repeats):
                    print(f"[stages] {name}, {size} samples, run {repeat + 1}/{args.repeats} ...",
                          file=sys.stderr, flush=True)
                    measure = run_measured(command, tmp, f"{name}_{size}_{repeat}")
                    if measure["returncode"] == 0:
                        measure["seconds"] = json.loads(report.read_text())["seconds"]
                    measures.append(measure)
                ok = [m for m in measures if m["returncode"] == 0]
                row = {"model": name, "samples": size, "repeats": args.repeats, "ok": len(ok)}
                if ok:
                    for stage in STAGES:
                        row[stage + "_s"] = statistics.median(m["seconds"].get(stage, 0.0) for m in ok)
                    row["stages_s"] = statistics.median(sum(m["seconds"].values()) for m in ok)
                    row["process_wall_s"] = statistics.median(m["wall_s"] for m in ok)
                    row["cpu_s"] = statistics.median(m["user_s"] + m["sys_s"] for m in ok)
                    row["peak_rss_mib"] = statistics.median(m["peak_rss_mib"] for m in ok)
                    row["error"] = ""
                else:
                    row["error"] = measures[0].get("stderr", "")[-300:]
                    print(f"[stages] FAILED: {row['error']}", file=sys.stderr)
                rows.append(row)
    total = time.perf_counter() - started
    table = []
    for row in rows:
        if not row["ok"]:
            table.append([row["model"], str(row["samples"])] + ["FAILED"] * (len(STAGES) + 5))
            continue
        base = next(r for r in rows if r["model"] == row["model"] and r["ok"])
        growth = 100 * (row["peak_rss_mib"] / base["peak_rss_mib"] - 1)
        table.append([row["model"], str(row["samples"])] + [f"{row[s + '_s']:.2f}" for s in STAGES] + [
            f"{row['stages_s']:.1f}", f"{row['process_wall_s']:.1f}", f"{row['cpu_s']:.1f}",
            f"{row['peak_rss_mib']:.0f}", f"{growth:+.0f}%" if row is not base else "-"])
    header = ["model", "calib samples"] + [f"{s} s" for s in STAGES] + [
        "stages total s", "process wall s", "process CPU s", "peak RSS MiB", "RSS vs smallest"]
    text = "\n".join([
        "### Pruning time per stage and peak memory",
        "",
        f"Reproduce: `{command_line('stages', args, ['--models', '--samples', '--ratio', '--allocation', '--repeats'])}`"
        f" (took {total:.0f} s).",
        f"`onnx-subprune prune MODEL --target-params {1 / args.ratio:g} --allocation {args.allocation} "
        f"--method asym --device cpu`, one fresh process per run, median of {args.repeats}; the stage "
        "columns are the report's `seconds`, the process columns include Python start-up, imports and "
        "file I/O. Calibration sets past 512 images are the shipped images plus shifted copies.",
        machine_line(),
        "",
        markdown_table(header, table, right=set(range(1, len(header)))),
        "",
    ])
    publish("stages", args, text, rows)
    return 0 if all(r["ok"] for r in rows) else 1


# --------------------------------------------------------------------------- depth

DEPTH_METHODS = ("layer", "seq", "asym")


def conv_chain(depth: int, channels: int = 16, size: int = 16, seed: int = 0):
    """``depth`` 3x3 Conv + Relu layers on an N x 3 x size x size input, then global average
    pooling and a Gemm to 10 outputs; random He-initialized weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, current, cin = [], [], "input", 3
    for i in range(depth):
        weight = (rng.standard_normal((channels, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        weights += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        current, cin = f"r{i}", channels
    fc = (rng.standard_normal((10, channels)) / np.sqrt(channels)).astype(np.float32)
    weights.append(numpy_helper.from_array(fc, "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [current], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, f"chain{depth}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def resnet50_shaped(seed: int = 0):
    """A model shaped like ResNet-50 (224x224 input, 7x7 stem and max pool, bottleneck stages
    of 3, 4, 6, 3 blocks of widths 64-512 with 4x expansion and projection shortcuts, global
    pooling, a 1000-way Gemm) with batch norms folded into Conv biases and random He weights:
    25.5M params, 4.1G MACs per image, 53 Conv layers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []

    def conv(x: str, cin: int, cout: int, kernel: int, stride: int, name: str, relu: bool = True) -> str:
        weight = (rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(2 / (kernel * kernel * cin))).astype(np.float32)
        weights.extend([numpy_helper.from_array(weight, f"{name}.w"),
                        numpy_helper.from_array((0.01 * rng.standard_normal(cout)).astype(np.float32), f"{name}.b")])
        pad = kernel // 2
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                      kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4))
        if not relu:
            return f"{name}.y"
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"], name=f"{name}.relu"))
        return f"{name}.r"

    x = conv("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool0"], name="pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool0", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            name, stride = f"s{stage}b{block}", 2 if block == 0 and stage > 0 else 1
            y = conv(x, cin, width, 1, 1, f"{name}.c1")
            y = conv(y, width, width, 3, stride, f"{name}.c2")
            y = conv(y, width, 4 * width, 1, 1, f"{name}.c3", relu=False)
            shortcut = conv(x, cin, 4 * width, 1, stride, f"{name}.down", relu=False) if block == 0 else x
            nodes += [helper.make_node("Add", [y, shortcut], [f"{name}.sum"], name=f"{name}.add"),
                      helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"], name=f"{name}.relu")]
            x, cin = f"{name}.out", 4 * width
    fc = (rng.standard_normal((1000, cin)) / np.sqrt(cin)).astype(np.float32)
    weights += [numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "resnet50_shaped",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def forward_seconds(path: Path, feeds: dict, batch: int = 64, device: str = "cpu") -> float:
    """Median of 3 runs of every sample of ``feeds`` (samples first in every input) through the
    model at ``path``, ``batch`` at a time (onnxruntime on ``device``: cpu or cuda, as the prune
    command's --device picks it; host copies included)."""
    import onnxruntime as ort

    from onnx_subprune.runtime import choose_providers

    session = ort.InferenceSession(str(path), providers=choose_providers(device)[0])
    samples = len(next(iter(feeds.values())))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        for first in range(0, samples, batch):
            session.run(None, {name: data[first:first + batch] for name, data in feeds.items()})
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


QUICK_PRUNE_S = 10.0
"""A depth row whose prune takes less than this is pruned :data:`QUICK_RUNS` times, and the run
with the median seconds is kept: a one-second prune moves by a fifth from run to run on a busy
machine, which alone can push depth 64 / depth 16 past its bound."""

QUICK_RUNS = 3


def _measure(name: str, depth: int | None, path: Path, feeds: dict, methods, tmp: Path,
             device: str = "cpu") -> list[dict]:
    """Prune the model at ``path`` with each method in a fresh child process (keep 0.5, onnxruntime
    on ``device``, calibration ``feeds``; a quick one :data:`QUICK_RUNS` times, the median run
    kept): one row each, with the seconds of one forward pass of ``feeds`` on the same device
    (batch 64, or the model's fixed batch), timed right before and right after that prune and
    averaged, so that the machine's speed drifting between the forward pass and the prune moves
    the ratio less."""
    import onnx

    from onnx_subprune import runtime

    calib = tmp / f"{name.replace(' ', '_')}_calib.npz"
    np.savez(calib, **feeds)
    fixed = runtime.fixed_batch(onnx.load(str(path), load_external_data=False), feeds)

    def forward() -> float:
        return forward_seconds(path, feeds, batch=fixed or 64, device=device)

    def prune(method: str) -> dict:
        report = tmp / "report.json"
        command = cli_command() + ["prune", str(path), "-o", str(tmp / "out.onnx"), "--calib", str(calib),
                                   "--keep", "0.5", "--method", method, "--device", device, "--quiet",
                                   "--report", str(report)]
        measure = run_measured(command, tmp, f"{name.replace(' ', '_')}_{method}_{device}")
        if measure["returncode"] != 0:
            return {"error": measure.get("stderr", "")[-300:]}
        result = json.loads(report.read_text())
        seconds = result["seconds"]
        return dict(groups=len(result["groups"]), prune_s=sum(seconds.values()),
                    capture_s=seconds.get("capture", 0.0), select_s=seconds.get("select", 0.0),
                    peak_rss_mib=measure["peak_rss_mib"], error="")

    before = forward()
    rows = []
    for method in methods:
        print(f"[depth] {name} {method} on {device} ...", file=sys.stderr, flush=True)
        runs = [prune(method)]
        if not runs[0]["error"] and runs[0]["prune_s"] < QUICK_PRUNE_S:
            runs += [prune(method) for _ in range(QUICK_RUNS - 1)]
        failed = [run for run in runs if run["error"]]  # any failed run makes the row a failure
        measured = failed[0] if failed else sorted(runs, key=lambda run: run["prune_s"])[(len(runs) - 1) // 2]
        after = forward()
        row = {"model": name, "depth": depth or "", "method": method, "device": device,
               "forward_s": (before + after) / 2, "forward_before_s": before, "forward_after_s": after,
               "runs": len(runs), **measured}
        before = after
        if not row["error"]:
            row["passes"] = row["prune_s"] / row["forward_s"]
        print(f"[depth] row {json.dumps(row)}", file=sys.stderr, flush=True)  # kept even if a later case is cut off
        rows.append(row)
    return rows


def _depth_cases(args, tmp: Path):
    """(name, depth or None, model path, calibration feeds, methods) of each depth case, made one
    at a time: a child process's peak RSS (os.wait4) counts the parent's memory at the fork, so
    the parent holds no other case's inputs (the 512-image ResNet's are 300 MB)."""
    import onnx

    rng = np.random.default_rng(args.seed)
    for depth in args.depths:
        path = tmp / f"chain{depth}.onnx"
        onnx.save(conv_chain(depth, args.chain_channels, args.chain_size, seed=args.seed), path)
        yield f"chain {depth}", depth, path, {"input": rng.standard_normal(
            (args.depth_samples, 3, args.chain_size, args.chain_size)).astype(np.float32)}, DEPTH_METHODS
    for name in args.architectures:
        data = "bert_calib" if name.startswith("bert") else "nhwc_calib" if name == "nhwc_cnn" else "digits_calib_small"
        with np.load(ARCH / f"{data}.npz") as archive:
            feeds = {"input": archive["input"][:args.depth_samples]}
        yield name, None, ARCH / f"{name}.onnx", feeds, DEPTH_METHODS
    for name in args.zoo:
        yield f"{name} (zoo)", None, *_zoo_case(name, args.depth_samples, args.seed), DEPTH_METHODS
    if args.resnet50_samples:
        path = tmp / "resnet50.onnx"
        onnx.save(resnet50_shaped(args.seed), path)
        for samples in args.resnet50_samples:
            feeds = {"input": rng.standard_normal((samples, 3, 224, 224)).astype(np.float32)}
            methods = args.resnet50_methods if samples == min(args.resnet50_samples) else ["asym"]
            yield f"resnet50-shaped x{samples}", None, path, feeds, methods


def _zoo_case(name: str, samples: int, seed: int) -> tuple[Path, dict]:
    """A zoo model (fetched into its cache) and ``samples`` of its in-domain calibration inputs
    (tools/zoo.py's recipe, samples first)."""
    import zoo

    entry = zoo.get_entry(name)
    path = zoo.cached_path(entry) or zoo.fetch(entry)
    feed = zoo.recipes()[entry["recipe"]](entry, samples, seed, "calib")
    return path, zoo.samples_first(entry, feed)


def cmd_depth(args) -> int:
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_depth_") as tmp:
        tmp = Path(tmp)
        for name, depth, path, feeds, methods in _depth_cases(args, tmp):
            for device in args.devices:
                rows += _measure(name, depth, path, feeds, methods, tmp, device)
            del feeds
    failed = any(r["error"] for r in rows)
    total = time.perf_counter() - started
    devices = args.devices
    beyond_cpu = devices != ["cpu"]  # a device column, and the section and plot named after the devices
    header = ["model", "groups", "method"] + (["device"] if beyond_cpu else []) + [
        "forward s", "prune s", "capture s", "select s", "prune / forward", "peak RSS MiB"]
    table = [[r["model"], str(r.get("groups", "")), r["method"]] + ([r["device"]] if beyond_cpu else [])
             + [f"{r['forward_s']:.3f}"] + (
        [f"{r['prune_s']:.1f}", f"{r['capture_s']:.1f}", f"{r['select_s']:.1f}", f"{r['passes']:.0f}",
         f"{r['peak_rss_mib']:.0f}"] if not r["error"] else ["FAILED"] * 5) for r in rows]
    growth = []
    for device in devices:
        for method in DEPTH_METHODS:
            by_depth = {r["depth"]: r["prune_s"] for r in rows
                        if r["depth"] and r["method"] == method and r["device"] == device and not r["error"]}
            if 16 in by_depth and 64 in by_depth:
                growth.append(f"{method}{' on ' + device if beyond_cpu else ''} {by_depth[64] / by_depth[16]:.1f}x")
    section = "depth_" + "_".join(devices) if beyond_cpu else "depth"
    plot = f"speed_{section}.png"
    text = "\n".join([
        "### Prune time vs depth" + (f" ({' vs '.join(devices)})" if beyond_cpu else ""),
        "",
        f"Reproduce: `{command_line('depth', args, ['--depths', '--depth-samples', '--chain-channels', '--chain-size', '--architectures', '--zoo', '--resnet50-samples', '--resnet50-methods', '--devices'])}` (took {total:.0f} s).",
        f"`onnx-subprune prune MODEL --keep 0.5 --method M --device D` in a fresh process on {args.depth_samples} "
        f"random inputs ({args.chain_channels}-channel 3x3 Conv+Relu chains on {args.chain_size}x{args.chain_size} inputs; the architectures: their shipped calibration inputs; zoo models: their recipe's in-domain inputs); prune s = the report's stage seconds; "
        f"forward s = one pass of the same inputs through the original on the same device, batch 64 (or the model's fixed batch), the mean of its times right before and right after that prune; a prune under {QUICK_PRUNE_S:.0f} s is run {QUICK_RUNS} times and the median run kept. Depth 64 / depth 16: "
        + (", ".join(growth) or "not measured") + ".",
        *([_device_ratios(rows, devices)] if len(devices) > 1 else []),
        machine_line(),
        "",
        markdown_table(header, table, right=set(range(len(header))) - {0, 2} - ({3} if beyond_cpu else set())),
        "",
        f"![prune seconds vs depth]({plot})",
        "",
    ])
    args.out.mkdir(parents=True, exist_ok=True)
    _plot_depth(rows, args.out.parent / plot)
    publish(section, args, text, rows)
    return 1 if failed else 0


def _device_ratios(rows: list[dict], devices: list[str]) -> str:
    """One line: for each (model, method) measured on every device, the prune seconds on each later
    device divided by those on the first (same run, same inputs)."""
    first, *others = devices
    seconds = {(r["model"], r["method"], r["device"]): r["prune_s"] for r in rows if not r["error"]}
    parts = []
    for (model, method, device), value in seconds.items():
        if device != first:
            continue
        ratios = [f"{seconds[model, method, other] / value:.2f}" for other in others if (model, method, other) in seconds]
        if ratios:
            parts.append(f"{model} {method} {'/'.join(ratios)}")
    return f"Prune seconds on {'/'.join(others)} divided by those on {first}: " + (", ".join(parts) or "none measured") + "."


def _plot_depth(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[depth] matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    devices = sorted({r["device"] for r in rows})
    for device in devices:
        for method in DEPTH_METHODS:
            points = sorted((r["depth"], r["prune_s"]) for r in rows
                            if r["depth"] and r["method"] == method and r["device"] == device and not r["error"])
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if device == "cpu" else "--",
                        label=method if len(devices) == 1 else f"{method} ({device})")
    ax.set_xlabel("Conv layers (groups)")
    ax.set_ylabel("prune seconds")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- selector


def cmd_selector(args) -> int:
    from bench_selector import bench_large, bench_naive

    rng = np.random.default_rng(args.seed)
    rows = []
    started = time.perf_counter()
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    try:
        for n in args.naive_sizes:
            print(f"[selector] n = {n} ...", file=sys.stderr, flush=True)
            rows.append({"case": "naive vs gram", **bench_naive(n, rng, args.naive_timeout)})
    finally:  # bench_naive sets OPENBLAS_NUM_THREADS=1 for its child; keep it out of ours
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    large = None
    if not args.no_large:
        print("[selector] 512-channel consumer ...", file=sys.stderr, flush=True)
        large = bench_large(rng)
        rows.append({"case": "large", **large})
    total = time.perf_counter() - started
    table = []
    for row in rows:
        if row["case"] != "naive vs gram":
            continue
        bound = ">" if row["naive_stopped"] else ""
        table.append([str(row["n"]), str(row["d"]), str(row["N"]), str(row["k"]), f"{row['greedy_s']:.3f}",
                      f"{bound}{row['naive_s']:.2f}", f"{bound}{row['speedup']:.0f}x",
                      "-" if row["same_order"] is None else ("yes" if row["same_order"] else "no"),
                      "-" if row["total_rel_diff"] is None else f"{row['total_rel_diff']:.1e}"])
    lines = [
        "### Channel selector: Gram-form greedy vs naive lstsq greedy",
        "",
        f"Reproduce: `{command_line('selector', args, ['--naive-sizes', '--naive-timeout', '--no-large'])}`"
        f" (took {total:.0f} s).",
        "Random conv-shaped problems (n channels of 3x3 blocks, d = 9n columns, N = d + 64 rows, m = 8 "
        "outputs, k = n/2 kept); the naive greedy (one `lstsq`, LAPACK gelsy, per candidate and step) "
        "runs in a child process with one OpenBLAS thread; a run stopped at the timeout is a lower bound (>).",
        machine_line(),
        "",
        markdown_table(["n", "d", "N", "k", "greedy s", "naive s", "speed-up", "same channels", "F rel. diff"],
                       table, right=set(range(9))),
        "",
    ]
    if large:
        lines += [
            f"512-channel 3x3 consumer (d = {large['d']}, m = {large['m']}, k = {large['k']}, population "
            f"statistics): greedy {large['greedy_s']:.2f} s + refit {large['refit_s']:.2f} s = "
            f"{large['greedy_plus_refit_s']:.2f} s; the greedy with one BLAS thread (as `prune` runs it): "
            f"{large['greedy_one_thread_s']:.2f} s.",
            "",
        ]
    publish("selector", args, "\n".join(lines), rows)
    return 0


# --------------------------------------------------------------------------- latency


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict, feed: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per run of each session, runs interleaved by rounds."""
    times = {key: [] for key in sessions}
    for sess in sessions.values():
        for _ in range(3):
            sess.run(None, feed)
    for _ in range(rounds):
        for key, sess in sessions.items():
            for _ in range(3):
                sess.run(None, feed)
            for _ in range(repeats):
                start = time.perf_counter()
                sess.run(None, feed)
                times[key].append(time.perf_counter() - start)
    return {key: 1e3 * float(np.median(values)) for key, values in times.items()}


def cmd_latency(args) -> int:
    from onnx_subprune.config import PruneConfig
    from onnx_subprune.data import check_inputs, load_arrays
    from onnx_subprune.errors import SubpruneError
    from onnx_subprune.graph import load_model
    from onnx_subprune.metrics import count_macs, count_params
    from onnx_subprune.pipeline import prune

    rows, skipped = [], []
    started = time.perf_counter()
    test_arrays = load_arrays(TEST)
    for name in args.models:
        model = load_model(MODELS / f"{name}.onnx")
        (input_name, pool), = check_inputs(load_arrays(CALIB), model, str(CALIB)).items()
        test = check_inputs(test_arrays, model, str(TEST), extra=("label",))[input_name]
        feeds = {input_name: calibration_subset(pool, args.calib_samples, 0)}
        models = {(1, 1): model}
        for ratio in args.ratios:
            for round_to in args.round_to:
                print(f"[latency] prune {name} x{ratio:g} round-to {round_to} ...", file=sys.stderr, flush=True)
                config = PruneConfig(method="asym", target_params=1 / ratio, allocation=args.allocation,
                                     round_to=round_to, device="cpu", seed=0)
                try:
                    models[(ratio, round_to)] = prune(model, feeds, config).model
                except SubpruneError as exc:  # e.g. multiples of 8 cannot reach the target
                    skipped.append(f"{name} {ratio:g}x round to {round_to}: {exc}")
                    print(f"[latency]   skipped: {exc}", file=sys.stderr)
        sessions = {key: _session(m, args.threads) for key, m in models.items()}
        params0, macs0 = count_params(model), count_macs(model)
        medians = {}
        for batch in args.batches:
            print(f"[latency] time {name} batch {batch} ...", file=sys.stderr, flush=True)
            repeats = max(3, args.repeats if batch == 1 else args.repeats // 4)
            medians[batch] = time_interleaved(sessions, {input_name: np.ascontiguousarray(test[:batch])},
                                              args.rounds, repeats)
        for (ratio, round_to), pruned in models.items():
            row = {"model": name, "ratio": ratio, "round_to": round_to,
                   "params_ratio": count_params(pruned) / params0, "macs_ratio": count_macs(pruned) / macs0}
            for batch in args.batches:
                row[f"batch{batch}_ms"] = medians[batch][(ratio, round_to)]
                row[f"batch{batch}_speedup"] = medians[batch][(1, 1)] / medians[batch][(ratio, round_to)]
            rows.append(row)
    total = time.perf_counter() - started
    header = ["model", "ratio", "round to", "params ratio", "MACs ratio"]
    for batch in args.batches:
        header += [f"batch {batch} ms", f"batch {batch} speed-up"]
    table = []
    for row in rows:
        cells = [row["model"], "original" if row["ratio"] == 1 else f"{row['ratio']:g}x",
                 "-" if row["ratio"] == 1 else str(row["round_to"]),
                 f"{row['params_ratio']:.3f}", f"{row['macs_ratio']:.3f}"]
        for batch in args.batches:
            cells += [f"{row[f'batch{batch}_ms']:.3f}", f"{row[f'batch{batch}_speedup']:.2f}x"]
        table.append(cells)
    text = "\n".join([
        "### ONNX Runtime CPU latency, pruned vs original",
        "",
        f"Reproduce: `{command_line('latency', args, ['--models', '--ratios', '--round-to', '--allocation', '--threads', '--batches', '--rounds', '--repeats'])}`"
        f" (took {total:.0f} s).",
        f"Pruned by asym with `target_params = 1/ratio`, {args.allocation} allocation, kept counts "
        f"multiples of `round to` (`--round-to`), seed 0, {args.calib_samples} calibration images; CPUExecutionProvider, {args.threads} intra-op "
        f"thread(s), sequential; median over {args.rounds} interleaved rounds of {args.repeats} runs at "
        f"batch 1 ({max(3, args.repeats // 4)} at larger batches) after warm-up; speed-up = original / "
        "pruned median from the same process.",
        machine_line(),
        "",
        markdown_table(header, table, right=set(range(1, len(header)))),
        "",
    ] + ([f"Not reachable, left out: {'; '.join(skipped)}.", ""] if skipped else []))
    publish("latency", args, text, rows)
    return 0


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("section", choices=("stages", "selector", "latency", "depth", "all"))
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_bn", "resnet_small"])
    parser.add_argument("--samples", type=int, nargs="+", default=[128, 512, 2048],
                        help="stages: calibration set sizes")
    parser.add_argument("--ratio", type=float, default=4, help="stages: params compression ratio")
    parser.add_argument("--ratios", type=float, nargs="+", default=[2, 4, 8, 16],
                        help="latency: params compression ratios")
    parser.add_argument("--allocation", choices=("sensitivity", "uniform"),
                        help="allocation (default: sensitivity for stages, uniform for latency)")
    parser.add_argument("--repeats", type=int, help="stages: runs per setting (default 1); "
                        "latency: timed runs per round at batch 1 (default 40, a quarter at larger batches)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation and the problems")
    parser.add_argument("--naive-sizes", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--naive-timeout", type=float, default=120.0)
    parser.add_argument("--no-large", action="store_true", help="selector: skip the 512-channel case")
    parser.add_argument("--threads", type=int, default=1, help="latency: ORT intra-op threads")
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8],
                        help="latency: prune once per value (PruneConfig.round_to)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="latency: batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="latency: interleaved rounds")
    parser.add_argument("--calib-samples", type=int, default=128, help="latency: calibration images")
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64], help="depth: chain lengths")
    parser.add_argument("--depth-samples", type=int, default=32, help="depth: calibration inputs")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu"],
                        help="depth: prune (and time the forward pass) on each of these onnxruntime devices; "
                             "more than one: section depth_<devices>, with the ratio of their prune seconds")
    parser.add_argument("--resnet50-samples", type=int, nargs="*", default=[],
                        help="depth: also prune a ResNet-50-shaped model (224x224) on these numbers of random inputs")
    parser.add_argument("--resnet50-methods", nargs="+", default=["asym", "layer"],
                        help="depth: methods for the ResNet-50-shaped model at its smallest sample count (larger: asym)")
    parser.add_argument("--zoo", nargs="*", default=[],
                        help="depth: also prune these zoo models (tools/zoo.py, fetched when not cached) "
                             "on --depth-samples in-domain inputs of their recipe")
    parser.add_argument("--chain-channels", type=int, default=32, help="depth: channels of every chain layer")
    parser.add_argument("--chain-size", type=int, default=32, help="depth: chain input height and width")
    parser.add_argument("--architectures", nargs="*", default=["resnet_mixed", "csp_split_concat", "densenet_block",
                                                               "mobilenetv3_se", "bert_encoder"],
                        help="depth: test architectures (models/arch) measured alike")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "RESULTS.md",
                        help="document whose section blocks are replaced ('-': none)")
    args = parser.parse_args(argv)
    status = 0
    sections = ("stages", "latency", "selector") if args.section == "all" else (args.section,)
    repeats, allocation = args.repeats, args.allocation
    for section in sections:
        args.allocation = allocation or ("sensitivity" if section == "stages" else "uniform")
        args.repeats = repeats or (1 if section == "stages" else 40)
        status |= {"stages": cmd_stages, "selector": cmd_selector, "latency": cmd_latency,
                   "depth": cmd_depth}[section](args)
    return status


if __name__ == "__main__":
    sys.exit(main())
