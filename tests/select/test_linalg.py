"""Linear-algebra helpers of the selector (onnx_subprune/select/linalg.py)."""

import numpy as np
import pytest

from onnx_subprune.select.linalg import subtract_product


@pytest.mark.parametrize("layout", ["c", "f", "view", "float32"])
def test_subtract_product_in_place_equals_numpy(layout):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 30))
    target = {"c": base.copy(), "f": np.asfortranarray(base), "view": base.copy()[:, ::2],
              "float32": base.astype(np.float32)}[layout]
    left, right = rng.standard_normal((40, 3)), rng.standard_normal((3, target.shape[1]))
    want = target - left @ right
    before = target.__array_interface__["data"][0]
    subtract_product(target, left, right)
    assert target.__array_interface__["data"][0] == before  # updated in place
    np.testing.assert_allclose(target, want, rtol=1e-5 if layout == "float32" else 1e-12, atol=1e-5)
