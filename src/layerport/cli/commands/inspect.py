"""``layerport inspect``: describe any ONNX file (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click

from layerport.cli.options import json_option
from layerport.cli.output import print_inspection


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def inspect(file: Path, json_: bool) -> None:
    """Describe any ONNX file: opset, inputs and outputs, ops, size, layerport metadata.

    \b
    Example:
      layerport inspect exported/rnn.onnx
    """
    from layerport.runtime.inspection import describe_model

    print_inspection(describe_model(file), json_)
