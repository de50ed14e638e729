"""python -m onnx_subprune."""

from .cli import main

main()
