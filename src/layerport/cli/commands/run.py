"""``layerport run``: one eager forward pass (needs torch)."""

from __future__ import annotations

from pathlib import Path

import click

from layerport.cli.app import require_dependencies, resolve_layer
from layerport.cli.options import (
    LayerOptions,
    input_option,
    json_option,
    layer_options,
    output_option,
)
from layerport.cli.output import print_outputs, warn


@click.command()
@click.argument("layer")
@layer_options
@input_option
@output_option
@json_option
def run(
    layer: str,
    layer_options: LayerOptions,
    inputs: list[tuple[str | None, Path]],
    output: Path | None,
    json_: bool,
) -> None:
    """Run one eager forward pass and summarise each output.

    Without --input, inputs are drawn from a standard normal with --seed and
    optional inputs (such as the rnn's h0) are zeros.

    \b
    Examples:
      layerport run linear -p activation=sigmoid
      layerport run rnn --dim batch=2 --dim seq=100 --output out.npz
    """
    require_dependencies("torch")
    from layerport.config import bind_inputs
    from layerport.eager.build import run_layer
    from layerport.runtime.files import check_writable_target
    from layerport.runtime.npy import read_arrays

    config = resolve_layer(layer, layer_options)
    if output is not None:
        check_writable_target(output)
    if inputs:
        config, arrays, notes = bind_inputs(
            config, read_arrays(inputs), explicit_dims=layer_options.dims
        )
        for note in notes:
            warn(note)
    else:
        arrays = config.random_inputs()
    outputs = run_layer(config, arrays)
    about = {
        "layer": config.layer.qualified_name,
        "params": dict(config.params),
        "dims": dict(config.dims),
        "dtype": config.dtype,
        "seed": config.seed,
    }
    print_outputs(outputs, output, json_, about)
