"""``export`` and ``verify``: the ONNX file and the proof that it computes what eager does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from layerport.cli.app import (
    F,
    cli,
    config_from_options,
    for_each_layer,
    get_registry,
    json_option,
    layer_options,
    option_group,
    raise_if_any_failed,
    require_export_dependencies,
)
from layerport.config import LayerConfig, parse_dim_sizes, resolve_config
from layerport.defaults import (
    DEFAULT_OPSET,
    DEFAULT_TRIALS,
    SUPPORTED_OPSETS,
)
from layerport.errors import (
    BadFile,
    VerificationFailed,
)
from layerport.registry import RegisteredLayer, Registry
from layerport.render import print_fields, print_json, print_table

# ---------------------------------------------------------------------------
# export, verify, inspect, infer

DEFAULT_EXPORT_DIR = Path("exported")


verification_options = option_group(
    "--atol, --rtol, --trials and --report: how verification judges and reports.",
    click.option(
        "--atol",
        type=click.FloatRange(min=0),
        default=None,
        help="Absolute tolerance (default: the layer's, by dtype).",
    ),
    click.option(
        "--rtol",
        type=click.FloatRange(min=0),
        default=None,
        help="Relative tolerance (default: the layer's, by dtype).",
    ),
    click.option(
        "--trials",
        type=click.IntRange(1, 100),
        default=DEFAULT_TRIALS,
        show_default=True,
        help="Random input draws at each grid point.",
    ),
    click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Write a Markdown verification report to this file.",
    ),
)


def opset_option(function: F) -> F:
    from_opset, to_opset = SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1
    return click.option(
        "--opset",
        type=click.IntRange(from_opset, to_opset),
        default=DEFAULT_OPSET,
        show_default=True,
        help="ONNX opset to export to.",
    )(function)


def _tolerance(config: LayerConfig, atol: float | None, rtol: float | None) -> Any:
    from layerport.spec import Tolerance

    default = config.spec.tolerance(config.dtype)
    return Tolerance(
        atol=default.atol if atol is None else atol, rtol=default.rtol if rtol is None else rtol
    )


def _write_report(report: Any, path: Path | None) -> None:
    if report is not None and path is not None:
        from layerport.files import atomic_write_bytes

        atomic_write_bytes(path, report.to_markdown().encode())


def _export_summary(result: Any, path: Path | None) -> dict[str, Any]:
    report = result.report
    return {
        "layer": result.config.layer.qualified_name,
        "name": result.config.spec.name,
        "path": str(path) if path else None,
        "size": result.size,
        "weight_bytes": result.config.weight_bytes(),
        "nodes": result.node_count,
        "opset": result.record.opset,
        "dtype": result.config.dtype,
        "dynamic_dims": dict(result.config.dims),
        "verified": report is not None,
        "max_abs_error": report.max_abs_error() if report else None,
        "verification": report.summary() if report else None,
        "export_seconds": round(result.export_seconds, 3),
        "verify_seconds": round(result.verify_seconds, 3),
    }


def _print_export_summary(summary: dict[str, Any]) -> None:
    from layerport.limits import format_bytes

    verification = summary["verification"]
    if verification is None:
        verified = "not verified (--no-verify)"
    else:
        grid = ", ".join(f"{name} {sizes}" for name, sizes in verification["grid"].items())
        streaming = f"; streaming {verification['streaming']}" if verification["streaming"] else ""
        verified = (
            f"passed: max abs error {summary['max_abs_error']:.3g} over "
            f"{verification['cases']} cases ({grid}{streaming})"
        )
    print_fields(
        [
            ("exported", summary["path"] or "(not written)"),
            ("layer", summary["layer"]),
            (
                "size",
                f"{format_bytes(summary['size'])} ({format_bytes(summary['weight_bytes'])} of weights)",
            ),
            ("nodes", summary["nodes"]),
            ("opset", summary["opset"]),
            (
                "dynamic dims",
                ", ".join(f"{n} (traced at {s})" for n, s in summary["dynamic_dims"].items())
                or "none",
            ),
            ("verification", verified),
        ]
    )


def _default_export_path(layer: Any, registry: Registry, folder: Path) -> Path:
    clash = len(registry.providers(layer.name)) > 1
    return folder / (f"{layer.plugin.name}.{layer.name}.onnx" if clash else f"{layer.name}.onnx")


@cli.command()
@click.argument("layer", required=False)
@click.option("--all", "all_", is_flag=True, help="Export every registered layer at its defaults.")
@layer_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default exported/LAYER.onnx); with --all, the folder.",
)
@opset_option
@click.option("--no-verify", is_flag=True, help="Skip verification against eager PyTorch.")
@verification_options
@json_option
@click.pass_context
def export(
    ctx: click.Context,
    layer: str | None,
    all_: bool,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    output: Path | None,
    opset: int,
    no_verify: bool,
    atol: float | None,
    rtol: float | None,
    trials: int,
    report_path: Path | None,
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
    """
    require_export_dependencies()
    from layerport.export import export_layer

    if no_verify:
        for name in ("atol", "rtol", "trials", "report_path"):
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                option = "--report" if name == "report_path" else f"--{name}"
                raise click.UsageError(f"{option} applies to verification; drop it or --no-verify")
    if all_:
        if layer or params or dims or weights or report_path:
            raise click.UsageError(
                "--all exports every layer at its defaults; drop LAYER, -p, --dim, --weights and --report"
            )
        _export_all(
            output or DEFAULT_EXPORT_DIR,
            dtype,
            seed,
            opset,
            not no_verify,
            atol,
            rtol,
            trials,
            json_,
        )
        return
    if not layer:
        raise click.UsageError("give a LAYER to export, or --all")
    config = config_from_options(layer, params, dims, dtype, seed, weights)
    if output is None:
        _check_export_folder(DEFAULT_EXPORT_DIR)
        output = _default_export_path(config.layer, get_registry(), DEFAULT_EXPORT_DIR)
    from layerport.files import check_writable_target

    check_writable_target(output)
    if report_path is not None:
        check_writable_target(report_path)
    try:
        result = export_layer(
            config,
            opset=opset,
            verify=not no_verify,
            tolerance=_tolerance(config, atol, rtol),
            trials=trials,
        )
    except VerificationFailed as failure:
        _write_report(failure.report, report_path)
        raise
    result.write(output)
    _write_report(result.report, report_path)
    summary = _export_summary(result, output)
    if json_:
        print_json(summary)
    else:
        _print_export_summary(summary)


