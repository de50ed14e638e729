"""Plans (issue 11 item 4): every report is a plan (``prune --plan``), per-group keep fractions
(``--group-keep``) and ``prune --dry-run`` (allocation and predicted size, nothing written)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from onnx_subprune.analyze import analyze
from onnx_subprune.config import PruneConfig
from onnx_subprune.errors import SubpruneError
from onnx_subprune.graph import prepare
from onnx_subprune.pipeline import dry_run, prune
from onnx_subprune.plans import group_fractions, parse_group_keep, plan_from_json

from helpers import MODELS, invoke

LENET = MODELS / "lenet5.onnx"
FAST = ["--device", "cpu", "--quiet"]
CPU = dict(device="cpu")


def _one_error(result, contains: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and contains in lines[0], result.stderr


@pytest.fixture(scope="module")
def planned(tmp_path_factory, calib64):
    """A target-params prune of LeNet-5: its report (a plan) and the pruned model's bytes."""
    folder = tmp_path_factory.mktemp("plan")
    result = invoke("prune", LENET, "-o", folder / "a.onnx", "--calib", calib64, "--target-params", "0.3",
                    "--allocation", "uniform", "--report", folder / "a.json", *FAST)
    assert result.exit_code == 0, result.stderr
    return folder, json.loads((folder / "a.json").read_text())


def test_a_report_applied_as_plan_gives_the_same_model(planned, calib64):
    folder, report = planned
    result = invoke("prune", LENET, "-o", folder / "b.onnx", "--calib", calib64, "--plan", folder / "a.json",
                    "--report", folder / "b.json", *FAST)
    assert result.exit_code == 0, result.stderr
    again = json.loads((folder / "b.json").read_text())
    assert [g["kept"] for g in again["groups"]] == [g["kept"] for g in report["groups"]]
    assert (folder / "b.onnx").read_bytes() == (folder / "a.onnx").read_bytes()


def test_plan_counts_without_kept_channels_are_chosen_by_the_method(lenet):
    model, feeds = lenet
    config = PruneConfig(**CPU)
    groups = analyze(prepare(model)).groups
    entries = [{"group": g.name, "channels": g.channels, "k": max(1, g.channels // 4)} for g in groups]
    by_plan = prune(model, feeds, config, plan=plan_from_json({"groups": entries}))
    by_counts = prune(model, feeds, config, counts=[e["k"] for e in entries])
    assert by_plan.model.SerializeToString() == by_counts.model.SerializeToString()


def test_given_kept_channels_are_kept_and_refitted(lenet):
    model, feeds = lenet
    groups = analyze(prepare(model)).groups
    entries = [{"group": g.name, "channels": g.channels, "kept": list(range(g.channels - 2, g.channels))}
               for g in groups]
    report = prune(model, feeds, PruneConfig(**CPU), plan=plan_from_json({"groups": entries})).report
    assert [g.kept for g in report.groups] == [e["kept"] for e in entries]


def test_analyze_report_is_a_keep_all_plan(lenet):
    model, feeds = lenet
    groups = analyze(prepare(model)).groups
    plan = plan_from_json({"groups": [{"group": g.name, "channels": g.channels} for g in groups]})
    assert [g.k for g in plan.groups] == [g.channels for g in groups]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["groups"].pop(), "is not in the plan"),
    (lambda r: r["groups"][0].update(channels=r["groups"][0]["channels"] + 1), "channels in the plan"),
    (lambda r: r["groups"].append({"group": "ghost", "channels": 3, "k": 1}), "'ghost' is not a group"),
    (lambda r: r["groups"][1].update(kept=[0, 0]), "twice"),
    (lambda r: r["groups"][1].update(kept=[99], k=1), "channel indices"),
    (lambda r: r["groups"][1].update(k=2), "'kept' lists"),
    (lambda r: r.pop("groups"), "no 'groups' list"),
])
def test_a_plan_that_does_not_fit_is_one_line(planned, calib64, tmp_path, edit, message):
    folder, report = planned
    report = json.loads(json.dumps(report))
    edit(report)
    (tmp_path / "bad.json").write_text(json.dumps(report))
    result = invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--plan", tmp_path / "bad.json", *FAST)
    _one_error(result, message)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("content, message", [(None, "not found"), ("{", "cannot read plan"), ("[]", "no 'groups'")])
