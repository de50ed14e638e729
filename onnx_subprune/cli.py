"""The ``onnx-subprune`` command line: a thin click shell over :mod:`onnx_subprune.api`.

Results go to stdout (``--json`` for machine-readable output); notes and progress go to stderr.
Exit codes: 0 success, 1 user error (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from fractions import Fraction

import click

from . import api, sources
from .calibrate import AUTO_HOLDOUT, CV_BELOW, CV_FOLDS
from .config import ALLOCATIONS, DEFAULT_MIN_KEEP, SELECT_INPUTS, PruneConfig
from .errors import ConfigError, SubpruneError, one_line
from .pipeline import MIN_HELD_OUT
from .plans import parse_group_keep, read_plan
from .report import LARGE_ERROR, verified_text
from .runtime import DEVICES
from .verify import mixed_scale
from .select import METHODS, RANKERS
from .augment import AUGMENTATIONS
from .select.shrink import SHRINK
from .shapes import parse_input_shape

DEFAULTS = PruneConfig()
METHOD_HELP = "; ".join(f"{name}: {ranker.help}" for name, ranker in RANKERS.items())


class _Progress:
    """Draws ``progress(stage, done, total)`` calls on stderr.

    Stages are outer (groups, sensitivity, reading images) or inner (``capture ...``, the
    batches of one statistics pass). On a terminal: one redrawn line, the outer stage's bar with
    its ETA (inner progress counted as part of the current step) followed by the inner stage;
    otherwise one line when a stage starts and one per group done. ``enabled`` False: nothing.
    """

    def __init__(self, enabled: bool):
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.width = 0
        self.outer: tuple[str, int, int] | None = None
        self.inner: tuple[str, int, int] | None = None
        self.started = time.monotonic()
        self.ended: float | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        inner = stage.startswith("capture") and self.outer is not None and not self.outer[0].startswith("capture")
        if inner:
            fresh, self.inner = self.inner is None or self.inner[0] != stage or done < self.inner[1], (stage, done, total)
        else:
            fresh = self.outer is None or self.outer[0] != stage
            if fresh:  # the stage began when the previous one ended (its first step may be done already)
                self.started = self.ended or time.monotonic()
            self.outer, self.inner = (stage, done, total), None
            self.ended = time.monotonic() if done >= total else None
        if self.tty:
            self._draw()
        elif stage == "groups":
            click.echo(f"groups: {done}/{total} done, {time.monotonic() - self.started:.1f} s", err=True)
        elif fresh and not inner:
            click.echo(f"{stage}: {total} steps", err=True)

    def _draw(self) -> None:
        stage, done, total = self.outer or self.inner
        part = done + (self.inner[1] / max(self.inner[2], 1) if self.inner and self.outer else 0.0)
        fraction = min(1.0, part / max(total, 1))
        elapsed = time.monotonic() - self.started
        eta = f"ETA {_clock(elapsed * (1 - fraction) / fraction)}" if 0 < fraction < 1 else _clock(elapsed)
        filled = int(24 * fraction)
        line = f"{stage} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total} {eta}"
        if self.inner and self.outer:
            line += f" | {self.inner[0]} {self.inner[1]}/{self.inner[2]}"
        click.echo("\r" + line.ljust(self.width), nl=False, err=True)
        self.width = len(line)

    def note(self, line: str) -> None:
        """Print ``line`` on stderr above the bar."""
        if self.enabled and self.tty and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
            click.echo(line, err=True)
            self._draw()
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
        self.width = 0
        if self in _BARS:
            _BARS.remove(self)

    def __enter__(self) -> "_Progress":
        _BARS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_BARS: list[_Progress] = []
"""The progress display in use (notes are printed above it)."""


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def _note(line: str) -> None:
    line = one_line(line)  # names from the model stay on the line
    if _BARS:
        _BARS[-1].note(line)
    else:
        click.echo(line, err=True)


def _user_errors(func):
    """Turn :class:`SubpruneError` into click's one-line error with exit status 1."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                # NumPy's overflow/invalid-value warnings would add lines to stderr; what they
                # signal (non-finite statistics or outputs) is checked and reported as one line
                warnings.simplefilter("ignore", RuntimeWarning)
                return func(*args, **kwargs)
        except ConfigError as exc:  # name the option as the command line spells it
            raise click.ClickException(f"--{exc.option.replace('_', '-')} {exc.problem}") from None
        except SubpruneError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError as exc:  # sizes from a hostile file (a huge declared batch or tensor)
            raise click.ClickException(one_line(f"out of memory: {exc}" if str(exc) else "out of memory")) from None

    return wrapper


