"""``layerport verify``: check a layer's export, or an exported file, at every size (needs torch)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from layerport.cli.app import get_registry, require_dependencies, resolve_layer
from layerport.cli.options import (
    LayerOptions,
    VerificationOptions,
    export_options,
    given_explicitly,
    json_option,
)
from layerport.cli.output import print_runtime_matrix, print_verification, warn
from layerport.cli.report import write_report
from layerport.errors import VerificationFailed
from layerport.runtime.files import check_writable_target
from layerport.verify.report import VerificationReport

# What each option that only applies to a layer name is called on the command line.
_LAYER_ONLY = {
    "params": "-p",
    "dtypes": "--dtype",
    "seed": "--seed",
    "opset": "--opset",
    "weights_prefix": "--weights-prefix",
}


@click.command()
@click.argument("target")
@export_options
@click.option(
    "--second-opinion",
    is_flag=True,
    help="For a file: also run it in onnx's reference evaluator, which must agree with "
    "onnxruntime (one draw per size; it is slower).",
)
@click.option(
    "--runtimes",
    "runtimes",
    metavar="LIST",
    default=None,
    help="For a file: also verify it in each of these runtimes, comma-separated, and print "
    "the matrix: ort, ort-noopt, ort-basic, ort-extended, onnx-reference, openvino, ort-cuda, "
    "or all (which skips those not installed; a runtime named but not installed exits 2).",
)
@click.option(
    "--server",
    "server",
    metavar="URL",
    default=None,
    help="Verify the model TARGET names as the Triton (KServe v2) server at URL serves it, "
    "for example 127.0.0.1:8000.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="With --server: wait up to SECONDS for the model to be ready (a server just started).",
)
@click.option(
    "--save-failures",
    "failures_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="For a file: on failure, write the first failing cases' inputs and every engine's "
    "outputs (.npz) to DIR, with the 'layerport infer' commands that rerun them.",
)
@json_option
@click.pass_context
def verify(
    ctx: click.Context,
    target: str,
    layer_options: LayerOptions,
    opset: int,
    verification: VerificationOptions,
    second_opinion: bool,
    runtimes: str | None,
    server: str | None,
    wait: float,
    failures_dir: Path | None,
    json_: bool,
) -> None:
    """Check that an export computes what eager PyTorch computes, at every size.

    TARGET is a layer name (exported in memory, then checked) or an .onnx file,
    whose recorded configuration rebuilds the eager layer (add --weights if it was
    exported from a weights file). With --server URL, TARGET is the name of a
    model that server serves: every grid point is a request to it. Exits 1 on any
    mismatch, NaN, pinned dim, or shape or dtype difference.

    \b
    Examples:
      layerport verify rnn --dim seq=64
      layerport verify exported/rnn.onnx --trials 5 --report report.md
      layerport verify exported/rnn.onnx --second-opinion
      layerport verify exported/rnn.onnx --runtimes ort,ort-noopt,onnx-reference
      layerport verify exported/rnn.onnx --save-failures failures/
      layerport verify --server 127.0.0.1:8000 rnn --wait 60
    """
    require_dependencies("torch", "onnxscript")
    from layerport.cli.failures import save_failures
    from layerport.pipeline import verify_file, verify_layer
    from layerport.runtime.runtimes import parse_runtimes, select_runtimes
    from layerport.verify import VerifyOptions
    from layerport.verify.server import verify_server
    from layerport.verify.verdict import judged_tolerance

    report_path = verification.report_path
    if report_path is not None:
        check_writable_target(report_path)
    if failures_dir is not None and (server is not None or not _is_file(target)):
        raise click.UsageError(
            "--save-failures reruns a failure with 'layerport infer', which needs a file: "
            "give an .onnx file (export the layer with --no-verify to get one)"
        )
    if runtimes is not None and (server is not None or not _is_file(target)):
        raise click.UsageError("--runtimes verifies a file in each runtime: give an .onnx file")
    if server is None and wait:
        raise click.UsageError("--wait applies to a served model: give --server URL")
    options = VerifyOptions(
        weights=layer_options.weights,
        dims=layer_options.dims,
        atol=verification.atol,
        rtol=verification.rtol,
        trials=verification.trials,
    )
    if server is not None:
        for name in given_explicitly(ctx, *_LAYER_ONLY, "second_opinion"):
            option = "--second-opinion" if name == "second_opinion" else _LAYER_ONLY[name]
            raise click.UsageError(
                f"{option} does not apply to a served model: it records its own configuration"
            )
        config, report = verify_server(get_registry(), server, target, options, wait=wait)
        _finish(report, report_path, f"{target} on {server}", json_)
        return
    # Layer names never contain "." or "/", so anything that does is a file; a
    # stray file named like a layer must not hijack the layer.
    if _is_file(target):
        for name in given_explicitly(ctx, *_LAYER_ONLY):
            raise click.UsageError(
                f"{_LAYER_ONLY[name]} does not apply to a file: it records its own configuration"
            )
        selected, skipped = select_runtimes(parse_runtimes(runtimes)) if runtimes else ([], {})
        config, report = verify_file(
            get_registry(),
            Path(target),
            options,
            second_opinion=second_opinion,
            runtimes=selected,
        )
        report.runtimes_skipped.update(skipped)
        shown = target
        if failures_dir is not None and not report.passed:
            save_failures(report, Path(target), failures_dir)
    else:
        if second_opinion:
            raise click.UsageError("--second-opinion checks a file: give an .onnx file")
        config = resolve_layer(target, layer_options)
        report = verify_layer(
            config,
            opset=opset,
            tolerance=judged_tolerance(config, verification.atol, verification.rtol),
            trials=verification.trials,
        )
        shown = report.layer
    _finish(report, report_path, shown, json_)


def _is_file(target: str) -> bool:
    return any(character in target for character in (".", "/", os.sep))


def _finish(report: VerificationReport, report_path: Path | None, shown: str, json_: bool) -> None:
    write_report(report, report_path)
    if not report.passed and not json_:
        # Which runtimes disagree where: the error line names them, the table shows them.
        print_runtime_matrix(report)
    if not report.passed:
        raise VerificationFailed(report.failure_message(), report=report)
    for note in report.notes:
        warn(note)
    print_verification(report, shown, json_)