def test_unreadable_plan_is_one_line(calib64, tmp_path, content, message):
    if content is not None:
        (tmp_path / "p.json").write_text(content)
    result = invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--plan", tmp_path / "p.json", *FAST)
    _one_error(result, message)


def test_group_keep_overrides_matching_groups(lenet):
    model, feeds = lenet
    config = PruneConfig(keep=0.5, group_keep=(("/fc*", 0.25), ("/fc2/*", 1.0)), **CPU)
    report = prune(model, feeds, config).report
    assert {g.group: g.k for g in report.groups} == {"/conv1/Conv": 3, "/conv2/Conv": 8, "/fc1/Gemm": 30, "/fc2/Gemm": 84}


def test_group_keep_is_fixed_under_a_target(lenet):
    model, feeds = lenet
    config = PruneConfig(target_params=0.4, allocation="uniform", group_keep=(("/fc1/*", 0.5),), **CPU)
    report = dry_run(model, feeds, config)
    assert {g.group: g.k for g in report.groups}["/fc1/Gemm"] == 64  # half of 120 on the target's grid of 8
    assert report.params["predicted"] <= 0.4 * report.params["before"]


def test_group_keep_errors():
    assert parse_group_keep("/conv*/Conv=0.25") == ("/conv*/Conv", 0.25)
    for text in ("conv=0", "conv=1.5", "conv", "=0.5", "conv=x"):
        with pytest.raises(SubpruneError, match="GLOB=FRACTION"):
            parse_group_keep(text)
    groups = analyze(prepare(__import__("onnx").load(LENET))).groups
    with pytest.raises(SubpruneError, match="matches no group"):
        group_fractions([("nothing*", 0.5)], groups)


def test_group_keep_on_the_command_line(calib64, tmp_path):
    _one_error(invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--group-keep", "nope*=0.5", *FAST),
               "matches no group")
    _one_error(invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--group-keep", "fc=2", *FAST),
               "GLOB=FRACTION")


def test_dry_run_predicts_what_prune_writes(lenet):
    model, feeds = lenet
    config = PruneConfig(target_params=0.3, **CPU)
    result = prune(model, feeds, config).report
    # prune checks the measured allocation against uniform on the whole model (dry runs do not)
    plan = dry_run(model, feeds, replace(config, allocation=result.target.allocation))
    assert [g.k for g in plan.groups] == [g.k for g in result.groups]
    assert plan.params == {"before": result.params["before"], "predicted": result.params["after"]}
    assert plan.macs == {"before": result.macs["before"], "predicted": result.macs["after"]}


def test_dry_run_without_calibration_needs_none_unless_measured(lenet):
    model, _ = lenet
    plan = dry_run(model, None, PruneConfig(target_params=0.3, allocation="uniform", **CPU))
    assert plan.params["predicted"] <= 0.3 * plan.params["before"]
    with pytest.raises(SubpruneError, match="needs calibration data"):
        dry_run(model, None, PruneConfig(target_params=0.3, **CPU))


def test_dry_run_cli_writes_no_model_and_its_report_is_a_plan(calib64, tmp_path):
    result = invoke("prune", LENET, "--calib", calib64, "--keep", "0.25", "--dry-run", "--report", tmp_path / "plan.json",
                    *FAST)
    assert result.exit_code == 0, result.stderr
    assert "dry run, nothing written" in result.stdout and "predicted" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["dry_run"] and [g["k"] for g in plan["groups"]] == [2, 4, 30, 21]
    applied = invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--plan", tmp_path / "plan.json",
                     "--json", *FAST)
    assert applied.exit_code == 0, applied.stderr
    assert json.loads(applied.stdout)["params"]["after"] == plan["params"]["predicted"]


def test_prune_without_output_needs_dry_run(calib64):
    result = invoke("prune", LENET, "--calib", calib64, *FAST)
    assert result.exit_code == 2 and "--dry-run" in result.stderr


def test_plan_with_a_target_is_a_usage_error(planned, calib64, tmp_path):
    folder, _ = planned
    result = invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--plan", folder / "a.json",
                    "--keep", "0.5", *FAST)
    assert result.exit_code == 2


def test_the_plan_is_an_input_no_output_may_replace(planned, calib64, tmp_path):
    folder, report = planned
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(report))
    result = invoke("prune", LENET, "-o", tmp_path / "x.onnx", "--calib", calib64, "--plan", plan, "--report", plan, *FAST)
    _one_error(result, "it is the plan being read")
    assert json.loads(plan.read_text()) == report
