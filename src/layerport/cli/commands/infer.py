"""``layerport infer``: run any ONNX file in onnxruntime (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click

from layerport.cli.options import (
    dim_option,
    input_option,
    json_option,
    output_option,
    seed_option,
    threads_option,
)
from layerport.cli.output import print_outputs, warn
from layerport.runtime import OPTIMIZATION_LEVELS, RUNTIMES


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@input_option
@dim_option
@seed_option(None, "With generated inputs: their seed (default: the file's).")
@output_option
@threads_option(0, 0, "onnxruntime intra-op threads; 0 uses every core.")
@click.option(
    "--optimization",
    type=click.Choice(OPTIMIZATION_LEVELS),
    default="all",
    show_default=True,
    help="onnxruntime graph optimization level.",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=None,
    help="What runs the file: onnxruntime's CPU provider, or onnx's reference evaluator "
    "(slow; it runs bfloat16 files onnxruntime cannot). Default: the runtime that "
    "verified the file, as its layerport metadata says, else onnxruntime.",
)
@json_option
def infer(
    file: Path,
    inputs: list[tuple[str | None, Path]],
    dims: dict[str, int],
    seed: int | None,
    output: Path | None,
    threads: int,
    optimization: str,
    runtime: str | None,
    json_: bool,
) -> None:
    """Run an ONNX file in onnxruntime, without torch.

    Without --input, inputs are drawn from --seed at the file's traced sizes
    (--dim sets a symbolic dim's size), as 'layerport run' draws them. Optional
    inputs that the file's layerport metadata lists (such as the rnn's h0) may
    be left out; they are zeros.

    \b
    Examples:
      layerport infer exported/rnn.onnx
      layerport infer exported/rnn.onnx --input x=x.npy --output out.npz
    """
    from layerport.runtime.files import check_writable_target
    from layerport.runtime.interface import generated_inputs
    from layerport.runtime.npy import read_arrays
    from layerport.runtime.session import SessionSettings, load_model

    if output is not None:
        check_writable_target(output)
    session = load_model(
        file, SessionSettings(threads=threads, optimization=optimization, runtime=runtime)
    )
    if inputs:
        if dims or seed is not None:
            raise click.UsageError(
                "--dim and --seed apply to generated inputs; drop them with --input"
            )
        arrays = read_arrays(inputs)
    else:
        arrays = generated_inputs(session, dims, seed)
    complete, notes = session.check_inputs(arrays)
    for note in notes:
        warn(note)
    outputs = session.run_checked(complete)
    print_outputs(
        outputs,
        output,
        json_,
        {
            "file": str(file),
            "inputs": "files" if inputs else "generated",
            "runtime": session.runtime,
        },
    )
