"""Export: each trap the default exporter falls into, as a regression test.

The traps (measured on torch 2.13): a batch dim fixed to the example's size; an
RNN unrolled to the example's length, so a longer sequence is truncated and a
shorter one crashes; a requested dynamic dim silently pinned; stack traces with
absolute paths in the file; an empty ``.data`` sidecar; duplicated initializers;
bytes that differ from run to run.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from layerport import Dim, LayerSpec, Param, Tensor
from layerport.config import resolve_config
from layerport.eager.build import build_module, run_module
from layerport.errors import ExportFailed
from layerport.pipeline import export_layer
from layerport.plugins import get_registry
from layerport.runtime.session import load_model

from conftest import SpecPlugin, run_process


@pytest.fixture(scope="module")
def rnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rnn")
    result = run_process("export", "rnn", "-o", str(folder / "rnn.onnx"))
    assert result.exit_code == 0, result.stderr
    return folder / "rnn.onnx"


def rnn_config(**dims: int):
    return resolve_config(get_registry(), "rnn", dims=dims)


def test_export_writes_one_self_contained_file(rnn_file: Path) -> None:
    assert sorted(os.listdir(rnn_file.parent)) == ["rnn.onnx"]
    model = onnx.load(rnn_file)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)


def test_names_and_symbolic_dims_are_the_layers_own(rnn_file: Path) -> None:
    model = onnx.load(rnn_file)

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert {v.name: dims(v) for v in model.graph.input} == {
        "x": ["batch", "seq", 128],
        "h0": ["batch", 64],
    }
    assert {v.name: dims(v) for v in model.graph.output} == {
        "y": ["batch", "seq", 16],
        "h_n": ["batch", 64],
    }


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (37, 301), (3, 5), (8, 33)])
def test_file_runs_at_sizes_it_was_not_traced_at(rnn_file: Path, batch: int, seq: int) -> None:
    # The independent oracle: onnxruntime at other shapes against eager torch.
    model = load_model(rnn_file)
    config = rnn_config(batch=batch, seq=seq)
    module = build_module(config)
    rng = np.random.default_rng(batch * 1000 + seq)
    inputs = {
        "x": rng.standard_normal((batch, seq, 128)).astype(np.float32),
        "h0": rng.standard_normal((batch, 64)).astype(np.float32),
    }
    actual = model.run(inputs)
    expected = run_module(module, config, inputs)
    assert actual["y"].shape == (batch, seq, 16)  # not truncated to the traced 32
    np.testing.assert_allclose(actual["y"], expected["y"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(actual["h_n"], expected["h_n"], rtol=1e-4, atol=1e-5)


def test_rnn_graph_size_does_not_depend_on_the_traced_length() -> None:
    short = export_layer(rnn_config(seq=5), verify=False)
    long = export_layer(rnn_config(seq=50), verify=False)
    assert short.node_count == long.node_count
    assert abs(short.size - long.size) < 64  # only the recorded traced size differs
    assert "Scan" in {n.op_type for n in onnx.load_model_from_string(long.model_bytes).graph.node}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_file_is_close_to_its_raw_weight_bytes(dtype: str) -> None:
    config = resolve_config(get_registry(), "rnn", dtype=dtype)
    result = export_layer(config, verify=False)
    raw = config.weight_bytes()
    assert raw == 13_456 * (4 if dtype == "float32" else 8)
    assert result.size <= 1.1 * raw + 16 * 1024
    model = onnx.load_model_from_string(result.model_bytes)
    blobs = [tensor.raw_data for tensor in model.graph.initializer]
    assert len(blobs) == len(set(blobs)), "duplicated initializers"


def test_file_holds_nothing_of_the_machine_that_built_it(rnn_file: Path) -> None:
    data = rnn_file.read_bytes()
    for secret in {
        os.getcwd(),
        str(Path.home()),
        getpass.getuser(),
        str(rnn_file.parent),
        torch.__file__.rsplit("/", 2)[0],
        "site-packages",
        '.py"',
        "stack_trace",
        'File "',
    }:
        if len(secret) > 2:
            assert secret.encode() not in data, secret


def test_exporting_twice_gives_identical_bytes(rnn_file: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.onnx"
    assert run_process("export", "rnn", "-o", str(again)).exit_code == 0
    assert (
        hashlib.sha256(again.read_bytes()).digest()
        == hashlib.sha256(rnn_file.read_bytes()).digest()
    )


def test_metadata_describes_the_file(rnn_file: Path) -> None:
    props = {p.key: p.value for p in onnx.load(rnn_file).metadata_props}
    assert props["layerport.layer"] == "rnn"
    assert props["layerport.plugin"] == "layerport"
    assert json.loads(props["layerport.params"])["hidden_size"] == 64
    assert json.loads(props["layerport.dynamic_dims"]) == {"batch": 8, "seq": 32}
    assert json.loads(props["layerport.optional_inputs"]) == ["h0"]
    assert props["layerport.seed"] == "0"
    assert props["layerport.dtype"] == "float32"
    assert json.loads(props["layerport.opset"]) == 18
    versions = json.loads(props["layerport.versions"])
    assert set(versions) == {"layerport", "torch", "onnx"}
    verification = json.loads(props["layerport.verification"])
    assert verification["passed"] is True
    assert verification["grid"] == {"batch": [1, 8, 37], "seq": [1, 32, 301]}
    assert verification["streaming"] == "seq=301 in chunks 1+32+268"


def test_export_cli_summary_and_json(cli, tmp_path: Path) -> None:
    target = tmp_path / "linear.onnx"
    result = cli("export", "linear", "-p", "activation=sigmoid", "-o", str(target), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["path"] == str(target)
    assert summary["dynamic_dims"] == {"batch": 16}
    assert summary["verification"]["grid"] == {"batch": [1, 16, 37]}
    assert summary["max_abs_error"] < 1e-5
    assert summary["size"] == target.stat().st_size
    assert result.stderr == ""
    text = cli("export", "linear", "-o", str(target))
    for field in ("exported:", "size:", "nodes:", "opset:", "dynamic dims:", "verification:"):
        assert field in text.stdout


def test_default_output_is_exported_folder(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("export", "linear").exit_code == 0
    assert (tmp_path / "exported" / "linear.onnx").is_file()


def test_no_verify_records_that(cli, tmp_path: Path) -> None:
    target = tmp_path / "linear.onnx"
    assert cli("export", "linear", "--no-verify", "-o", str(target)).exit_code == 0
    props = {p.key: p.value for p in onnx.load(target).metadata_props}
    assert json.loads(props["layerport.verification"])["passed"] is None


def test_float64_export_verifies(cli, tmp_path: Path) -> None:
    result = cli("export", "rnn", "--dtype", "float64", "-o", str(tmp_path / "r.onnx"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["max_abs_error"] < 1e-12


def test_export_all_writes_every_layer_with_progress_and_table(cli, tmp_path: Path) -> None:
    result = cli("export", "--all", "-o", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    names = {layer.name for layer in get_registry()}
    assert {p.stem for p in tmp_path.glob("*.onnx")} == names
    assert "[1/" in result.stderr and "exporting" in result.stderr
    assert "rnn" in result.stdout and "ok" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export"], "Error: give a LAYER to export, or --all"),
        (["export", "--all", "rnn"], "Error: --all exports every layer at its defaults"),
        (["export", "rnn", "--dim", "seq=1"], "Error: dim seq=1: exports trace at size 2 or more"),
        (["export", "rnn", "--opset", "12"], "Error: Invalid value for '--opset'"),
        (["export", "nosuch"], "Error: unknown layer 'nosuch'"),
    ],
)
def test_export_bad_input_exits_2(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr


class _Unrolled(torch.nn.Module):
    """A recurrence written as a plain Python loop: what the default exporter unrolls."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell(h) + x[:, t])
        return h


