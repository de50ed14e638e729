"""The ``onnx-subprune`` command line: a thin click shell over :mod:`onnx_subprune.api`.

Results go to stdout (``--json`` for machine-readable output); notes and progress go to stderr.
Exit codes: 0 success, 1 user error (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import functools
import sys

import click

from . import api
from .config import METHODS, PruneConfig
from .errors import SubpruneError
from .runtime import DEVICES


class _Progress:
    """Draws ``progress(stage, done, total)`` calls as one redrawn line on a terminal stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.width = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        filled = int(24 * done / max(total, 1))
        line = f"{stage:<24} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total}"
        click.echo("\r" + line.ljust(self.width), nl=False, err=True)
        self.width = len(line)

    def close(self) -> None:
        if self.enabled and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)


def _note(line: str) -> None:
    click.echo(line, err=True)


def _user_errors(func):
    """Turn :class:`SubpruneError` into click's one-line error with exit status 1."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SubpruneError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _emit(data: dict, as_json: bool, text: str) -> None:
    click.echo(api.to_json(data) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx-subprune")
def main() -> None:
    """Structured pruning of ONNX models after export.

    Removes whole channels and neurons chosen by greedy submodular selection on a small
    unlabeled calibration set, re-fits the next layer by least squares, and writes a smaller
    ONNX model. Exit codes: 0 ok, 1 bad input (one line on stderr), 2 bad usage.
    """


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_user_errors
def analyze_cmd(model: str, as_json: bool) -> None:
    """List the prunable channel groups of MODEL and every skipped layer with its reason.

    \b
    Example:
      onnx-subprune analyze models/lenet5.onnx
    """
    result = api.analyze_file(model)
    lines = [f"{len(result['groups'])} prunable groups, {len(result['skipped'])} skipped "
             f"({result['params']:,} params, {result['macs']:,} MACs)"]
    for group in result["groups"]:
        through = " -> ".join(group["through"]) or "direct"
        lines.append(f"  {group['producer']} [{group['channels']} ch] -> {', '.join(group['consumers'])}  via {through}")
    for skip in result["skipped"]:
        lines.append(f"  skipped {skip['node']} ({skip['op']}): {skip['reason']}")
    _emit(result, as_json, "\n".join(lines))


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the pruned model.")
@click.option("--calib", required=True, type=click.Path(dir_okay=False),
              help="Calibration inputs: .npz with one array per model input (first axis = samples), or .npy for a single-input model.")
@click.option("--keep", default=0.5, show_default=True, type=float, help="Fraction of each group's channels to keep, in (0, 1].")
@click.option("--method", default="asym", show_default=True, type=click.Choice(METHODS),
              help="asym/seq/layer: greedy selection (statistics from the pruned model vs the original, the pruned model, or the original); the rest are baseline rankings.")
@click.option("--no-refit", is_flag=True, help="Keep the consumers' original weights of the kept channels (no least-squares re-fit).")
@click.option("--no-bias-compensation", is_flag=True, help="Fit without an intercept (the paper's exact objective).")
@click.option("--ridge", default=1e-3, show_default=True, type=float, help="Ridge, relative to the mean diagonal of the Gram matrix, for selection and refit.")
@click.option("--holdout", default=0.2, show_default=True, type=float, help="Fraction of calibration samples held out to report held-out explained variance.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES), help="onnxruntime provider: auto uses CUDA only when it really loads.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Samples per onnxruntime run.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the holdout split and the random baseline.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the full JSON report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def prune_cmd(model, output, calib, keep, method, no_refit, no_bias_compensation, ridge, holdout,
              device, batch_size, seed, report_path, as_json, quiet) -> None:
    """Prune MODEL with calibration data and write the smaller model to OUTPUT.

    \b
    Example:
      onnx-subprune prune models/lenet5.onnx -o lenet5_pruned.onnx \\
          --calib models/digits_calib.npz --keep 0.5 --report report.json
    """
    config = PruneConfig(keep=keep, method=method, refit=not no_refit,
                         bias_compensation=not no_bias_compensation, ridge=ridge, holdout=holdout,
                         batch_size=batch_size, seed=seed, device=device)
    bar = _Progress(not quiet)
    try:
        result = api.prune_file(model, output, calib, config, report_path, progress=bar, log=_note)
    finally:
        bar.close()
    _emit(result.report, as_json, _prune_summary(result.report, output))


def _prune_summary(report: dict, output: str) -> str:
    params, macs = report["params"], report["macs"]
    lines = [
        f"wrote {output}: {len(report['groups'])} groups pruned ({report['method']}, keep {report['keep']})",
        f"  params {params['before']:,} -> {params['after']:,} ({params['after'] / params['before']:.1%})",
        f"  MACs   {macs['before']:,} -> {macs['after']:,} ({macs['after'] / max(macs['before'], 1):.1%})",
        f"  relative output error on calibration inputs: {report['output_error']:.4f}",
        "  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()),
    ]
    starved = [g["producer"] for g in report["groups"] if g["underdetermined"]]
    if starved:
        lines.append(f"  note: {len(starved)} groups had fewer calibration rows than columns: {', '.join(starved)}")
    return "\n".join(lines)


@main.command("evaluate")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False), help=".npz with one array per model input (and optionally labels), or .npy.")
@click.option("--labels", help="Name of the integer label array in --data, to report accuracy.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Samples per run (also the latency batch).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_user_errors
def evaluate_cmd(original, pruned, data, labels, device, batch_size, as_json) -> None:
    """Compare PRUNED with ORIGINAL: output error, cosine, top-1 agreement, accuracy, size, latency.

    \b
    Example:
      onnx-subprune evaluate models/lenet5.onnx lenet5_pruned.onnx \\
          --data models/digits_test.npz --labels label
    """
    result = api.evaluate_files(original, pruned, data, labels, device, batch_size, log=_note)
    lines = []
    for name, out in result["outputs"].items():
        agree = f", top-1 agreement {out['top1_agreement']:.1%}" if "top1_agreement" in out else ""
        lines.append(f"output {name}: relative error {out['relative_error']:.4f}, cosine {out['cosine']:.4f}{agree}")
    if "accuracy" in result:
        acc = result["accuracy"]
        lines.append(f"accuracy: original {acc['original']:.2%}, pruned {acc['pruned']:.2%}")
    for label in ("original", "pruned"):
        r = result[label]
        lines.append(f"{label:<8}: {r['params']:,} params, {r['macs']:,} MACs, "
                     f"{r['latency_ms']:.3f} ms median (batch {result['latency_batch']})")
    _emit(result, as_json, "\n".join(lines))
