"""onnx_subprune.select must import without onnx, onnxruntime, onnx_graphsurgeon or click."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = {"onnx", "onnxruntime", "onnx_graphsurgeon", "click"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    import onnx_subprune.select
    import onnx_subprune.select.reference

    try:
        import onnx
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not block onnx")
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok")
    """
)


def test_select_imports_without_onnx_or_click():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
