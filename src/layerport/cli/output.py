"""Printing results for people (rich tables, Markdown) and for scripts (JSON).

Tables go to stdout; warnings, progress and errors go to stderr, so that
``layerport ... --json | jq`` always sees clean JSON. Commands hand this module
typed results (an ``ExportResult``, a ``VerificationReport``, a ``BenchResult``);
it decides how each looks. A verification report written to a file is
``cli.report``'s; what ``--all`` did to each layer, ``cli.outcomes``'.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from layerport.runtime.int8 import INT16_MAX
from layerport.runtime.limits import format_bytes

if TYPE_CHECKING:
    from layerport.cli.outcomes import LayerOutcome
    from layerport.results import ExportResult
    from layerport.runtime.inspection import ModelDescription
    from layerport.runtime.metadata import ExportRecord
    from layerport.verify.report import VerificationReport


def print_json(data: Any) -> None:
    click.echo(json.dumps(_json_safe(data), indent=2, sort_keys=False))


def _json_safe(data: Any) -> Any:
    # JSON has no NaN or Infinity; write them as strings rather than emit invalid JSON.
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {str(key): _json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(value) for value in data]
    return data


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        *columns, title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD
    )
    for row in rows:
        table.add_row(*(format_cell(cell) for cell in row))
    # Off a terminal (a pipe, a log), rich would wrap at 80 columns; logs can be wider.
    width = None if sys.stdout.isatty() else 120
    Console(file=sys.stdout, soft_wrap=False, width=width).print(table)


def print_fields(fields: Iterable[tuple[str, object]]) -> None:
    """``name: value`` lines, aligned."""
    pairs = [(name, format_cell(value)) for name, value in fields]
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        click.echo(f"{name + ':':<{width + 1}} {value}")


def format_cell(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return " x ".join(str(item) for item in value) if value else "()"
    if value is None:
        return "-"
    return str(value)


def format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def note(message: str) -> None:
    """Something the user should know that is not a problem, such as which weights were used."""
    click.echo(f"Note: {message}", err=True)


# ---------------------------------------------------------------------------
# Progress, for long work such as ``export --all``


class Progress:
    """Which step of long work is running, on stderr, and how each one ended.

    On a terminal it is a live rich progress bar; in a log or CI, one line as
    each step starts and one as it ends ("finished" or "failed"), so the log
    shows where time went without escape codes.
    """

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.index = total, what, 0
        self._bar: Any = None
        self._task: Any = None
        self._label, self._started = "", 0.0

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar

            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            self._bar = Bar(*columns, console=Console(stderr=True), transient=True).__enter__()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def start(self, label: str) -> None:
        self.index += 1
        self._label, self._started = label, time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.what} {label}")
        else:
            click.echo(f"[{self.index}/{self.total}] {self.what} {label}", err=True)

    def finish(self, ok: bool) -> None:
        seconds = time.perf_counter() - self._started
        if self._bar is not None:
            self._bar.advance(self._task)
        else:
            ended = "finished in" if ok else "failed after"
            click.echo(
                f"[{self.index}/{self.total}] {self._label} {ended} {seconds:.1f} s", err=True
            )


# ---------------------------------------------------------------------------
# Outputs of one forward pass (run, infer)


def print_outputs(
    outputs: dict[str, Any], output: Path | None, json_: bool, about: dict[str, Any]
) -> None:
    """Save outputs if asked, then summarise each; ``about`` says what produced them."""
    from layerport.runtime.arrays import savable, summarize
    from layerport.runtime.files import atomic_save_npz

    if output is not None:
        arrays, conversions = savable(outputs)
        for message in conversions:
            note(message)
        atomic_save_npz(output, arrays)
    summaries = {name: summarize(array) for name, array in outputs.items()}
    for name, summary in summaries.items():
        if summary["non_finite"]:
            warn(f"output {name} holds {summary['non_finite']} NaN or Inf values")
    if json_:
        print_json({**about, "outputs": summaries, "saved_to": str(output) if output else None})
        return
    print_table(
        ("output", "shape", "dtype", "mean", "std", "min", "max"),
        (
            (name, s["shape"], s["dtype"], s["mean"], s["std"], s["min"], s["max"])
            for name, s in summaries.items()
        ),
    )
    if output is not None:
        click.echo(f"saved {', '.join(outputs)} to {output}", err=True)


# ---------------------------------------------------------------------------
# Exports and verification


def export_summary(result: ExportResult, path: Path | None) -> dict[str, Any]:
    """The JSON form of one export."""
    report = result.report
    return {
        "layer": result.config.layer.qualified_name,
        "name": result.config.spec.name,
        "path": str(path) if path else None,
        "size": result.size,
        "weight_bytes": result.weight_bytes,
        "quantization": result.record.quantization,
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


def print_export(result: ExportResult, path: Path | None, json_: bool) -> None:
    if json_:
        print_json(export_summary(result, path))
        return
    report = result.report
    print_fields(
        [
            ("exported", path or "(not written)"),
            ("layer", result.config.layer.qualified_name),
            (
                "size",
                f"{format_bytes(result.size)} ({format_bytes(result.weight_bytes)} of weights)",
            ),
            *(
                [("quantized", quantization_words(result.record.quantization))]
                if result.record.quantization
                else []
            ),
            ("nodes", result.node_count),
            *(
                [("optimized", optimization_words(result.record.optimization))]
                if result.record.optimization
                else []
            ),
            *([("form", form)] if (form := export_form_of(result.record)) else []),
            ("opset", result.record.opset),
            (
                "dynamic dims",
                ", ".join(f"{n} (traced at {s})" for n, s in result.config.dims.items()) or "none",
            ),
            ("verification", "not verified (--no-verify)" if report is None else _passed(report)),
        ]
    )


def export_form_of(record: ExportRecord | None) -> str | None:
    """The export form a file holds (a layer's form such as ``fused``), or ``None`` for the
    standard one, which goes without saying."""
    if record is None or record.form == "standard":
        return None
    return record.form


def optimization_words(summary: dict[str, Any]) -> str:
    """What ``export --optimize`` kept, and each other optimizer's figures and fate.

    ``onnxslim: 35 -> 30 nodes, 99 -> 98 KiB, 0.152 -> 0.139 ms median, verified on
    the grid (onnxruntime-basic, 35 nodes, 0.151 ms: it is not faster)``.
    """
    before, tried, kept = summary["before"], summary["tried"], summary["kept"]
    others = []
    for name, entry in tried.items():
        if "refused" not in entry:
            continue
        figures = [f"{entry['nodes']} nodes"] if "nodes" in entry else []
        figures += [f"{entry['median_ms']:.3g} ms"] if "median_ms" in entry else []
        shown = f"{name}, {', '.join(figures)}" if figures else name
        others.append(f"{shown}: {entry['refused']}")
    refused = "; ".join(others)
    if kept is None:
        return (
            f"kept the export as it is ({before['nodes']} nodes, {before['median_ms']:.3g} ms "
            f"median): {refused}"
        )
    after = tried[kept]
    words = (
        f"{kept}: {before['nodes']} -> {after['nodes']} nodes, {format_bytes(before['bytes'])} "
        f"-> {format_bytes(after['bytes'])}, {before['median_ms']:.3g} -> "
        f"{after['median_ms']:.3g} ms median, verified on the grid"
    )
    return f"{words} ({refused})" if refused else words


def _passed(report: VerificationReport) -> str:
    summary = report.summary()
    grid = ", ".join(f"{name} {sizes}" for name, sizes in report.grid.items())
    streaming = f"; streaming {report.streaming}" if report.streaming else ""
    cost = cost_words(report)
    # A quantized file is judged against the same quantization, relative to the range.
    relative = f" (relative {report.max_rel_error():.3g})" if report.quantization else ""
    judged = (
        f"{report.quantization} against the same quantization in numpy, "
        if report.quantization
        else ""
    )
    error = "export error" if report.tolerance is None else "max abs error"
    against = " against float64 eager" if report.tolerance is None else ""
    return (
        f"passed{_runtime_words(report)}: {judged}{error} {report.max_abs_error():.3g}{against}"
        f"{relative} over {summary['cases']} cases ({grid}{streaming})"
        + (f"; {cost}" if cost else "")
    )


def _runtime_words(report: VerificationReport) -> str:
    """`` in onnx-reference``, when the file was not verified in onnxruntime."""
    runtime = report.engines[0]
    return "" if runtime == "onnxruntime" else f" in {runtime}"


def _second_opinion_words(second: VerificationReport) -> str:
    grid = ", ".join(f"{name} {sizes}" for name, sizes in second.grid.items()) or "fixed shape"
    return (
        f"{second.engines[0]} also passes: export error {second.max_abs_error():.3g} over "
        f"{second.summary()['cases']} cases ({grid}, {second.trials} draw per size)"
    )


def cost_words(report: VerificationReport) -> str | None:
    """What the precision costs against float64, in words, or ``None`` when not measured."""
    if not report.costs:
        return None
    cost = report.cost_summary()
    worst_abs = max(cost["max_abs_error"].values())
    worst_rel = max(cost["max_rel_error"].values())
    what = report.quantization or report.dtype
    return f"{what} costs max abs error {worst_abs:.3g} (relative {worst_rel:.3g}) against float64"


def print_export_all(outcomes: Sequence[LayerOutcome], json_: bool) -> None:
    if json_:
        print_json([outcome.to_dict() for outcome in outcomes])
        return
    rows: list[tuple[object, ...]] = []
    for outcome in outcomes:
        result = outcome.export
        if result is None:
            rows.append((outcome.layer.name, *[None] * 6, f"failed: {outcome.error}"))
            continue
        rows.append(
            (
                outcome.layer.name,
                outcome.path,
                format_bytes(result.size),
                result.node_count,
                ", ".join(result.config.dims) or None,
                result.report.max_abs_error() if result.report else None,
                f"{result.export_seconds + result.verify_seconds:.1f} s",
                "ok",
            )
        )
    print_table(
        ("layer", "file", "size", "nodes", "dynamic dims", "max abs error", "time", "status"), rows
    )


def print_verification(report: VerificationReport, target: str, json_: bool) -> None:
    if json_:
        print_json({"target": target, **report.summary(), "worst": report.worst()})
        return
    print_fields(
        [
            ("verified", target),
            (
                "result",
                f"passed: {report.summary()['cases']} cases, {report.rule()}",
            ),
            ("grid", ", ".join(f"{n} {s}" for n, s in report.grid.items()) or "fixed shape"),
            ("streaming", report.streaming or "not applicable"),
            *([("inconclusive", report.inconclusive_words())] if report.inconclusive else []),
            *(
                [
                    (
                        "optional",
                        f"{', '.join(report.left_out)} left out (zeros) in the first draw at every size",
                    )
                ]
                if report.left_out
                else []
            ),
            *([("runtime", report.engines[0])] if _runtime_words(report) else []),
            *([("precision", cost_words(report))] if report.costs else []),
            *(
                [("second opinion", _second_opinion_words(report.second_opinion))]
                if report.second_opinion is not None
                else []
            ),
        ]
    )
    costs = report.worst(report.costs) if report.costs else {}
    print_table(
        ("output", "max abs error", "at", "max rel error", "at", "precision cost"),
        (
            (
                name,
                worst["max_abs_error"],
                worst["case"],
                worst["max_rel_error"],
                worst["rel_case"],
                costs[name]["max_abs_error"] if name in costs else None,
            )
            for name, worst in report.worst().items()
        ),
    )
    print_runtime_matrix(report)


def print_runtime_matrix(report: VerificationReport) -> None:
    """The runtime matrix, if one ran: grid point by runtime, each cell pass or FAIL and
    the worst error there; then the runtimes that could not run the file, and those skipped."""
    if not (report.runtimes or report.runtime_errors or report.runtimes_skipped):
        return
    cells: dict[str, dict[str, tuple[bool, float]]] = {}  # point -> runtime -> cell
    for name, matrix in report.runtimes.items():
        for comparison in matrix.comparisons:
            point = comparison.case.split(" draw ")[0]
            passed, worst = cells.setdefault(point, {}).get(name, (True, 0.0))
            cells[point][name] = (
                passed and comparison.passed,
                max(worst, comparison.max_abs_error),
            )
    names = list(report.runtimes)
    if names:
        # Not the table's title: rich would wrap it at the table's width.
        click.echo("runtime matrix: pass or FAIL, worst abs error, at each grid point")
        print_table(
            ("grid point", *names),
            (
                (point, *(_matrix_cell(by_runtime.get(name)) for name in names))
                for point, by_runtime in cells.items()
            ),
        )
    for name, error in report.runtime_errors.items():
        click.echo(f"{name}: FAIL: {error}")
    for name, why in report.runtimes_skipped.items():
        click.echo(f"{name}: skipped: {why}")


def _matrix_cell(cell: tuple[bool, float] | None) -> str:
    if cell is None:
        return "-"
    passed, worst = cell
    return f"{'pass' if passed else 'FAIL'} {worst:.2g}"


# ---------------------------------------------------------------------------
# Inspect


def quantization_words(recipe: dict[str, Any]) -> str:
    """An int8 recipe in words: what it quantized, how many bytes, and on which CPUs it is right."""
    ops = ", ".join(f"{op} {n}" for op, n in recipe["ops"].items()) or "no op"
    bits = recipe.get("weight_bits", 8)
    words = (
        f"{recipe['quantize']} {recipe['mode']} ({bits}-bit {recipe['weight_type']} weights; "
        f"{ops}), by {recipe['library']}"
    )
    if "quantized_bytes" in recipe:
        words += f"; {format_bytes(recipe['quantized_bytes'])} of weights quantized"
    worst = recipe.get("worst_pair_sum")
    if worst is None:
        return words
    if worst <= INT16_MAX:
        return (
            words + f"; right on every CPU (a weight pair sums to at most {worst} <= {INT16_MAX})"
        )
    return words + (
        f"; needs VNNI: wrong on x86 CPUs without it (a weight pair sums to {worst} > "
        f"{INT16_MAX}, which saturates in AVX2's 16-bit sums)"
    )


def print_inspection(description: ModelDescription, json_: bool) -> None:
    if json_:
        print_json(description.to_dict())
        return
    print_fields(
        [
            ("file", description.path),
            (
                "size",
                f"{format_bytes(description.size)} ({format_bytes(description.weight_bytes)} "
                f"in {description.initializers} initializers)",
            ),
            (
                "weights",
                ", ".join(
                    f"{dtype} {format_bytes(size)} ({count})"
                    for dtype, (count, size) in description.initializer_types.items()
                )
                or "none",
            ),
            *(
                [("quantized", quantization_words(description.quantization))]
                if description.quantization
                else []
            ),
            *([("form", form)] if (form := export_form_of(description.record)) else []),
            ("ir version", description.ir_version),
            ("opsets", ", ".join(f"{d} {v}" for d, v in description.opsets.items())),
            ("producer", description.producer or "-"),
            (
                "nodes",
                f"{description.nodes}: "
                + ", ".join(f"{op} {n}" for op, n in description.ops.items()),
            ),
        ]
    )
    print_table(
        ("tensor", "kind", "dtype", "dims (* symbolic)"),
        (
            (
                spec.name + (" (optional)" if spec.optional else ""),
                kind,
                spec.dtype,
                " x ".join(f"{dim}*" if isinstance(dim, str) else str(dim) for dim in spec.dims),
            )
            for kind, specs in (("input", description.inputs), ("output", description.outputs))
            for spec in specs
        ),
    )
    if description.record is not None:
        rows = (
            (key.removeprefix("layerport."), value)
            for key, value in description.record.to_props().items()
        )
        print_table(("layerport metadata", "value"), sorted(rows))
    else:
        click.echo("not exported by layerport (no layerport metadata)")


# ---------------------------------------------------------------------------
# Bench


def print_bench(
    results: Sequence[LayerOutcome],
    all_: bool,
    json_: bool,
    calls: Sequence[str] | None = None,
) -> None:
    """The benchmark of one layer, of every layer (``all_``), or of one layer at several
    ``calls`` (a decoder's steps and prefill), each named in a first column."""
    for note in dict.fromkeys(
        note for outcome in results if outcome.bench for note in outcome.bench.notes
    ):
        warn(note)
    if json_ and calls is not None:
        print_json(
            {
                "calls": [
                    {"call": call, **outcome.to_dict()}
                    for call, outcome in zip(calls, results, strict=True)
                ]
            }
        )
        return
    if calls is not None:
        columns = ("call", "engine", "median ms", "p10 ms", "p90 ms", "calls", "calls/s")
        rows = [
            (call, *row[:6], row[-1])
            for call, outcome in zip(calls, results, strict=True)
            for row in _bench_rows([outcome], all_=False)
        ]
        print_table((*columns, "file/engine"), rows)
        return
    if json_:
        if all_:
            print_json({"layers": [outcome.to_dict() for outcome in results]})
        else:
            print_json(results[0].to_dict())
        return
    if len(results) == 1 and not all_ and results[0].bench:
        result = results[0].bench
        config = result.config
        print_fields(
            [
                ("layer", config.layer.qualified_name),
                ("params", ", ".join(f"{k}={v}" for k, v in config.params.items()) or "-"),
                ("dims", ", ".join(f"{k}={v}" for k, v in config.dims.items()) or "-"),
                ("dtype", config.dtype),
                (
                    "threads",
                    f"torch {result.threads['torch']}, onnxruntime {result.threads['onnxruntime']}",
                ),
                (
                    "export",
                    f"{result.export_seconds:.2f} s, {format_bytes(result.file_bytes)}, "
                    f"{result.nodes} nodes",
                ),
            ]
        )
    columns = ("engine", "median ms", "p10 ms", "p90 ms", "calls", "calls/s", "samples/s")
    print_table(
        (*(("layer",) if all_ else ()), *columns, "GFLOP/s", "file/engine"),
        _bench_rows(results, all_),
    )


def _bench_rows(results: Sequence[LayerOutcome], all_: bool) -> list[tuple[object, ...]]:
    """One row per layer and engine; the last column is the file engine's latency over each engine's."""
    table: list[tuple[object, ...]] = []
    for outcome in results:
        first = (outcome.layer.name,) if all_ else ()
        if outcome.bench is None:
            table.append((*first, *[None] * 8, f"failed: {outcome.error}"))
            continue
        ratios = outcome.bench.ratios()
        for name, engine in outcome.bench.engines.items():
            timing = engine.to_dict()
            table.append(
                (
                    *first,
                    name,
                    timing["median_ms"],
                    timing["p10_ms"],
                    timing["p90_ms"],
                    timing["calls"],
                    timing["calls_per_s"],
                    timing["samples_per_s"],
                    timing["gflops"],
                    ratios.get(f"{outcome.bench.file_engine}_over_{name}"),
                )
            )
    return table