def _check_export_folder(folder: Path) -> None:
    """An output folder must exist; only the default ``exported/`` is created on demand."""
    if folder.exists() and not folder.is_dir():
        raise BadFile(f"{folder} is not a folder; exports are written into a folder")
    if not folder.exists():
        if folder != DEFAULT_EXPORT_DIR:
            raise BadFile(f"output folder {folder} does not exist")
        folder.mkdir()


def _export_all(
    folder: Path,
    dtype: str,
    seed: int,
    opset: int,
    verify: bool,
    atol: float | None,
    rtol: float | None,
    trials: int,
    json_: bool,
) -> None:
    """Export every registered layer in one process; one failure does not stop the rest."""
    from layerport.export import export_layer
    from layerport.limits import format_bytes

    registry = get_registry()
    _check_export_folder(folder)

    def export_one(layer: RegisteredLayer) -> dict[str, Any]:
        path = _default_export_path(layer, registry, folder)
        config = resolve_config(registry, layer.qualified_name, dtype=dtype, seed=seed)
        tolerance = _tolerance(config, atol, rtol)
        result = export_layer(
            config, opset=opset, verify=verify, tolerance=tolerance, trials=trials
        )
        result.write(path)
        return _export_summary(result, path)

    rows = for_each_layer("exporting", export_one)
    if json_:
        print_json(rows)
    else:
        print_table(
            ("layer", "file", "size", "nodes", "dynamic dims", "max abs error", "time", "status"),
            (
                (
                    row["name"],
                    row.get("path"),
                    format_bytes(row["size"]) if "size" in row else None,
                    row.get("nodes"),
                    ", ".join(row.get("dynamic_dims", {})) or None,
                    row.get("max_abs_error"),
                    f"{row['export_seconds'] + row['verify_seconds']:.1f} s"
                    if "export_seconds" in row
                    else None,
                    row["status"] if row["status"] == "ok" else f"failed: {row['error']}",
                )
                for row in rows
            ),
        )
    raise_if_any_failed(rows)


