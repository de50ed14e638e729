"""Input selections: layers whose input no channel group reaches get their input channels
pruned through a Gather (analyze.input_selections), used by default only when the channel
groups alone cannot reach a target."""

import importlib

import numpy as np
import onnx
import pytest

from onnx_subprune.analyze import analyze
from onnx_subprune.config import PruneConfig
from onnx_subprune.errors import SubpruneError
from onnx_subprune.graph import prepare
from onnx_subprune.metrics import count_params
from onnx_subprune.pipeline import prune
from onnx_subprune.rewrite import rewrite
from onnx_subprune.types import GroupPlan

import builders
from helpers import invoke, masked, random_feeds, run, save_npz, save_onnx

analyze_module = importlib.import_module("onnx_subprune.analyze")  # the package exports a function of that name


@pytest.fixture(scope="module")
def model():
    return prepare(builders.unprunable_inputs())


def test_selections_cover_the_layers_no_group_reaches_and_come_before_the_groups_they_feed(model):
    plain = analyze(model).groups
    assert [g.name for g in plain] == ["g"]
    groups = analyze(model, select_inputs=True).groups
    assert [(g.name, g.channels, g.selects_input) for g in groups] == [
        ("y:input", 8, True), ("c:input", 32, True), ("g", 8, False)]
    conv, norm = groups[0], groups[1]
    assert conv.producers == () and [c.node for c in conv.consumers] == ["y"] and conv.lead == "y"
    assert conv.tensors[0][0] == "p" and conv.tensors[0][1].is_nchw
    assert [c.node for c in norm.consumers] == ["c", "d"] and norm.tensors[0][0] == "b"
    assert norm.changes == ("c", "d") and groups[2].changes == ("g",)


def test_a_last_axis_selection_needs_enough_outputs_to_pay_for_its_gather(model, monkeypatch):
    monkeypatch.setattr(analyze_module, "MIN_OUTPUTS_LAST_AXIS", 321)  # c and d have 320 outputs together
    assert [g.name for g in analyze(model, select_inputs=True).groups] == ["y:input", "g"]


def test_graph_inputs_and_narrow_tensors_are_not_selected(model, monkeypatch):
    monkeypatch.setattr(analyze_module, "MIN_SELECTED", 9)  # the Conv reads 8 channels
    names = [g.name for g in analyze(model, select_inputs=True).groups]
    assert names == ["c:input", "g"]  # and never "a:input": t is a graph input


