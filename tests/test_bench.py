"""bench: the --json schema on tiny configurations, the timing loop, and the error paths.

No assertion here is about speed: timings on a shared machine are noise, and the
speed targets are checked by running ``layerport bench``, never by a timed test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from typing import Any

import pytest

from layerport.bench.benchmark import check_threads
from layerport.bench.timing import TimingSettings, time_engines
from layerport.errors import UserInputError
from startup import layerport_command, measure_startup

from conftest import SpecPlugin, tiny_spec

TINY_RNN = ("-p", "input_size=4", "-p", "hidden_size=3", "-p", "output_size=2")
TINY_RNN_DIMS = ("--dim", "batch=2", "--dim", "seq=3")
ENGINE_KEYS = {
    "median_ms": float,
    "p10_ms": float,
    "p90_ms": float,
    "calls": int,
    "seconds": float,
    "calls_per_s": float,
    "samples_per_s": float,
    "gflops": float,
    "max_abs_error": float,
}


def bench_json(cli: Any, *args: str) -> dict[str, Any]:
    result = cli("bench", *args, "--min-time", "0.01", "--threads", "1", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def check_schema(data: dict[str, Any], engines: list[str]) -> None:
    assert set(data) >= {
        "layer",
        "params",
        "dims",
        "dtype",
        "seed",
        "threads",
        "export_seconds",
        "file_bytes",
        "nodes",
        "flops",
        "samples_per_call",
        "timing",
        "engines",
        "ratios",
        "machine",
        "notes",
    }
    assert data["threads"] == {"torch": 1, "onnxruntime": 1}
    assert data["export_seconds"] > 0 and data["file_bytes"] > 0 and data["nodes"] >= 1
    assert data["timing"]["min_seconds"] == 0.01
    assert list(data["engines"]) == engines
    for name, engine in data["engines"].items():
        for key, kind in ENGINE_KEYS.items():
            if key == "gflops" and data["flops"] is None:
                # A layer that declares no flops (an embedding, a dropout) has no rate.
                assert engine[key] is None, (name, key, engine[key])
                continue
            assert isinstance(engine[key], kind), (name, key, engine[key])
        assert engine["calls"] >= data["timing"]["min_calls"]
        assert 0 < engine["p10_ms"] <= engine["median_ms"] <= engine["p90_ms"]
        assert engine["max_abs_error"] >= 0
    assert set(data["ratios"]) == {f"onnxruntime_over_{name}" for name in engines[:-1]}
    for ratio in data["ratios"].values():
        assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    assert {"torch", "onnxruntime", "python", "numpy", "layerport"} <= set(machine)
    assert isinstance(data["notes"], list)


def test_bench_linear_json_schema(cli) -> None:
    data = bench_json(cli, "linear", "--dim", "batch=2")
    check_schema(data, ["eager", "torch-reference", "onnxruntime"])
    assert data["layer"] == "layerport:linear"
    assert data["dims"] == {"batch": 2} and data["samples_per_call"] == 2
    assert data["flops"] == 2 * 2 * 8 * 2


def test_bench_rnn_json_schema_has_the_reference_engine(cli) -> None:
    data = bench_json(cli, "rnn", *TINY_RNN, *TINY_RNN_DIMS)
    check_schema(data, ["eager", "torch-reference", "onnxruntime"])
    assert data["params"]["hidden_size"] == 3
    assert data["dims"] == {"batch": 2, "seq": 3}


def test_bench_table_at_size_1_without_reference_or_flops(cli, register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "bench-tiny")
    # The exporter pins size-1 dims, so the file is traced at the default and run at 1.
    result = cli("bench", "tiny", "--dim", "batch=1", "--min-time", "0.01")
    assert result.exit_code == 0, result.stderr
    for text in ("dims:    batch=1", "eager", "onnxruntime", "median ms", "file/engine"):
        assert text in result.stdout
    # No reference declared: two engines; no flops declared: no GFLOP/s.
    assert "reference" not in result.stdout


def test_a_reference_that_disagrees_is_refused(cli, register_plugin) -> None:
    def wrong_reference(module: Any) -> Any:
        return lambda x: module(x) + 1

    spec = dataclasses.replace(tiny_spec(), reference=wrong_reference)
    register_plugin(SpecPlugin(spec), "bench-wrong")
    result = cli("bench", "tiny", "--min-time", "0.01")
    assert result.exit_code == 1
    assert "reference does not compute what the eager layer computes" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "nosuchlayer"], "unknown layer"),
        (["bench", "linear", "--threads", "0"], "--threads"),
        (["bench", "linear", "--min-time", "0"], "--min-time"),
        (["bench", "linear", "--dim", "seq=3"], "unknown dim"),
        (["bench", "--all", "linear"], "--all benchmarks every layer"),
        (["bench"], "give a LAYER"),
    ],
)
def test_bench_bad_input_exits_2(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result
    assert message in result.stderr
    assert result.stdout == ""


def test_check_threads_refuses_non_positive_counts() -> None:
    with pytest.raises(UserInputError, match="threads must be an integer >= 1"):
        check_threads(0)


def test_timing_settings_are_checked() -> None:
    with pytest.raises(UserInputError, match="min time"):
        TimingSettings(min_seconds=0).check()
    with pytest.raises(UserInputError, match="calls"):
        TimingSettings(min_calls=10, max_calls=5).check()
    with pytest.raises(UserInputError, match="settle time"):
        TimingSettings(settle_seconds=-1).check()


def test_time_engines_meets_the_minimums_and_respects_the_cap() -> None:
    order: list[str] = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timing = TimingSettings(
        warmup_calls=2, warmup_seconds=0, min_calls=7, min_seconds=0.001, max_calls=40
    )
    samples = time_engines(calls, timing)
    for name in calls:
        assert 7 <= len(samples[name]) <= 40
        assert all(isinstance(duration, int) and duration >= 0 for duration in samples[name])
    # After two warm-up calls each, the engines take turns: b runs before a's last call.
    timed = order[4:]
    assert order[:4] == ["a", "a", "b", "b"]
    assert timed.index("b") < len(timed) - 1 - timed[::-1].index("a")
    # Each block starts with one untimed call, after the pause: more calls than samples.
    assert order.count("a") > len(samples["a"]) + 2


def test_layerport_command_runs_the_cli() -> None:
    completed = subprocess.run(
        [*layerport_command(), "--version"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0 and "layerport" in completed.stdout


@pytest.mark.slow
def test_bench_all_json(cli) -> None:
    result = cli("bench", "--all", "--min-time", "0.01", "--threads", "1", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    names = [row["layer"] for row in data["layers"]]
    assert {"layerport:linear", "layerport:rnn"} <= set(names)
    for row in data["layers"]:
        assert row["status"] == "ok", row
        check_schema(row, list(row["engines"]))


@pytest.mark.slow
def test_measure_startup() -> None:
    startup = measure_startup(runs=1).to_dict()
    assert startup["runs"] == 1
    assert startup["layerport_help_seconds"] > 0 and startup["import_torch_seconds"] > 0
    assert math.isfinite(startup["ratio"]) and startup["ratio"] > 0
