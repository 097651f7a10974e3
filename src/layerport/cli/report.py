"""A verification report as Markdown, for ``--report FILE``: to read, or to attach to a bug report."""

from __future__ import annotations

from pathlib import Path

from layerport.cli.output import cost_words
from layerport.runtime.files import atomic_write_bytes
from layerport.verify.report import VerificationReport, format_dims


def write_report(report: VerificationReport | None, path: Path | None) -> None:
    """Write ``report`` as Markdown to ``path``, atomically, when both are given."""
    if report is not None and path is not None:
        atomic_write_bytes(path, report_markdown(report).encode())


def report_markdown(report: VerificationReport) -> str:
    """A verification report a person can read, or attach to a bug report."""
    actual, expected = report.engines
    lines = [
        f"# Verification of {report.layer} ({report.dtype})",
        "",
        f"- result: **{'passed' if report.passed else 'FAILED'}**",
        f"- engines: {actual} against {expected}",
        *([f"- precision: {cost_words(report)}"] if report.costs else []),
        (
            f"- tolerance: {report.tolerance.describe()} "
            f"(pass when |{actual} - {expected}| <= atol + rtol * |{expected}|)"
            if report.tolerance is not None
            else f"- rule: {report.rule()}"
        ),
        f"- traced at: {format_dims(report.export_dims)}",
        f"- grid: {', '.join(f'{name} in {sizes}' for name, sizes in report.grid.items()) or 'none'},"
        f" {report.trials} random draws each",
        f"- streaming: {report.streaming or 'not applicable'}",
        "",
    ]
    if report.structure_problems:
        lines += (
            ["## Structure problems", ""] + [f"- {p}" for p in report.structure_problems] + [""]
        )
    lines += [
        "## Worst error per output",
        "",
        "| output | max abs error | at | worst element | max rel error | at |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, worst in report.worst().items():
        lines.append(
            f"| {name} | {worst['max_abs_error']:.3g} | {worst['case']} | {worst['index']} "
            f"| {worst['max_rel_error']:.3g} | {worst['rel_case']} |"
        )
    lines += [
        "",
        "Relative error: max |error| / max |expected| over each output.",
        "",
        "## Every comparison",
        "",
        "| case | output | result | max abs | max rel | needed atol | needed rtol |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in report.comparisons:
        result = "pass" if c.passed else f"FAIL{': ' + c.problem if c.problem else ''}"
        lines.append(
            f"| {c.case} | {c.output} | {result} | {c.max_abs_error:.3g} | {c.max_rel_error:.3g} "
            f"| {c.needed_atol:.3g} | {c.needed_rtol:.3g} |"
        )
    return "\n".join(lines) + "\n"
