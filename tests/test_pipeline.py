"""End-to-end pruning through the Python API, checked against direct computation."""


import numpy as np
import onnx
import pytest

import builders
from helpers import random_feeds, run
from onnx_subprune.calibrate import split_samples
from onnx_subprune.config import PruneConfig
from onnx_subprune.pipeline import prune

CPU = dict(device="cpu")


def _explained(pruned_out, original_out, bias):
    return 1 - np.sum((pruned_out - original_out) ** 2) / np.sum((original_out - bias) ** 2)


def _assert_explained_is_measured(model, pruned, feeds, group, bias) -> None:
    """The group's reported explained variance (calibration and holdout, the split of 60 samples
    at 0.25 with seed 4) is the one measured at the graph output its consumer writes."""
    split = split_samples(60, 0.25, 4)
    for key, indices in (("explained", split.calibration), ("explained_holdout", split.holdout)):
        subset = {k: v[indices] for k, v in feeds.items()}
        (want,) = run(model, subset)
        (got,) = run(pruned, subset)
        assert getattr(group, key) == pytest.approx(_explained(got, want, bias), abs=1e-5)


@pytest.mark.parametrize("bias_compensation", [True, False])
def test_reported_explained_variance_is_the_direct_one(bias_compensation):
    model = builders.matmul_gelu_matmul()  # one group; its consumer's output is the graph output
    feeds = random_feeds(model, 60)
    config = PruneConfig(keep=0.5, holdout=0.25, bias_compensation=bias_compensation, seed=4, **CPU)
    result = prune(model, feeds, config)
    (group,) = result.report.groups
    bias = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b2"))
    _assert_explained_is_measured(model, result.model, feeds, group, bias)
    assert len(group.kept) == 8 and group.kept == sorted(group.kept)


def test_more_channels_explain_more():
    model = builders.matmul_gelu_matmul()
    feeds = random_feeds(model, 50)
    explained = [prune(model, feeds, PruneConfig(keep=k, holdout=0, ridge=0, **CPU)).report.groups[0].explained
                 for k in (0.25, 0.5, 0.75, 1.0)]
    assert explained == sorted(explained) and explained[-1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["asym", "seq", "layer", "weight-norm", "activation-norm", "random"])
def test_refit_beats_no_refit_on_lenet(lenet, method):
    model, feeds = lenet
    errors = {refit: prune(model, feeds, PruneConfig(keep=0.5, method=method, refit=refit, **CPU)).report.output_error
              for refit in (True, False)}
    assert errors[True] < errors[False]


def test_asym_beats_weight_norm_on_lenet(lenet):
    model, feeds = lenet
    error = lambda method: prune(model, feeds, PruneConfig(keep=0.25, method=method, **CPU)).report.output_error
    assert error("asym") < error("weight-norm")


def test_same_seed_same_model(lenet):
    model, feeds = lenet
    first = prune(model, feeds, PruneConfig(keep=0.5, method="random", seed=3, **CPU))
    second = prune(model, feeds, PruneConfig(keep=0.5, method="random", seed=3, **CPU))
    assert first.model.SerializeToString() == second.model.SerializeToString()
    other = prune(model, feeds, PruneConfig(keep=0.5, method="random", seed=4, **CPU))
    assert [g.kept for g in other.report.groups] != [g.kept for g in first.report.groups]


def test_report_totals(lenet):
    model, feeds = lenet
    report = prune(model, feeds, PruneConfig(keep=0.5, **CPU)).report
    assert report.params["after"] < report.params["before"]
    assert report.macs["after"] < report.macs["before"]
    assert report.provider == "CPUExecutionProvider"
    assert report.samples == {"calibration": 102, "holdout": 26, "holdout_kind": "fixed"}
    assert list(report.seconds) == ["analyze", "capture", "select", "rewrite", "verify"]  # in the order they run
    assert [g.channels for g in report.groups] == [6, 16, 120, 84]
    assert [len(g.kept) for g in report.groups] == [3, 8, 60, 42]
    assert report.groups[1].underdetermined  # 102 samples, 400 columns after Flatten