@pytest.mark.parametrize("index", [0, 1])
def test_a_selection_equals_the_original_with_the_removed_inputs_zeroed(model, index):
    group = analyze(model, select_inputs=True).groups[index]
    kept = tuple(range(0, group.channels, 3))
    pruned = rewrite(model, [GroupPlan(group, kept)])
    onnx.checker.check_model(pruned, full_check=True)
    gathers = [n for n in pruned.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 1 and gathers[0].input[0] == group.tensors[0][0]
    assert count_params(pruned) < count_params(model)
    feeds = random_feeds(model, 5)
    for got, want in zip(run(pruned, feeds), run(masked(model, group, kept), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_keeping_every_channel_adds_no_gather(model):
    group = analyze(model, select_inputs=True).groups[0]
    pruned = rewrite(model, [GroupPlan(group, tuple(range(group.channels)))])
    assert not [n for n in pruned.graph.node if n.op_type == "Gather"]


def _feeds(model, samples=48):
    return random_feeds(model, samples, seed=3)


def test_auto_selects_inputs_only_when_the_groups_cannot_reach_the_target(model):
    lines = []
    reachable = prune(model, _feeds(model), PruneConfig(target_params=0.99, method="seq"), log=lines.append)
    assert [g.group for g in reachable.report.groups] == ["g"]
    assert not any("also selecting" in line for line in lines)
    result = prune(model, _feeds(model), PruneConfig(target_params=0.6, method="asym"), log=lines.append)
    assert {g.group for g in result.report.groups} == {"y:input", "c:input", "g"}
    assert any("cannot reach the target: also selecting the inputs of 2 tensors" in line for line in lines)
    assert result.report.params["after"] <= 0.6 * result.report.params["before"]
    assert result.report.output_error < 0.5
    entry = next(g for g in result.report.groups if g.group == "c:input")
    assert entry.producers == [] and entry.producer == "c"
    with pytest.raises(SubpruneError, match="target cannot be met"):
        prune(model, _feeds(model), PruneConfig(target_params=0.6, select_inputs="never"))


@pytest.mark.parametrize("method", ["layer", "seq", "asym"])
def test_always_prunes_selections_with_a_keep_fraction(model, method):
    result = prune(model, _feeds(model), PruneConfig(keep=0.5, method=method, select_inputs="always"))
    assert [(g.group, g.k) for g in result.report.groups] == [("y:input", 4), ("c:input", 16), ("g", 4)]
    feeds = _feeds(model, 6)
    for got, want in zip(run(result.model, feeds), run(model, feeds)):
        assert got.shape == want.shape


def test_a_report_with_selections_is_a_plan_for_the_same_model(model, tmp_path):
    path = save_onnx(tmp_path / "m.onnx", model)
    calib = save_npz(tmp_path / "calib.npz", **_feeds(model))
    report = tmp_path / "report.json"
    first = invoke("prune", path, "-o", tmp_path / "a.onnx", "--calib", calib, "--target-params", "0.6",
                   "--report", report, "--quiet")
    assert first.exit_code == 0, first.stderr
    again = invoke("prune", path, "-o", tmp_path / "b.onnx", "--calib", calib, "--plan", report, "--quiet")
    assert again.exit_code == 0, again.stderr
    never = invoke("prune", path, "-o", tmp_path / "c.onnx", "--calib", calib, "--target-params", "0.6",
                   "--select-inputs", "never", "--quiet")
    assert never.exit_code == 1 and "target cannot be met" in never.stderr and not (tmp_path / "c.onnx").exists()


def test_analyze_lists_selections_as_prune_would_use_them(model, tmp_path):
    path = save_onnx(tmp_path / "m.onnx", model)
    default = invoke("analyze", path)
    assert default.exit_code == 0, default.stderr
    assert "and 2 input selections, not listed" in default.stdout and "y:input" not in default.stdout
    listed = invoke("analyze", path, "--select-inputs", "always", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert '"y:input"' in listed.stdout and '"selectable": 0' in listed.stdout
    bad = invoke("analyze", path, "--select-inputs", "sometimes")
    assert bad.exit_code == 2


def _unknown_rank(opset: int) -> onnx.ModelProto:
    """A MatMul reading a Reshape whose shape is a graph input of unknown length."""
    text = f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + """g (float[N,5,32] t, int64[L] shape) => (float[N,5,300] z) {
        b = Reshape (t, shape)
        z = MatMul (b, w)
    }"""
    return prepare(builders.build(text, {"w": (32, 300)}))


def test_a_tensor_of_unknown_rank_is_selected_on_its_last_axis_from_opset_11():
    model = _unknown_rank(17)
    [group] = analyze(model, select_inputs=True).groups
    assert group.tensors[0][1].rank is None
    kept = tuple(range(0, 32, 2))
    pruned = rewrite(model, [GroupPlan(group, kept)])
    assert [a.i for n in pruned.graph.node if n.op_type == "Gather" for a in n.attribute] == [-1]
    feeds = {"t": np.random.default_rng(0).standard_normal((3, 5, 32)).astype(np.float32),
             "shape": np.array([3, 5, 32], dtype=np.int64)}
    np.testing.assert_allclose(run(pruned, feeds)[0], run(masked(model, group, kept), feeds)[0], rtol=1e-4, atol=1e-5)
    assert analyze(_unknown_rank(10), select_inputs=True).groups == ()


@pytest.mark.parametrize("name", ["unprunable_inputs", "csp_split_concat", "dense_block", "channel_slice", "ctc_head",
                                  "grouped_residual", "residual_se_block"])
def test_the_channel_groups_of_an_analysis_with_selections_are_the_plain_analysis(name):
    model = prepare(getattr(builders, name)())
    plain, found = analyze(model), analyze(model, select_inputs=True)
    assert [g.name for g in found.channel_groups().groups] == [g.name for g in plain.groups]
    assert found.skipped == plain.skipped
