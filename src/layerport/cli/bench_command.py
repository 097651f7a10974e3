"""``bench``: eager PyTorch against the export in onnxruntime, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from layerport.cli.app import (
    cli,
    config_from_options,
    for_each_layer,
    get_registry,
    json_option,
    layer_options,
    raise_if_any_failed,
    require_export_dependencies,
)
from layerport.config import resolve_config
from layerport.defaults import DEFAULT_BENCH_THREADS
from layerport.registry import RegisteredLayer
from layerport.render import print_fields, print_json, print_table, warn

# ---------------------------------------------------------------------------
# bench: eager PyTorch against the export in onnxruntime


@cli.command()
@click.argument("layer", required=False)
@click.option(
    "--all", "all_", is_flag=True, help="Benchmark every registered layer at its defaults."
)
@layer_options
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_BENCH_THREADS,
    show_default=True,
    help="Intra-op threads for torch and onnxruntime alike.",
)
@click.option(
    "--min-time",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Time each engine at least this long (and at least 30 calls).",
)
@click.option(
    "--startup",
    is_flag=True,
    help="Also time 'layerport --help' against 'python -c \"import torch\"' (5 runs each).",
)
@json_option
def bench(
    layer: str | None,
    all_: bool,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    threads: int,
    min_time: float,
    startup: bool,
    json_: bool,
) -> None:
    """Time eager PyTorch against the exported model in onnxruntime.

    Exports the layer (without verification; the engines' outputs on the
    benchmark inputs are checked against eager instead), then times the layer's
    eager module, the layer's reference implementation if it declares one (for
    the rnn: torch.nn.RNN + nn.Linear with the same weights) and onnxruntime, on
    the same inputs and thread count. Engines take turns in short blocks, so a
    busy machine slows them alike; the ratio column is onnxruntime's median
    latency over each engine's (below 1: onnxruntime is faster).

    \b
    Examples:
      layerport bench rnn --dim batch=64 --dim seq=256
      layerport bench linear -p in_features=4096 -p out_features=4096 --dim batch=64
      layerport bench --all --startup --json
    """
    require_export_dependencies()
    from layerport.bench import TimingSettings, bench_layer, measure_startup

    if all_ and (layer or params or dims or weights):
        raise click.UsageError(
            "--all benchmarks every layer at its defaults; drop LAYER, -p, --dim and --weights"
        )
    if not (layer or all_ or startup):
        raise click.UsageError("give a LAYER to benchmark, --all, or --startup")
    timing = TimingSettings(min_seconds=min_time)
    rows: list[dict[str, Any]] = []
    if all_:
        rows = _bench_all(dtype, seed, threads, timing)
    elif layer:
        config = config_from_options(layer, params, dims, dtype, seed, weights)
        rows = [bench_layer(config, threads=threads, timing=timing).to_dict()]
    startup_times = measure_startup().to_dict() if startup else None
    for note in dict.fromkeys(note for row in rows for note in row.get("notes", [])):
        warn(note)
    if json_:
        if all_:
            print_json({"layers": rows, "startup": startup_times})
        elif rows:
            print_json({**rows[0], **({"startup": startup_times} if startup else {})})
        else:
            print_json({"startup": startup_times})
    else:
        _print_bench(rows, startup_times, all_)
    raise_if_any_failed(rows)


def _bench_all(dtype: str, seed: int, threads: int, timing: Any) -> list[dict[str, Any]]:
    from layerport.bench import bench_layer

    def bench_one(layer: RegisteredLayer) -> dict[str, Any]:
        config = resolve_config(get_registry(), layer.qualified_name, dtype=dtype, seed=seed)
        return bench_layer(config, threads=threads, timing=timing).to_dict()

    return for_each_layer("benchmarking", bench_one)


def _print_bench(rows: list[dict[str, Any]], startup: dict[str, Any] | None, all_: bool) -> None:
    from layerport.limits import format_bytes

    if len(rows) == 1 and not all_:
        row = rows[0]
        print_fields(
            [
                ("layer", row["layer"]),
                ("params", ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"),
                ("dims", ", ".join(f"{k}={v}" for k, v in row["dims"].items()) or "-"),
                ("dtype", row["dtype"]),
                (
                    "threads",
                    f"torch {row['threads']['torch']}, onnxruntime {row['threads']['onnxruntime']}",
                ),
                (
                    "export",
                    f"{row['export_seconds']:.2f} s, {format_bytes(row['file_bytes'])}, "
                    f"{row['nodes']} nodes",
                ),
            ]
        )
    if rows:
        columns = ("engine", "median ms", "p10 ms", "p90 ms", "calls", "calls/s", "samples/s")
        print_table(
            (*(("layer",) if all_ else ()), *columns, "GFLOP/s", "ort/engine"),
            _bench_table_rows(rows, all_),
        )
    if startup is not None:
        print_fields(
            [
                (
                    "startup",
                    f"layerport --help {startup['layerport_help_seconds']:.3f} s, import torch "
                    f"{startup['import_torch_seconds']:.3f} s: ratio {startup['ratio']:.3f} "
                    f"(median of {startup['runs']})",
                )
            ]
        )


def _bench_table_rows(rows: list[dict[str, Any]], all_: bool) -> list[tuple[object, ...]]:
    """One row per layer and engine; the last column is onnxruntime's latency over the engine's."""
    table: list[tuple[object, ...]] = []
    for row in rows:
        first = (row["name"],) if all_ else ()
        if row.get("status") == "failed":
            table.append((*first, *[None] * 8, f"failed: {row['error']}"))
            continue
        for name, engine in row["engines"].items():
            table.append(
                (
                    *first,
                    name,
                    engine["median_ms"],
                    engine["p10_ms"],
                    engine["p90_ms"],
                    engine["calls"],
                    engine["calls_per_s"],
                    engine["samples_per_s"],
                    engine["gflops"],
                    row["ratios"].get(f"onnxruntime_over_{name}"),
                )
            )
    return table
