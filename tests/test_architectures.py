"""Coupled channel groups on exported architectures (models/arch, built by
tools/build_test_architectures.py): residual stages, depthwise convolutions, SE gates,
Split/Concat, dense blocks, a transformer FFN, weights as Constant nodes, an NHWC input,
ResNeXt blocks (grouped convolutions) after a depthwise convolution with a channel multiplier."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import masked, run
from onnx_subprune.analyze import analyze
from onnx_subprune.rewrite import rewrite
from onnx_subprune.types import GroupPlan

ARCH = Path(__file__).resolve().parent.parent / "models" / "arch"
GROUPS = {
    "resnet_mixed": 9, "mobilenetv2": 5, "mobilenetv3_se": 7, "csp_split_concat": 6,
    "densenet_block": 5, "bert_layer": 2, "resnext_grouped": 4, "bert_encoder": 4,
}
MODELS = [*GROUPS, *(f"{name}_const" for name in GROUPS), "nhwc_cnn"]


def _feeds(name: str, samples: int = 6) -> dict[str, np.ndarray]:
    data = "bert_calib" if name.startswith("bert") else "nhwc_calib" if name == "nhwc_cnn" else "digits_calib_small"
    with np.load(ARCH / f"{data}.npz") as archive:
        return {"input": archive["input"][:samples]}


@pytest.mark.parametrize("name", MODELS)
def test_expected_group_count(name):
    expected = GROUPS.get(name.removesuffix("_const"), 2)
    assert len(analyze(onnx.load(ARCH / f"{name}.onnx")).groups) == expected


@pytest.mark.parametrize("name", MODELS)
def test_no_refit_rewrite_equals_masked_original(name):
    model = onnx.load(ARCH / f"{name}.onnx")
    feeds = _feeds(name)
    rng = np.random.default_rng(0)
    for group in analyze(model).groups:
        kept = tuple(sorted(rng.choice(group.channels, size=max(1, group.channels // 2), replace=False).tolist()))
        pruned = rewrite(model, [GroupPlan(group, kept)])
        onnx.checker.check_model(pruned, full_check=True)
        for got, want in zip(run(pruned, feeds), run(masked(model, group, kept), feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=group.name)


def test_skip_reasons_on_the_encoder_layer():
    skipped = {s.node: s.reason for s in analyze(onnx.load(ARCH / "bert_layer.onnx")).skipped}
    assert "not a constant" in skipped["/MatMul"]  # attention scores: no weight of their own
    assert "graph input" in skipped["/attn_out/MatMul"]  # residual stream tied to the input
    assert "LayerNormalization" in skipped["/fc2/MatMul"]


@pytest.mark.parametrize("name", ["bert_layer", "bert_layer_const", "bert_encoder", "bert_encoder_const"])
def test_attention_heads_are_groups(name):
    """Q, K and V are pruned a head (8 channels) at a time with the output projection's rows;
    the head reshapes' head count and width follow, computed (bert_layer) or constant
    (bert_encoder) shapes alike."""
    model = onnx.load(ARCH / f"{name}.onnx")
    heads = [g for g in analyze(model).groups if "q/MatMul" in g.name]
    assert len(heads) == (2 if name.startswith("bert_encoder") else 1)
    for group in heads:
        assert group.channels == 4
        assert sorted(p.node.rsplit("/", 2)[-2] for p in group.producers) == ["k", "q", "v"]
        assert [p.layout.block for p in group.producers] == [8, 8, 8]
        assert [(c.node.rsplit("/", 2)[-2], c.block) for c in group.consumers] == [("attn_out", 8)]
    pruned = rewrite(model, [GroupPlan(g, (0, 3)) for g in heads])
    onnx.checker.check_model(pruned, full_check=True)
    assert [g.channels for g in analyze(pruned).groups if "q/MatMul" in g.name] == [2] * len(heads)
    for got, want in zip(run(pruned, _feeds(name)), run(_masked_all(model, heads, (0, 3)), _feeds(name))):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def _masked_all(model, groups, kept):
    for group in groups:
        model = masked(model, group, kept)
    return model


@pytest.mark.parametrize("name", ["resnext_grouped", "resnext_grouped_const"])
def test_resnext_groups_keep_whole_conv_groups(name):
    """Each bottleneck is pruned in conv groups of 4 channels, the stem in units of a channel and
    its 2 depthwise-multiplier outputs; every grouped Conv's group count follows the units."""
    model = onnx.load(ARCH / f"{name}.onnx")
    groups = analyze(model).groups
    assert [(g.channels, g.producers[0].layout.block if g.producers[0].layout else 1) for g in groups] == [
        (8, 1), (8, 4), (32, 1), (8, 4)]
    assert [c.block for c in groups[0].consumers] == [2, 2]
    plans = [GroupPlan(g, tuple(range(0, g.channels, 2))) for g in groups]
    pruned = rewrite(model, plans)
    onnx.checker.check_model(pruned, full_check=True)
    counts = sorted(a.i for n in pruned.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert counts == [1, 1, 1, 1, 1, 1, 4, 4, 4]  # 8 -> 4 groups in the depthwise and both grouped Convs
    assert run(pruned, _feeds(name))[0].shape == (6, 10)