UNROLLED = LayerSpec(
    name="unrolled",
    description="A loop over time that torch.onnx unrolls.",
    build=lambda params: _Unrolled(),
    weights=lambda params: {"cell.weight": (4, 4), "cell.bias": (4,)},
    params=(Param("unused", int, 1, "-"),),
    dims=(Dim("batch", 3), Dim("seq", 6)),
    inputs=(Tensor("x", ("batch", "seq", "4")),),
    outputs=(Tensor("h", ("batch", "4")),),
)


def test_a_silently_pinned_dim_fails_the_export(cli, register_plugin, tmp_path: Path) -> None:
    register_plugin(SpecPlugin(UNROLLED), "loops")
    target = tmp_path / "unrolled.onnx"
    result = cli("export", "unrolled", "-o", str(target))
    assert result.exit_code == 1
    assert "torch.onnx pinned the dynamic dim seq of x to 6" in result.stderr
    assert (
        "a Python loop over seq in forward() is unrolled at the traced size: loop with "
        "layerport.eager.recurrence.run_over_time, which exports as one Scan" in result.stderr
    )
    assert not target.exists()
    with pytest.raises(ExportFailed):
        export_layer(resolve_config(get_registry(), "unrolled"), verify=False)


def test_dependencies_are_quiet_unless_verbose(tmp_path: Path) -> None:
    quiet = run_process("export", "linear", "-o", str(tmp_path / "q.onnx"))
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "torch.onnx" not in quiet.stdout
    loud = run_process("export", "linear", "-o", str(tmp_path / "l.onnx"), "--verbose")
    assert loud.exit_code == 0
    assert "[torch.onnx]" in loud.stdout + loud.stderr


def test_export_and_inspect_give_one_weight_size(cli, rnn_file: Path) -> None:
    inspected = json.loads(cli("inspect", str(rnn_file), "--json").stdout)
    exported = cli("export", "rnn", "-o", str(rnn_file.with_name("again.onnx")), "--json")
    assert json.loads(exported.stdout)["weight_bytes"] == inspected["weight_bytes"]


def test_export_all_refuses_a_folder_named_like_a_file(cli, tmp_path: Path) -> None:
    result = cli("export", "--all", "-o", str(tmp_path / "out" / "x.onnx"))
    assert result.exit_code == 2
    assert result.stderr.endswith("names a file; with --all, -o names the folder to export into\n")
    assert not (tmp_path / "out").exists()