def _group_filters(command):
    """--include / --exclude: node-name globs choosing the groups (repeatable); --select-inputs."""
    command = click.option("--select-inputs", default=DEFAULTS.select_inputs, show_default=True,
                           type=click.Choice(SELECT_INPUTS),
                           help="Also prune the input channels of layers that no channel group reaches (a LayerNorm's, "
                                "an LSTM's or a residual sum's readers): a Gather in front of the layer picks the kept "
                                "ones. auto: only when the groups alone cannot reach the target, or there are none.")(command)
    command = click.option("--exclude", multiple=True, metavar="PATTERN",
                           help="Never prune a group whose producers or consumers match this node-name glob (repeatable).")(command)
    return click.option("--include", multiple=True, metavar="PATTERN",
                        help="Prune only groups with a producer matching this node-name glob (repeatable).")(command)


def _parsed(parser):
    """A click callback parsing an option's text with ``parser`` (ValueError: usage error)."""
    def callback(ctx, param, value):
        try:
            return None if value is None else parser(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return callback


_CALIBRATION_OPTIONS = [
    click.option("--calib", type=click.Path(), metavar="FILE|DIR|GLOB",
                 help="Calibration inputs: .npz with one array per model input (first axis = samples, then the input's shape without its batch axis; a scalar input such as a sample rate: one 0-d array), .npy for a single-input model, or a folder or quoted glob ('photos/*.jpg') of images for a single image input (needs Pillow: pip install 'onnx-subprune[images]').  [required unless --calib-script]"),
    click.option("--calib-script", metavar="FILE.py[:FUNC]",
                 help=f"Python script whose function (default {sources.DEFAULT_FUNCTION}) returns an iterable of feed dicts {{input name: array}}, each with a batch of samples on the first axis (Polygraphy's data loader convention)."),
    click.option("--image-size", callback=_parsed(sources.parse_size), metavar="HxW",
                 help="Images: size fed to the model.  [default: the input's static height and width; required when they are symbolic]"),
    click.option("--layout", type=click.Choice(sources.LAYOUTS), help="Images: the input's layout.  [default: from where its 1- or 3-channel axis is]"),
    click.option("--resize", type=click.Choice(sources.RESIZES),
                 help="Images: stretch to the size, crop (shorter side to the size, center cut) or pad (longer side to the size, centered on gray 114); bilinear.  [default: stretch]"),
    click.option("--scale", type=float, help="Images: pixel values (0-255) are multiplied by this first.  [default: 1/255]"),
    click.option("--mean", callback=_parsed(sources.parse_floats), metavar="M[,M,M]",
                 help="Images: subtracted after --scale, one value or one per channel (in the model's channel order).  [default: 0]"),
    click.option("--std", callback=_parsed(sources.parse_floats), metavar="S[,S,S]",
                 help="Images: divides after --mean, one value or one per channel.  [default: 1]"),
    click.option("--channel-order", type=click.Choice(sources.CHANNEL_ORDERS), help="Images: channel order of a 3-channel input.  [default: RGB]"),
    click.option("--max-samples", type=click.IntRange(min=1), metavar="N",
                 help="Use only the first N calibration samples (images in name order; a script's iterable is read no further)."),
]


def _calibration_options(command):
    """--calib / --calib-script and the image options, handed to the command as one ``calib``
    (a :class:`sources.CalibrationSource`)."""
    @functools.wraps(command)
    def wrapper(*args, calib, calib_script, image_size, layout, resize, scale, mean, std, channel_order,
                max_samples, **kwargs):
        if (calib is None) == (calib_script is None):
            raise click.UsageError("give exactly one of --calib and --calib-script")
        recipe = sources.ImageRecipe(size=image_size, layout=layout, resize=resize, scale=scale, mean=mean,
                                     std=std, order=channel_order)
        source = sources.CalibrationSource(path=calib, script=calib_script, images=recipe, max_samples=max_samples)
        return command(*args, calib=source, **kwargs)

    for option in reversed(_CALIBRATION_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def _input_shapes(command):
    """--input-shape NAME:DIMS (repeatable), handed to the command parsed as ``input_shapes``."""
    @functools.wraps(command)
    def wrapper(*args, input_shape, **kwargs):
        return command(*args, input_shapes=_parse_all(parse_input_shape, input_shape), **kwargs)

    return click.option("--input-shape", multiple=True, metavar="NAME:DIMS",
                        help="Pin the symbolic dims of input NAME, e.g. input:1x3x224x224, for MACs, size targets "
                             "and the calibration check (repeatable; the first dim, the batch, stays dynamic; "
                             "the written model keeps its dims).")(wrapper)


def _plan_options(command):
    """--plan, --group-keep (parsed as ``group_keep``) and --dry-run of ``prune``."""
    @functools.wraps(command)
    def wrapper(*args, group_keep, **kwargs):
        return command(*args, group_keep=_parse_all(parse_group_keep, group_keep), **kwargs)

    for option in (
        click.option("--dry-run", is_flag=True,
                     help="Print the allocation and the predicted params/MACs and write no model (--report still "
                          "writes the plan); -o is not needed."),
        click.option("--group-keep", multiple=True, metavar="GLOB=FRACTION",
                     help="Groups whose name matches GLOB keep FRACTION of their channels, whatever --keep, "
                          "the target or --plan say (repeatable; the last match wins)."),
        click.option("--plan", "plan_path", type=click.Path(), metavar="REPORT.json",
                     help="Apply the per-group kept counts (and kept channels) of a report of this model "
                          "(prune --report, prune --dry-run --report, analyze --json: keep all)."),
    ):
        wrapper = option(wrapper)
    return wrapper


def _parse_all(parser, texts: tuple[str, ...]) -> tuple:
    """Each option text parsed; a malformed one is a one-line error (exit 1)."""
    try:
        return tuple(parser(text) for text in texts)
    except SubpruneError as exc:
        raise click.ClickException(str(exc)) from None


def _command() -> list[str]:
    """The command line of this run as the report records it."""
    return ["onnx-subprune", *click.get_current_context().find_root().meta.get("argv", sys.argv[1:])]


class _Holdout(click.ParamType):
    """``--holdout``: ``auto`` or a fraction (range checked by :class:`PruneConfig`)."""

    name = "auto|F"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, float):
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)


