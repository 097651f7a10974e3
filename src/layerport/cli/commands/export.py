"""``layerport export``: a layer to a verified ONNX file, through an export target (needs torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from layerport.cli.app import (
    for_each_layer,
    get_registry,
    raise_if_any_failed,
    require_dependencies,
    resolve_layer,
)
from layerport.cli.options import (
    LayerOptions,
    VerificationOptions,
    export_options,
    given_explicitly,
    json_option,
    target_options,
)
from layerport.cli.outcomes import LayerOutcome
from layerport.cli.output import note, print_export, print_export_all
from layerport.cli.report import write_report
from layerport.config import LayerConfig, resolve_config
from layerport.dtypes import QUANTIZATIONS
from layerport.errors import BadFile, VerificationFailed
from layerport.registry import RegisteredLayer, Registry
from layerport.runtime.files import check_writable_target
from layerport.targets import ExportTarget, resolve_target

if TYPE_CHECKING:
    from layerport.results import ExportResult
    from layerport.runtime.runtimes import NamedRuntime

DEFAULT_EXPORT_DIR = Path("exported")


@click.command()
@click.argument("layer", required=False)
@click.option("--all", "all_", is_flag=True, help="Export every registered layer at its defaults.")
@export_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default exported/LAYER.onnx); with --all or a repository target "
    "(triton), the folder (created if missing).",
)
@target_options
@click.option("--no-verify", is_flag=True, help="Skip verification against eager PyTorch.")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default=None,
    help="Quantize the float32 export with onnxruntime's dynamic quantizer (7-bit int8 "
    "weights, right on every x86 CPU; inputs and outputs stay float32); verified against "
    "the same quantization of the layer, its cost against float64 reported.",
)
@click.option(
    "--external-data",
    is_flag=True,
    help="Write the initializers to a data file beside the model, named after it "
    "(MODEL.onnx.data); weights past protobuf's 2 GiB limit are written so without it.",
)
@click.option(
    "--optimize",
    is_flag=True,
    help="Also try graph optimizers (onnxslim, onnxruntime's basic level) on the verified "
    "export, and keep the fastest result that keeps every dynamic dim and verifies on the "
    "full grid; the summary and the file's record say what each did.",
)
@click.option(
    "--runtimes",
    "runtimes",
    metavar="LIST",
    default=None,
    help="With --optimize: an optimized form must also verify in each of these runtimes "
    "(as verify --runtimes takes them).",
)
@click.option(
    "--form",
    metavar="NAME",
    default=None,
    help="Export in this form of the layer's instead of the standard ONNX ops: one its "
    "spec declares (show lists them; the attention layers' and decoder models' fused, "
    "onnxruntime's GroupQueryAttention). Verified as every export is.",
)
@json_option
@click.pass_context
def export(
    ctx: click.Context,
    layer: str | None,
    all_: bool,
    layer_options: LayerOptions,
    opset: int,
    verification: VerificationOptions,
    output: Path | None,
    target: str,
    target_settings: dict[str, str],
    no_verify: bool,
    quantize: str | None,
    external_data: bool,
    optimize: bool,
    runtimes: str | None,
    form: str | None,
    json_: bool,
) -> None:
    """Export a layer to ONNX, then verify it against eager PyTorch.

    Every dynamic dim stays symbolic in the file. Verification runs onnxruntime and
    eager PyTorch over a grid of sizes (1, the traced size, and a larger one per
    dynamic dim) and exits 1 on any mismatch; a file that fails is not written.

    \b
    Examples:
      layerport export rnn
      layerport export linear -p activation=sigmoid -o classifier.onnx
      layerport export --all -o exported/
      layerport export linear -p in_features=512 -p out_features=512 --quantize int8
      layerport export linear --external-data -o linear.onnx
      layerport export rnn --optimize
      layerport export llama.toml --weights llama.safetensors --form fused
    """
    require_dependencies("torch", "onnxscript")
    from layerport.plugins import get_export_targets

    if no_verify:
        for name in given_explicitly(ctx, "atol", "rtol", "trials", "report_path"):
            option = "--report" if name == "report_path" else f"--{name}"
            raise click.UsageError(f"{option} applies to verification; drop it or --no-verify")
    if quantize is not None and layer_options.dtype not in (None, "float32"):
        raise click.UsageError(
            f"--quantize {quantize} applies to a float32 export (its inputs and outputs stay "
            f"float32); drop --dtype {layer_options.dtype}"
        )
    if optimize and (no_verify or quantize is not None):
        raise click.UsageError(
            "--optimize keeps an optimized form only when it verifies, and only for a float "
            "export; drop --no-verify and --quantize"
        )
    if runtimes is not None and not optimize:
        raise click.UsageError("--runtimes applies to --optimize's verification; add --optimize")
    if form is not None and (optimize or all_):
        raise click.UsageError(
            "--form exports one layer in the form named; --optimize and --all choose forms "
            "themselves: drop one"
        )
    from layerport.runtime.runtimes import parse_runtimes, select_runtimes

    selected = select_runtimes(parse_runtimes(runtimes))[0] if runtimes else []
    optimization = _Optimization(optimize, selected)
    export_target = resolve_target(get_export_targets(), target)
    settings = export_target.resolve_options(target_settings)
    if all_:
        if layer or layer_options.given() or verification.report_path:
            raise click.UsageError(
                "--all exports every layer at its defaults; drop LAYER, -p, --dim, --weights and --report"
            )
        if "name" in target_settings:
            raise click.UsageError(
                "--target-option name=... names one model; with --all each layer's model "
                "takes the layer's name"
            )
        folder = output or _default_folder(export_target)
        _prepare_folder(folder, export_target)
        registry = get_registry()

        def export_one(layer: RegisteredLayer) -> LayerOutcome:
            config = resolve_config(
                registry, layer.qualified_name, dtype=layer_options.dtype, seed=layer_options.seed
            )
            path = export_target.output_in(folder, _file_stem(layer, registry))
            export_target.check(path, settings)
            result = _export(
                config, opset, not no_verify, verification, quantize, external_data, optimization
            )
            written = export_target.write(result, path, settings)
            for message in export_target.notes(result, settings):
                note(message)
            return LayerOutcome(layer, path=written, export=result)

        outcomes = for_each_layer("exporting", export_one, dtype=layer_options.dtype)
        print_export_all(outcomes, json_)
        raise_if_any_failed(outcomes, json_)
        return
    if not layer:
        raise click.UsageError("give a LAYER to export, or --all")
    config = resolve_layer(layer, layer_options)
    if export_target.repository:
        # -o names the repository, as with --all; the target places the model in it.
        folder = output or _default_folder(export_target)
        _prepare_folder(folder, export_target)
        output = export_target.output_in(folder, _file_stem(config.layer, get_registry()))
    elif output is None:
        _make_folder(DEFAULT_EXPORT_DIR)
        output = export_target.output_in(
            DEFAULT_EXPORT_DIR, _file_stem(config.layer, get_registry())
        )
    export_target.check(output, settings)
    if verification.report_path is not None:
        check_writable_target(verification.report_path)
    try:
        result = _export(
            config, opset, not no_verify, verification, quantize, external_data, optimization, form
        )
    except VerificationFailed as failure:
        write_report(failure.report, verification.report_path)
        raise
    written = export_target.write(result, output, settings)
    for message in export_target.notes(result, settings):
        note(message)
    write_report(result.report, verification.report_path)
    print_export(result, written, json_)


@dataclass(frozen=True)
class _Optimization:
    """``--optimize`` and the runtimes an optimized form must also verify in."""

    wanted: bool = False
    runtimes: list[NamedRuntime] = field(default_factory=list)


def _export(
    config: LayerConfig,
    opset: int,
    verify: bool,
    verification: VerificationOptions,
    quantize: str | None,
    external_data: bool = False,
    optimization: _Optimization | None = None,
    form: str | None = None,
) -> ExportResult:
    from layerport.pipeline import export_layer
    from layerport.verify.verdict import judged_tolerance

    result = export_layer(
        config,
        opset=opset,
        verify=verify,
        tolerance=judged_tolerance(config, verification.atol, verification.rtol, quantize=quantize),
        trials=verification.trials,
        quantize=quantize,
        external_data=external_data,
        optimize=optimization is not None and optimization.wanted,
        runtimes=optimization.runtimes if optimization is not None else (),
        form=form,
    )
    return result


def _default_folder(target: ExportTarget) -> Path:
    """``exported/``, or for a repository target its own folder in it (``exported/triton``)."""
    return DEFAULT_EXPORT_DIR / target.name if target.repository else DEFAULT_EXPORT_DIR


def _file_stem(layer: RegisteredLayer, registry: Registry) -> str:
    """The layer's name, qualified by its plugin when two plugins share the name."""
    clash = len(registry.providers(layer.name)) > 1
    return f"{layer.plugin.name}.{layer.name}" if clash else layer.name


def _prepare_folder(folder: Path, target: ExportTarget) -> None:
    """The folder an export writes into: created now, or by a repository target as it writes.

    A repository target creates its folder only when it writes, so an export
    refused or failed leaves no empty repository behind.
    """
    if not target.repository:
        _make_folder(folder)
        return
    if folder.exists() and not folder.is_dir():
        raise BadFile(f"{folder} is not a folder; the {target.name} target writes into a folder")
    if folder.suffix == ".onnx":
        raise BadFile(
            f"{folder} names a file; the {target.name} target writes a repository, and -o names its folder"
        )


def _make_folder(folder: Path) -> None:
    """Create an output folder (and its parents) if missing, as optimum-cli does."""
    if folder.exists() and not folder.is_dir():
        raise BadFile(f"{folder} is not a folder; exports are written into a folder")
    if folder.suffix == ".onnx":
        raise BadFile(f"{folder} names a file; with --all, -o names the folder to export into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadFile(f"cannot create folder {folder}: {error.strerror}") from error
