"""Rewrite without refit equals the original with the removed channels' consumer weights zeroed."""

import numpy as np
import onnx
import pytest

from onnx_subprune.analyze import analyze
from onnx_subprune.rewrite import rewrite
from onnx_subprune.types import ConsumerUpdate, GroupPlan

import builders
from helpers import masked, random_feeds, run

MODELS = ["conv_bn_pool_conv", "conv_flatten_gemm", "gemm_gemm", "matmul_gelu_matmul"]


def _kept(channels: int, seed: int) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    return tuple(sorted(rng.choice(channels, size=max(1, channels // 2), replace=False).tolist()))


@pytest.mark.parametrize("name", MODELS)
def test_each_group_equals_masked_original(name):
    model = getattr(builders, name)()
    feeds = random_feeds(model, 7)
    groups = analyze(model).groups
    assert groups
    for seed, group in enumerate(groups):
        kept = _kept(group.channels, seed)
        pruned = rewrite(model, [GroupPlan(group, kept)])
        onnx.checker.check_model(pruned, full_check=True)
        for got, want in zip(run(pruned, feeds), run(masked(model, group, kept), feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_all_groups_at_once_shrink_the_model(name):
    model = getattr(builders, name)()
    groups = analyze(model).groups
    plans = [GroupPlan(g, _kept(g.channels, i)) for i, g in enumerate(groups)]
    pruned = rewrite(model, plans)
    onnx.checker.check_model(pruned, full_check=True)
    size = lambda m: sum(int(np.prod(i.dims)) for i in m.graph.initializer)
    assert size(pruned) < size(model)
    expected = masked(model, groups[0], plans[0].kept)
    outputs = run(pruned, random_feeds(model, 3))
    assert [o.shape for o in outputs] == [o.shape for o in run(expected, random_feeds(model, 3))]


def test_refit_weights_and_bias_shift_are_written():
    model = builders.matmul_gelu_matmul()
    group = analyze(model).groups[0]
    consumer = group.consumers[0]
    kept = (0, 3, 5)
    weight = np.full((3, 8), 0.25, np.float32)
    shift = np.arange(8, dtype=np.float32)
    plan = GroupPlan(group, kept, (ConsumerUpdate(consumer.node, weight, shift),))
    pruned = rewrite(model, [plan])
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}
    np.testing.assert_array_equal(inits[consumer.weight], weight)
    original_bias = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}[consumer.bias]
    np.testing.assert_allclose(inits[consumer.bias], original_bias + shift)