HOLDOUT_HELP = (f"Calibration samples kept out of the statistics: a fraction F (0: none), or auto: below "
                f"{CV_BELOW} samples none, so that every sample informs the fit, and the held-out explained "
                f"variance is {CV_FOLDS}-fold cross-validated over the statistics; from {CV_BELOW} on "
                f"{AUTO_HOLDOUT:g}.")


class _Main(click.Group):
    """The command group; keeps the arguments it was given (for the report's ``run.command``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


def _emit(data: dict, as_json: bool, text: str) -> None:
    click.echo(api.to_json(data) if as_json else text)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx-subprune")
def main() -> None:
    """Structured pruning of ONNX models after export.

    Removes whole channels and neurons chosen by greedy submodular selection on a small
    unlabeled calibration set, re-fits the next layer by least squares, and writes a smaller
    ONNX model. Exit codes: 0 ok, 1 bad input (one line on stderr), 2 bad usage.
    """


@main.command("analyze")
@click.argument("model", type=click.Path())
@_group_filters
@_input_shapes
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_user_errors
def analyze_cmd(model: str, include: tuple[str, ...], exclude: tuple[str, ...], select_inputs: str,
                input_shapes: tuple, as_json: bool) -> None:
    """List the prunable channel groups of MODEL and every skipped layer with its reason.

    \b
    Example:
      onnx-subprune analyze models/lenet5.onnx
    """
    result = api.analyze_file(model, include, exclude, input_shapes, select_inputs, log=_note).to_json()
    reach = result["coverage"]
    lines = [f"{len(result['groups'])} prunable groups ({reach['channels']:,} channels), {len(result['skipped'])} skipped; "
             f"the groups reach {reach['params_in_groups']:,} of {result['params']:,} float params "
             f"({reach['fraction']:.1%}), {result['macs']:,} MACs"]
    for group in result["groups"]:
        through = " -> ".join(group["through"]) or ("direct" if group["producers"] else "a Gather (input selection)")
        tied = f" + {', '.join(group['producers'][1:])}" if len(group["producers"]) > 1 else ""
        lines.append(f"  {group['group']}{tied} [{group['channels']} ch] -> "
                     f"{', '.join(group['consumers'])}  via {through}")
    for skip in result["skipped"]:
        lines.append(f"  skipped {skip['node']} ({skip['op']}): {skip['reason']}")
    if result["selectable"]:
        lines.append(f"  and {result['selectable']} input selections, not listed: prune uses them when the groups "
                     f"cannot reach a target (--select-inputs always lists them)")
    _emit(result, as_json, "\n".join(lines))


@main.command("prune")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", type=click.Path(), help="Where to write the pruned model (required unless --dry-run).")
@_calibration_options
@click.option("--keep", type=float, help="Fraction of each group's channels to keep, in (0, 1]  [default: 0.5 unless a target is given]")
@click.option("--target-params", type=float, metavar="RATIO",
              help="Keep this fraction of the model's float params (0 < RATIO <= 1); per-group counts are allocated. Not with --keep.")
@click.option("--target-flops", type=float, metavar="RATIO",
              help="Keep this fraction of the model's MACs (0 < RATIO <= 1); may be combined with --target-params. Not with --keep.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS),
              help="How a target is split over groups: sensitivity (equal loss on measured per-group output-error curves), marginal (same curves, least squared loss per param saved) or uniform (one keep fraction). Groups measured alone need not add up, so sensitivity and marginal also prune the whole model to the uniform allocation and write whichever has the lower output error (a dry run shows the measured allocation).  [default: sensitivity]")
@click.option("--min-keep", type=float, metavar="FRACTION",
              help="Fewest channels any group keeps, as a fraction (rounded up, at least 1).  [default: 1/16 with a target, else 1 channel]")
@click.option("--sensitivity-samples", default=DEFAULTS.sensitivity_samples, show_default=True, type=click.IntRange(min=1),
              metavar="N", help="Samples the sensitivity curves of --allocation sensitivity/marginal are measured on (the first N held-out ones, else calibration ones). Each curve point runs the model on them, so on large inputs this stage dominates: a page-layout detector (800x608 inputs, 48 calibration pages) pruned in 347 s with 16 instead of 754 s with all 48, to the same output error.")
@click.option("--round-to", type=click.IntRange(min=1), metavar="N",
              help="Kept counts are multiples of N in groups with at least N channels (or all channels); multiples of 8 keep onnxruntime's CPU kernels fast.  [default: 8 with a target in groups of >= 32 channels, else 1]")
@click.option("--method", default=DEFAULTS.method, show_default=True, type=click.Choice(METHODS),
              help=METHOD_HELP + ".")
@click.option("--no-refit", is_flag=True, help="Keep the consumers' original weights of the kept channels (no least-squares re-fit).")
@click.option("--no-bias-compensation", is_flag=True, help="Fit without an intercept (the paper's exact objective).")
@click.option("--ridge", default=DEFAULTS.ridge, show_default=True, type=float, help="Ridge, relative to the mean diagonal of the Gram matrix, for selection and refit.")
@click.option("--shrink", default=DEFAULTS.shrink, show_default=True, type=click.Choice(SHRINK),
              help="Refit with few calibration samples: cv (per consumer, none or refit, whichever the cross-validation folds score better; folds exist below 128 samples with --holdout auto, else none), none (least squares, --ridge toward zero), refit (shrunk toward the original weights or, for Conv/Flatten consumers, a channel-map regression, strength by generalized cross-validation) or auto (that refit, and a selection that leans on the original weights where samples are fewer than channels).")
@click.option("--holdout", default=DEFAULTS.holdout, show_default=True, type=_Holdout(),
              help=HOLDOUT_HELP + f" The held-out samples also verify the pruned model and, when at least {MIN_HELD_OUT}, "
                                   "measure the sensitivity curves; else the calibration samples do (in-sample).")
@click.option("--augment", multiple=True, type=click.Choice(AUGMENTATIONS),
              help="Add transformed copies of the calibration images to the statistics (repeatable): shift (4 copies moved by one pixel) or hflip (mirrored left-right; natural photos only). Use only transformations the model is indifferent to; they help most with few images. Copies stay in their image's fold; verification uses the originals.")
@click.option("--max-error", type=float, metavar="E",
              help="Fail (exit 1, nothing written) when the pruned model's relative output error on the held-out samples (the calibration samples when none are held out: in-sample) exceeds E, naming the groups that cost the most.")
@click.option("--device", default=DEFAULTS.device, show_default=True, type=click.Choice(DEVICES), help="onnxruntime provider: auto uses CUDA only when it really loads.")
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(min=1), help="Samples per onnxruntime run.")
@click.option("--cache-memory", default=DEFAULTS.cache_memory, show_default=True, type=click.IntRange(min=0), metavar="MIB",
              help="Memory (MiB) for the activations asym/seq keep between groups so that each sample runs through each model about once; beyond it they go to a temporary file, removed at the end.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int, help="Seed for the holdout split (or folds) and the random baseline.")
@_group_filters
@click.option("--report", "report_path", type=click.Path(), help="Write the full JSON report here.")
@click.option("--external-data", is_flag=True,
              help="Write the weights to OUTPUT.data beside OUTPUT (always done when MODEL has external data).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_shapes
@_plan_options
@_user_errors
def prune_cmd(model, output, calib, keep, target_params, target_flops, allocation, min_keep, sensitivity_samples, round_to,
              method, no_refit, no_bias_compensation, ridge, shrink, holdout, augment, max_error, device, batch_size,
              cache_memory, seed, include, exclude, select_inputs, report_path, external_data, as_json, quiet, input_shapes, plan_path,
              group_keep, dry_run) -> None:
    """Prune MODEL with calibration data and write the smaller model to OUTPUT.

    Either every group keeps the same fraction (--keep), or the model is brought to a size
    target (--target-params / --target-flops) with per-group counts chosen by --allocation.

    \b
    Example:
      onnx-subprune prune models/lenet5.onnx -o lenet5_pruned.onnx \\
          --calib models/digits_calib.npz --keep 0.5 --report report.json
      onnx-subprune prune models/vgg_bn.onnx -o vgg_quarter.onnx \\
          --calib models/digits_calib.npz --target-params 0.25 --round-to 8
      onnx-subprune prune models/vgg_bn.onnx --calib models/digits_calib.npz \\
          --target-params 0.25 --dry-run --report plan.json
      onnx-subprune prune models/vgg_bn.onnx -o vgg_plan.onnx \\
          --calib models/digits_calib.npz --plan plan.json --group-keep '*features.0*=1'
    """
    targeted = target_params is not None or target_flops is not None
    if targeted and keep is not None:
        raise click.UsageError("--keep cannot be combined with --target-params/--target-flops")
    if allocation is not None and not targeted:
        raise click.UsageError("--allocation needs --target-params or --target-flops")
    if plan_path is not None and (targeted or keep is not None):
        raise click.UsageError("--plan cannot be combined with --keep/--target-params/--target-flops")
    config = PruneConfig(keep=0.5 if keep is None else keep, method=method, refit=not no_refit,
                         bias_compensation=not no_bias_compensation, ridge=ridge, shrink=shrink,
                         holdout=holdout, augment=tuple(augment), batch_size=batch_size, cache_memory=cache_memory,
                         seed=seed, device=device,
                         target_params=target_params, target_flops=target_flops, allocation=allocation or "sensitivity",
                         min_keep=min_keep, sensitivity_samples=sensitivity_samples, round_to=round_to,
                         include=include, exclude=exclude, select_inputs=select_inputs, max_error=max_error, input_shapes=input_shapes, group_keep=group_keep)
    plan = read_plan(plan_path) if plan_path is not None else None
    if output is None and not dry_run:
        raise click.UsageError("Missing option '-o' / '--output' (or give --dry-run).")
    with _Progress(not quiet) as bar:
        if dry_run:
            planned = api.dry_run_file(model, calib, config, report_path, bar, _note, plan, _command()).to_json()
        else:
            result = api.prune_file(model, output, calib, config, report_path, bar, _note, plan, _command(),
                                    external_data)
    if dry_run:
        return _emit(planned, as_json, _dry_run_summary(planned))
    report = result.report.to_json()
    _emit(report, as_json, _prune_summary(report, output))
    for line in report["warnings"]:
        _note(f"warning: {line}")


def _prune_summary(report: dict, output: str) -> str:
    params, macs, target = report["params"], report["macs"], report.get("target")
    if target is None:
        how = f"keep {report['keep']}" if report.get("keep") is not None else "given counts"
        lines = [
            f"wrote {output}: {len(report['groups'])} groups pruned ({report['method']}, {how})",
            f"  params {params['before']:,} -> {params['after']:,} ({params['after'] / params['before']:.1%})",
            f"  MACs   {macs['before']:,} -> {macs['after']:,} ({macs['after'] / max(macs['before'], 1):.1%})",
        ]
    else:
        wanted = lambda ratio: f", target {ratio:.2%}" if ratio is not None else ""
        achieved = target["achieved"]
        lines = [
            f"wrote {output}: {len(report['groups'])} groups pruned ({report['method']}, {target['allocation']} allocation)",
            f"  params {params['before']:,} -> {params['after']:,} ({achieved['params']:.2%}{wanted(target['params'])})",
            f"  MACs   {macs['before']:,} -> {macs['after']:,} ({achieved['macs']:.2%}{wanted(target['flops'])})",
        ]
        if target.get("compared"):
            errors = ", ".join(f"{name} {error:.4f}" for name, error in target["compared"].items())
            on = f" on {target['compared_on']}" if target.get("compared_on") else ""
            lines.append(f"  allocation checked on the whole pruned model: output error {errors}{on}; "
                         f"the {target['allocation']} one is written")
    verified, mixed = report["verified_on"], mixed_scale(report["outputs"])
    lines += [
        f"  relative output error on {verified_text(verified)}: {report['output_error']:.4f}"
        + (f"  (channel-balanced: {', '.join(mixed)} mixes scales)" if mixed else "")
        + ("  (large: see the warning below)" if report["warnings"] and report["output_error"] >= LARGE_ERROR else ""),
        "  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()),
    ]
    samples = report["samples"]
    if samples.get("augmented"):
        lines.insert(3, f"  statistics on {samples['calibration']} calibration samples and "
                        f"{samples['augmented']} augmented copies")
    if target is not None:
        lines.append(_group_table(report["groups"]))
    starved = [g["producer"] for g in report["groups"] if g["underdetermined"]]
    if starved:
        lines.append(f"  note: {len(starved)} groups had fewer calibration rows than columns: {', '.join(starved)}")
    return "\n".join(lines)


def _dry_run_summary(report: dict) -> str:
    """The allocation a dry run found and the size it predicts."""
    params, macs = report["params"], report["macs"]
    how = report["target"]["allocation"] + " allocation" if report.get("target") else (
        f"keep {report['keep']}" if report.get("keep") is not None else "given counts")
    return "\n".join([
        f"dry run, nothing written: {len(report['groups'])} groups ({report['method']}, {how})",
        f"  params {params['before']:,} -> {params['predicted']:,} predicted ({params['predicted'] / params['before']:.1%})",
        f"  MACs   {macs['before']:,} -> {macs['predicted']:,} predicted ({macs['predicted'] / max(macs['before'], 1):.1%})",
        _group_table(report["groups"]),
    ])


def _group_table(groups: list[dict]) -> str:
    """Per group: kept/channels, fraction, params and MACs of its layers, predicted loss."""
    width = max(len("group"), *(len(g["group"]) for g in groups))
    rows = [f"  {'group':<{width}}  {'kept':>9}  {'frac':>6}  {'params':>11}  {'MACs':>13}  {'pred. loss':>10}"]
    for g in groups:
        loss = "-" if g.get("predicted_loss") is None else f"{g['predicted_loss']:.4f}"
        rows.append(f"  {g['group']:<{width}}  {str(g['k']) + '/' + str(g['channels']):>9}  "
                    f"{g['fraction']:>6.1%}  {g['params']:>11,}  {g['macs']:>13,}  {loss:>10}")
    return "\n".join(rows)


@main.command("sensitivity")
@click.argument("model", type=click.Path())
@_calibration_options
@click.option("--method", default=DEFAULTS.method, show_default=True, type=click.Choice(METHODS),
              help="Ranking whose kept sets are measured (asym/seq/layer: the greedy order on the original model).")
@click.option("--min-keep", default=DEFAULT_MIN_KEEP, show_default=True, type=float, metavar="FRACTION",
              help="Smallest kept fraction measured.")
@click.option("--samples", default=DEFAULTS.sensitivity_samples, show_default=True, type=click.IntRange(min=1),
              help="Held-out samples the output error is measured on.")
@click.option("--no-refit", is_flag=True, help="Measure without the least-squares re-fit.")
@click.option("--no-bias-compensation", is_flag=True, help="Fit without an intercept.")
@click.option("--ridge", default=DEFAULTS.ridge, show_default=True, type=float, help="Ridge for selection and refit.")
@click.option("--holdout", default=DEFAULTS.holdout, show_default=True, type=_Holdout(),
              help=HOLDOUT_HELP + f" The error is measured on the held-out samples when at least {MIN_HELD_OUT}, "
                                   "else on the calibration samples (in-sample).")
@click.option("--device", default=DEFAULTS.device, show_default=True, type=click.Choice(DEVICES))
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(min=1), help="Samples per onnxruntime run.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int, help="Seed for the holdout split (or folds) and the random baseline.")
@click.option("--plot", "plot_path", type=click.Path(), metavar="FILE.png",
              help="Also draw the curves into a PNG (needs matplotlib: pip install 'onnx-subprune[plot]').")
@_group_filters
@click.option("--json", "as_json", is_flag=True, help="Print the curves as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_input_shapes
@_user_errors
def sensitivity_cmd(model, calib, method, min_keep, samples, no_refit, no_bias_compensation, ridge,
                    holdout, device, batch_size, seed, plot_path, include, exclude, select_inputs, as_json, quiet,
                    input_shapes) -> None:
    """Per-group sensitivity of MODEL: output error with one group pruned vs its kept fraction.

    Each group alone is pruned (greedy order, least-squares refit) at a few kept fractions and
    the relative error of the model's outputs is measured on held-out calibration samples; these
    curves drive --allocation sensitivity in 'prune'.

    \b
    Example:
      onnx-subprune sensitivity models/lenet5.onnx --calib models/digits_calib.npz \\
          --plot lenet5_sensitivity.png
    """
    config = PruneConfig(method=method, refit=not no_refit, bias_compensation=not no_bias_compensation,
                         ridge=ridge, holdout=holdout, batch_size=batch_size, seed=seed, device=device,
                         min_keep=min_keep, sensitivity_samples=samples, include=include, exclude=exclude,
                         select_inputs=select_inputs, input_shapes=input_shapes)
    with _Progress(not quiet) as bar:
        result = api.sensitivity_file(model, calib, config, plot_path, progress=bar, log=_note).to_json()
    _emit(result, as_json, _sensitivity_table(result))


def _fraction_label(fraction: float) -> str:
    exact = Fraction(fraction).limit_denominator(64)
    if abs(float(exact) - fraction) < 1e-9:
        return f"{exact.numerator}/{exact.denominator}"
    return f"{fraction:.3g}"


def _sensitivity_table(result: dict) -> str:
    fractions = result["fractions"]
    width = max(len("group"), *(len(g["producer"]) for g in result["groups"]))
    measured = {"samples": result["samples"]["measured"], "set": result["samples"]["measured_on"]}
    lines = [f"relative output error with one group pruned ({verified_text(measured)}), by kept fraction",
             f"  {'group':<{width}}  {'channels':>8}  " + "  ".join(f"{_fraction_label(f):>7}" for f in fractions)]
    for group in result["groups"]:
        cells = "  ".join(f"{e:>7.4f}" for e in group["by_fraction"])
        lines.append(f"  {group['producer']:<{width}}  {group['channels']:>8}  {cells}")
    if result.get("plot"):
        lines.append(f"wrote {result['plot']}")
    return "\n".join(lines)


@main.command("evaluate")
@click.argument("original", type=click.Path())
@click.argument("pruned", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help=".npz with one array per model input (and optionally labels), or .npy.")
@click.option("--labels", help="Name of the integer label array in --data, to report accuracy.")
@click.option("--device", default=DEFAULTS.device, show_default=True, type=click.Choice(DEVICES))
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
        balanced = (f", channel-balanced error {out['balanced_error']:.4f} (its channels differ in scale)"
                    if "balanced_error" in out else "")
        lines.append(f"output {name}: relative error {out['relative_error']:.4f}{balanced}, cosine {out['cosine']:.4f}{agree}")
    if "accuracy" in result:
        acc = result["accuracy"]
        lines.append(f"accuracy: original {acc['original']:.2%}, pruned {acc['pruned']:.2%}")
    for label in ("original", "pruned"):
        r = result[label]
        lines.append(f"{label:<8}: {r['params']:,} params, {r['macs']:,} MACs, "
                     f"{r['latency_ms']:.3f} ms median (batch {result['latency_batch']})")
    lines.append(f"latency pruned/original: {result['latency_ratio']:.2f}x")
    _emit(result, as_json, "\n".join(lines))