def test_stage_seconds_count_the_original_outputs(monkeypatch):
    """The original model's outputs that the pruned one is verified against are verification
    time too (before, that forward pass was in no stage: the stages summed to one forward pass
    less than the run took)."""
    import time

    from onnx_subprune import pipeline

    model = builders.matmul_gelu_matmul()
    config = PruneConfig(keep=0.5, method="seq", **CPU)  # asym takes them from its capture (next test)
    plain = prune(model, random_feeds(model, 60), config).report.seconds
    real = pipeline.predict

    def size(candidate: onnx.ModelProto) -> int:
        return sum(int(np.prod(init.dims)) for init in candidate.graph.initializer)

    def slow(candidate, *args, **kwargs):
        if size(candidate) == size(model):
            time.sleep(0.5)  # the original model's outputs (the pruned model is smaller)
        return real(candidate, *args, **kwargs)

    monkeypatch.setattr(pipeline, "predict", slow)
    seconds = prune(model, random_feeds(model, 60), config).report.seconds
    assert seconds["verify"] >= 0.5 > plain["verify"]


@pytest.mark.parametrize("build", [builders.csp_residual, builders.shared_input_heads, builders.two_inputs])
def test_asym_verifies_against_the_original_outputs_its_capture_computed(build, monkeypatch):
    """asym computes the original model on the calibration samples anyway: with no held-out
    samples, the outputs the pruned model is verified against come from that capture (only the
    part after the last group's consumers is run for them), not from another forward pass, and
    equal those of one."""
    from onnx_subprune import pipeline
    from onnx_subprune.frontier import Frontier

    model = build()
    feeds = random_feeds(model, 40)
    config = PruneConfig(keep=0.5, method="asym", **CPU)
    calls, parts, verifying = [], [], []
    real = pipeline.predict
    monkeypatch.setattr(pipeline, "predict", lambda m, *a, **k: calls.append(len(m.graph.node)) or real(m, *a, **k))
    outputs_from, submodel = pipeline._outputs_from, Frontier._submodel
    monkeypatch.setattr(pipeline, "_outputs_from", lambda *a: verifying.append(1) or outputs_from(*a))

    def recorded(self, *args, **kwargs):  # the parts built while verifying
        part = submodel(self, *args, **kwargs)
        if verifying:
            parts.append(part)
        return part

    monkeypatch.setattr(Frontier, "_submodel", recorded)
    fast = prune(model, feeds, config)
    assert len(calls) == 1  # the pruned model only
    first = model.graph.node[0].output[0]  # computed by the capture when a group came before the last
    assert verifying and (len(fast.report.groups) == 1 or
                          not any(first in {o for n in part.graph.node for o in n.output} for part in parts))
    monkeypatch.setattr(pipeline, "_reference_on_the_way", lambda run, verified: False)
    slow = prune(model, feeds, config)
    assert len(calls) == 3
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert fast.report.output_error == pytest.approx(slow.report.output_error, rel=1e-6, abs=1e-9)
    for name, got in fast.report.outputs.items():
        assert got == pytest.approx(slow.report.outputs[name], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", ["asym", "layer"])
def test_groups_keeping_every_channel_are_left_as_they_are(lenet, method):
    """keep 1.0: no group loses a channel, so no weight changes and the outputs are the same
    bit for bit (a refit would move them by its ridge)."""
    model, feeds = lenet
    result = prune(model, feeds, PruneConfig(keep=1.0, method=method, **CPU))
    subset = {k: v[:16] for k, v in feeds.items()}
    for before, after in zip(run(model, subset), run(result.model, subset)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("options", [dict(keep=0.5), dict(keep=0.5, method="weight-norm"),
                                     dict(target_params=0.6), dict(target_params=0.6, allocation="uniform")],
                         ids=["asym", "weight-norm", "target-sensitivity", "target-uniform"])
def test_grouped_convs_prune_end_to_end(options):
    """ResNeXt blocks and a depthwise multiplier through capture, selection, refit, rewrite and
    the size model's check (an InternalError if its prediction missed the written model)."""
    from helpers import ARCH

    model = onnx.load(ARCH / "resnext_grouped.onnx")
    with np.load(ARCH / "digits_calib_small.npz") as archive:
        feeds = {"input": archive["input"]}
    result = prune(model, feeds, PruneConfig(seed=0, **options, **CPU))
    onnx.checker.check_model(result.model, full_check=True)
    report = result.report
    assert report.params["after"] < report.params["before"]
    if "target_params" in options:
        assert report.params["after"] <= 0.6 * report.params["before"]
    assert [g.channels for g in report.groups] == [8, 8, 32, 8]
    assert report.output_error < 1.0


@pytest.mark.parametrize("bias_compensation", [True, False])
def test_explained_variance_of_a_grouped_conv_group_is_the_direct_one(bias_compensation):
    """Units of 2 channels (one conv group of a group=4 Conv, 3 outputs each) at a 3x3 consumer
    whose output is the graph output: the reported explained variance is the measured one."""
    text = builders.header("float[N,3,5,5] x", "float[N,5,5,5] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        ar = Relu (a)
        g = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (ar, wg, bg)
        gr = Relu (g)
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (gr, w3, b3)
    }"""
    model = builders.build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "wg": (12, 2, 3, 3), "bg": (12,),
                                  "w3": (5, 12, 3, 3), "b3": (5,)})
    feeds = random_feeds(model, 60)
    config = PruneConfig(keep=0.5, holdout=0.25, bias_compensation=bias_compensation, seed=4, **CPU)
    result = prune(model, feeds, config)
    (group,) = result.report.groups
    assert group.channels == 4 and len(group.kept) == 2
    bias = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b3")).reshape(1, -1, 1, 1)
    _assert_explained_is_measured(model, result.model, feeds, group, bias)


@pytest.mark.parametrize("name", ["resnet_mixed", "mobilenetv2"])
def test_a_group_keeping_every_channel_leaves_its_consumers_as_they_are(name):
    """Half of the groups keep every channel, the others half of theirs: a consumer that reads
    only full groups keeps its weights (no refit, no new bias; its outputs may still be sliced
    as a producer), and the size model counts exactly that (prune raises otherwise)."""
    from onnx import numpy_helper

    from onnx_subprune.analyze import analyze
    from onnx_subprune.pipeline import refitted_consumers
    from test_architectures import ARCH, _feeds

    model = onnx.load(ARCH / f"{name}.onnx")
    groups = analyze(model).groups
    counts = [g.channels if i % 2 == 0 else max(1, g.channels // 2) for i, g in enumerate(groups)]
    result = prune(model, _feeds(name, 32), PruneConfig(method="asym", holdout=0, **CPU), counts=counts)
    untouched = {c.node for g in groups for c in g.consumers} - refitted_consumers(counts, groups)
    assert untouched
    before = {n.name: n for n in model.graph.node}
    values = lambda m: {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    old, new = values(model), values(result.model)
    for node in result.model.graph.node:
        if node.name in untouched and node.op_type == "Conv":
            original = old[before[node.name].input[1]]
            weight = new[node.input[1]]
            assert weight.shape[1:] == original.shape[1:] and len(node.input) == len(before[node.name].input)
            assert all(any(np.array_equal(row, kept) for kept in original) for row in weight), node.name


def test_default_on_few_samples_fits_on_all_and_cross_validates():
    """Below 128 samples the default holds none out: the fit is the one on every sample (as with
    holdout 0) and each group reports the 4-fold cross-validated explained variance. (With the
    least-squares refit: the default shrink "cv" chooses per consumer only where there are folds,
    test_default_refit_is_the_cross_validated_choice.)"""
    model = builders.matmul_gelu_matmul()
    feeds = random_feeds(model, 40)
    auto, everything = (prune(model, feeds, PruneConfig(keep=0.5, shrink="none", **CPU, **more))
                        for more in ({}, {"holdout": 0}))
    assert auto.report.samples == {"calibration": 40, "holdout": 0, "holdout_kind": "cv-4"}
    assert everything.report.samples["holdout_kind"] == "none"
    assert auto.report.verified_on == {"samples": 40, "set": "calibration"}
    (group,), (same,) = auto.report.groups, everything.report.groups
    assert group.kept == same.kept and group.rows == same.rows
    assert group.explained == pytest.approx(same.explained, abs=1e-6) and same.explained_holdout is None
    assert 0 < group.explained_holdout < group.explained
    for mine, theirs in zip(auto.model.graph.initializer, everything.model.graph.initializer):
        mine, theirs = onnx.numpy_helper.to_array(mine), onnx.numpy_helper.to_array(theirs)
        assert np.linalg.norm(mine - theirs) <= 1e-4 * np.linalg.norm(theirs)  # float32 sums, another order


def test_cross_validation_tells_when_the_in_sample_error_is_optimistic(lenet):
    """On 24 samples at 1/8 of the channels the refit fits the samples it saw far better than the
    folds it did not: a warning says the in-sample output error is optimistic. A fixed holdout
    measures the error itself, and gives no such warning."""
    model, feeds = lenet
    few = {name: array[:24] for name, array in feeds.items()}
    auto = prune(model, few, PruneConfig(keep=0.125, **CPU)).report
    assert auto.samples["holdout_kind"] == "cv-4"
    (line,) = [w for w in auto.warnings if "overfits" in w]
    assert "24 calibration samples" in line and "cross-validated" in line and "--holdout 0.2" in line
    fixed = prune(model, few, PruneConfig(keep=0.125, holdout=0.2, **CPU)).report
    assert not [w for w in fixed.warnings if "overfits" in w]


def test_an_error_bound_is_checked_on_held_out_samples_at_any_count(lenet):
    """--max-error with holdout auto holds 20% out even below 128 samples: the bound is then on
    samples the fit did not see."""
    model, feeds = lenet
    few = {name: array[:40] for name, array in feeds.items()}
    report = prune(model, few, PruneConfig(keep=0.9, max_error=10.0, **CPU)).report
    assert report.samples == {"calibration": 32, "holdout": 8, "holdout_kind": "fixed"}
    assert report.verified_on == {"samples": 8, "set": "held-out"}


def test_default_refit_is_the_cross_validated_choice(lenet):
    """shrink "cv" (the default): with folds (below 128 samples), each group's cross-validated
    explained variance is at least that of the least-squares and of the shrunk refit, since each
    consumer keeps the better of the two (layer: every group sees the original activations, so
    the three runs choose the same channels); with a fixed holdout it is the least-squares refit."""
    model, feeds = lenet
    few = {name: array[:24] for name, array in feeds.items()}
    assert PruneConfig().shrink == "cv"
    runs = {shrink: prune(model, few, PruneConfig(keep=0.25, method="layer", shrink=shrink, **CPU)).report
            for shrink in ("cv", "none", "refit")}
    assert runs["cv"].samples["holdout_kind"] == "cv-4"
    for chosen, plain, shrunk in zip(*(runs[s].groups for s in ("cv", "none", "refit"))):
        assert chosen.kept == plain.kept == shrunk.kept
        assert chosen.explained_holdout >= max(plain.explained_holdout, shrunk.explained_holdout) - 1e-9
    fixed = [prune(model, feeds, PruneConfig(keep=0.25, shrink=s, holdout=0.2, **CPU)).model.SerializeToString()
             for s in ("cv", "none")]
    assert fixed[0] == fixed[1]


def test_a_scalar_calibration_input_is_fed_as_one_value():
    """A model input that is not per sample (silero-vad's sample rate) is given once, as a 0-d
    array, through the Python API too: every batch gets the value."""
    text = builders.header("float[N,10] x, float sr", "float[N,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        c = Mul (b, sr)
        y = Gemm <transB = 1> (c, w2, b2)
    }"""
    model = builders.build(text, {"w1": (6, 10), "b1": (6,), "w2": (3, 6), "b2": (3,)})
    x = np.random.default_rng(0).normal(size=(20, 10)).astype(np.float32)
    result = prune(model, {"x": x, "sr": np.array(3.0, np.float32)}, PruneConfig(keep=1.0, device="cpu", batch_size=8))
    assert result.report.output_error < 1e-5
    assert result.report.samples["calibration"] == 20

def test_a_schedule_without_the_originals_frontier_still_verifies(monkeypatch):
    """Where the capture gives no original outputs after all (seq has no original frontier),
    the pruned model is verified against a forward pass of the original, as before."""
    from onnx_subprune import pipeline

    model = builders.csp_residual()
    feeds = random_feeds(model, 40)
    config = PruneConfig(keep=0.5, method="seq", **CPU)
    plain = prune(model, feeds, config).report
    monkeypatch.setattr(pipeline, "_reference_on_the_way", lambda run, verified: True)
    forced = prune(model, feeds, config).report
    assert forced.output_error == pytest.approx(plain.output_error, rel=1e-9)
