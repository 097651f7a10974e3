"""``inspect`` and ``infer``: any ONNX file, without torch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from layerport.cli.app import cli, json_option, output_option, report_outputs
from layerport.config import parse_dim_sizes
from layerport.defaults import OPTIMIZATION_LEVELS
from layerport.render import print_fields, print_json, print_table, warn


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def inspect(file: Path, json_: bool) -> None:
    """Describe any ONNX file: opset, inputs and outputs, ops, size, layerport metadata.

    \b
    Example:
      layerport inspect exported/rnn.onnx
    """
    from layerport.inspection import describe_model
    from layerport.limits import format_bytes

    description = describe_model(file)
    if json_:
        print_json(description)
        return
    print_fields(
        [
            ("file", description["path"]),
            (
                "size",
                f"{format_bytes(description['size'])} ({format_bytes(description['weight_bytes'])} "
                f"in {description['initializers']} initializers)",
            ),
            ("ir version", description["ir_version"]),
            ("opsets", ", ".join(f"{d} {v}" for d, v in description["opsets"].items())),
            ("producer", description["producer"] or "-"),
            (
                "nodes",
                f"{description['nodes']}: "
                + ", ".join(f"{op} {n}" for op, n in description["ops"].items()),
            ),
        ]
    )
    print_table(
        ("tensor", "kind", "dtype", "dims (* symbolic)"),
        (
            (
                value["name"] + (" (optional)" if value["optional"] else ""),
                kind,
                value["dtype"],
                " x ".join(
                    f"{d['name']}*" if d["symbolic"] else str(d["size"]) for d in value["dims"]
                ),
            )
            for kind in ("input", "output")
            for value in description[kind + "s"]
        ),
    )
    metadata = description["layerport"] or {}
    if metadata:
        rows = (
            (key, v if isinstance(v, str) else json.dumps(v, sort_keys=True))
            for key, v in metadata.items()
        )
        print_table(("layerport metadata", "value"), sorted(rows))
    else:
        click.echo("not exported by layerport (no layerport metadata)")


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy | FILE.npz",
    help="Read inputs from files (repeatable). Without it, inputs are drawn from --seed "
    "at the file's traced sizes, as 'layerport run' draws them.",
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=SIZE",
    help="With generated inputs: the size of a symbolic dim (repeatable).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=None,
    help="With generated inputs: their seed (default: the file's).",
)
@output_option
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="onnxruntime intra-op threads; 0 uses every core.",
)
@click.option(
    "--optimization",
    type=click.Choice(OPTIMIZATION_LEVELS),
    default="all",
    show_default=True,
    help="onnxruntime graph optimization level.",
)
@json_option
def infer(
    file: Path,
    inputs: Sequence[str],
    dims: Sequence[str],
    seed: int | None,
    output: Path | None,
    threads: int,
    optimization: str,
    json_: bool,
) -> None:
    """Run an ONNX file in onnxruntime, without torch.

    Optional inputs that the file's layerport metadata lists (such as the rnn's
    h0) may be left out; they are zeros.

    \b
    Examples:
      layerport infer exported/rnn.onnx
      layerport infer exported/rnn.onnx --input x=x.npy --output out.npz
    """
    from layerport.arrays import read_input_files
    from layerport.files import check_writable_target
    from layerport.runtime import SessionSettings, generated_inputs, load_model

    if output is not None:
        check_writable_target(output)
    model = load_model(file, SessionSettings(threads=threads, optimization=optimization))
    if inputs:
        if dims or seed is not None:
            raise click.UsageError(
                "--dim and --seed apply to generated inputs; drop them with --input"
            )
        arrays = read_input_files(inputs)
    else:
        arrays = generated_inputs(model, parse_dim_sizes(dims), seed)
    complete, notes = model.check_inputs(arrays)
    for note in notes:
        warn(note)
    outputs = model.run_checked(complete)
    report_outputs(
        outputs, output, json_, {"file": str(file), "inputs": "files" if inputs else "generated"}
    )