@cli.command()
@click.argument("target")
@layer_options
@opset_option
@verification_options
@json_option
@click.pass_context
def verify(
    ctx: click.Context,
    target: str,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    opset: int,
    atol: float | None,
    rtol: float | None,
    trials: int,
    report_path: Path | None,
    json_: bool,
) -> None:
    """Check that an export computes what eager PyTorch computes, at every size.

    TARGET is a layer name (exported in memory, then checked) or an .onnx file,
    whose recorded configuration rebuilds the eager layer (add --weights if it was
    exported from a weights file). Exits 1 on any mismatch, NaN, pinned dim, or
    shape or dtype difference.

    \b
    Examples:
      layerport verify rnn --dim seq=64
      layerport verify exported/rnn.onnx --trials 5 --report report.md
    """
    from layerport.files import check_writable_target

    if report_path is not None:
        check_writable_target(report_path)
    # Layer names never contain "." or "/", so anything that does is a file; a
    # stray file named like a layer must not hijack the layer.
    if any(character in target for character in (".", "/", os.sep)):
        for name in ("params", "dtype", "seed", "opset"):
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                option = {"params": "-p", "dtype": "--dtype", "seed": "--seed", "opset": "--opset"}[
                    name
                ]
                raise click.UsageError(
                    f"{option} does not apply to a file: it records its own configuration"
                )
        report, path = _verify_file(Path(target), weights, dims, atol, rtol, trials), target
    else:
        require_export_dependencies()
        from layerport.export import export_layer

        config = config_from_options(target, params, dims, dtype, seed, weights)
        try:
            result = export_layer(
                config, opset=opset, tolerance=_tolerance(config, atol, rtol), trials=trials
            )
        except VerificationFailed as failure:
            _write_report(failure.report, report_path)
            raise
        report, path = result.report, None
    _write_report(report, report_path)
    if not report.passed:
        raise VerificationFailed(report.failure_message(), report=report)
    _print_verification(report, path, json_)


def _verify_file(
    path: Path,
    weights: Path | None,
    dims: Sequence[str],
    atol: float | None,
    rtol: float | None,
    trials: int,
) -> Any:
    require_export_dependencies()
    from layerport.build import build_module
    from layerport.config import config_from_record
    from layerport.runtime import load_model
    from layerport.verify import verify_export

    model = load_model(path)
    if model.record is None:
        raise BadFile(
            f"{path} was not exported by layerport (it has no layerport metadata), so "
            "verify cannot rebuild its layer; 'layerport inspect' and 'infer' still work on it"
        )
    config = config_from_record(
        get_registry(), model.record, weights=weights, dims=parse_dim_sizes(dims)
    )
    module = build_module(config)
    return verify_export(
        config, module, model, config.dims, tolerance=_tolerance(config, atol, rtol), trials=trials
    )


def _print_verification(report: Any, path: str | None, json_: bool) -> None:
    if json_:
        print_json({"target": path or report.layer, **report.summary(), "worst": report.worst()})
        return
    summary = report.summary()
    print_fields(
        [
            ("verified", path or report.layer),
            (
                "result",
                f"passed: {summary['cases']} cases, atol {summary['atol']:g}, rtol {summary['rtol']:g}",
            ),
            ("grid", ", ".join(f"{n} {s}" for n, s in summary["grid"].items()) or "fixed shape"),
            ("streaming", summary["streaming"] or "not applicable"),
        ]
    )
    print_table(
        ("output", "max abs error", "max rel error", "worst case"),
        (
            (name, worst["max_abs_error"], worst["max_rel_error"], worst["case"])
            for name, worst in report.worst().items()
        ),
    )
