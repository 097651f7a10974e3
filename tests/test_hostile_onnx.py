"""Hostile ONNX files for ``inspect``, ``infer`` and ``verify FILE``, and byte-level fuzzing."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from fuzz_onnx import SMALL_RNN, fuzz
from hostile import BUILTINS_ONLY, assert_refused, assert_succeeded, gemm_model, save_gemm_model
from layerport.runtime.metadata import ExportRecord

from conftest import run_process

COMMANDS = (["inspect"], ["infer"], ["verify"])


@pytest.fixture(scope="module")
def exported_rnn(tmp_path_factory) -> Path:
    """A small rnn, exported once for this module by the real command."""
    target = tmp_path_factory.mktemp("rnn") / "rnn.onnx"
    result = run_process("export", "rnn", *SMALL_RNN, "-o", str(target), env=BUILTINS_ONLY)
    assert result.exit_code == 0, result.stderr
    return target


def _bytes_of(kind: str, exported: Path) -> bytes:
    data = exported.read_bytes()
    return {
        "empty": b"",
        "truncated": data[: len(data) * 2 // 3],
        "random": random.Random(3).randbytes(4000),
        "text": b"ir_version: 8\ngraph { node { op_type: 'Relu' } }\n",
    }[kind]


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("empty", ["is empty"]),
        ("truncated", ["is not an ONNX model (it does not parse"]),
        ("random", ["is not an ONNX model"]),
        ("text", ["is not an ONNX model"]),
    ],
)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_unreadable_file(cli, tmp_path, exported_rnn, kind, words, command) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_bytes_of(kind, exported_rnn))
    assert_refused(cli(*command, str(path)), 2, str(path), *words)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_missing_file_and_folder(cli, tmp_path, command) -> None:
    assert_refused(cli(*command, str(tmp_path / "nosuch.onnx")), 2, "nosuch.onnx does not exist")
    (tmp_path / "folder.onnx").mkdir()
    assert_refused(cli(*command, str(tmp_path / "folder.onnx")), 2, "is a folder, not an ONNX file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_is_refused_without_waiting_for_a_writer(cli, tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.onnx")
    assert_refused(cli("inspect", str(tmp_path / "pipe.onnx")), 2, "is not a regular file")


def _edited(change) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    model = gemm_model()
    change(model)
    return model


@pytest.mark.parametrize(
    ("change", "words"),
    [
        pytest.param(
            lambda model: setattr(model.opset_import[0], "version", 99),
            ["needs opset 99 of ai.onnx; this installation supports 1 to"],
            id="opset-too-new",
        ),
        pytest.param(
            lambda model: setattr(model, "ir_version", 99),
            ["has IR version 99; this installation reads 3 to"],
            id="ir-too-new",
        ),
        pytest.param(
            lambda model: setattr(model, "ir_version", 2),
            ["has IR version 2"],
            id="ir-too-old",
        ),
        pytest.param(
            lambda model: model.opset_import.add(domain="com.example.secret", version=1),
            ["uses operator domain 'com.example.secret', which onnxruntime does not know"],
            id="unknown-domain",
        ),
        pytest.param(
            lambda model: setattr(model.graph.node[0], "op_type", "Frobnicate"),
            ["is not a valid ONNX model", "No Op registered for Frobnicate"],
            id="unknown-op",
        ),
        pytest.param(
            lambda model: model.graph.initializer.pop(0),
            ["reads 'W', which no initializer, graph input or earlier node provides"],
            id="missing-initializer",
        ),
        pytest.param(
            lambda model: model.graph.initializer[0].dims.append(2),
            ["tensor 'W' holds 48 bytes, but its shape and type need 96"],
            id="initializer-size",
        ),
    ],
)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_invalid_model(cli, tmp_path, change, words, command) -> None:
    model = _edited(change)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(cli(*command, str(path)), 2, str(path), *words)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_name_that_is_not_utf8(cli, tmp_path, command) -> None:
    # Found by fuzzing: protobuf hands such a field to Python as bytes, not str.
    model = gemm_model()
    model.graph.node[0].name = "@@NAME@@"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString().replace(b"@@NAME@@", b"\xff\xfe\xfd\xfc" * 2))
    assert_refused(cli(*command, str(path)), 2, "a name or text field is not UTF-8")


def test_foreign_model_inspects_and_infers_but_cannot_be_verified(cli, tmp_path) -> None:
    path = save_gemm_model(tmp_path / "gemm.onnx")
    inspected = cli("inspect", str(path))
    assert_succeeded(inspected)
    assert "Gemm 1" in inspected.stdout
    assert "not exported by layerport" in inspected.stdout
    assert_succeeded(cli("infer", str(path), "--dim", "n=3"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "x.npy", x)
    inferred = cli(
        "infer",
        str(path),
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--output",
        str(tmp_path / "y.npz"),
    )
    assert_succeeded(inferred)
    with np.load(tmp_path / "y.npz") as saved:
        expected = x @ np.arange(12, dtype=np.float32).reshape(3, 4).T + 1
        np.testing.assert_allclose(saved["y"], expected)
    assert_refused(
        cli("infer", str(path)), 2, "give the size of dim n with --dim n=SIZE, or pass --input"
    )
    assert_refused(
        cli("verify", str(path)),
        2,
        "was not exported by layerport",
        "verify cannot rebuild its layer",
        "'layerport inspect' and 'infer' still work on it",
    )


# ---------------------------------------------------------------------------
# External data: read only from inside the model's folder


def _external_model(folder: Path, location: str, *, length: int | None = None) -> Path:
    """The gemm model with W stored externally at ``location``; returns the model's path."""
    model = gemm_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    weight.external_data.add(key="length", value=str(len(W_BYTES) if length is None else length))
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


W_BYTES = onnx.numpy_helper.to_array(gemm_model().graph.initializer[0]).tobytes()


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A folder for the model; W's bytes lie in the folder above it, out of bounds."""
    (tmp_path / "weights.bin").write_bytes(W_BYTES)
    folder = tmp_path / "model"
    folder.mkdir()
    return folder


def test_external_data_in_the_same_folder_works(cli, model_folder) -> None:
    (model_folder / "weights.bin").write_bytes(W_BYTES)
    path = _external_model(model_folder, "weights.bin")
    assert_succeeded(cli("inspect", str(path)))
    assert_succeeded(cli("infer", str(path), "--dim", "n=2"))
    (model_folder / "data").mkdir()
    (model_folder / "data" / "weights.bin").write_bytes(W_BYTES)
    path = _external_model(model_folder, "data/weights.bin")
    assert_succeeded(cli("infer", str(path), "--dim", "n=2"))


def _symlink(folder: Path) -> str:
    (folder / "link.bin").symlink_to(folder.parent / "weights.bin")
    return "link.bin"


def _symlinked_folder(folder: Path) -> str:
    (folder / "up").symlink_to(folder.parent)
    return "up/weights.bin"


def _hardlink(folder: Path) -> str:
    os.link(folder.parent / "weights.bin", folder / "hard.bin")
    return "hard.bin"


@pytest.mark.parametrize(
    "command", [["inspect"], ["infer", "--dim", "n=2"]], ids=["inspect", "infer"]
)
@pytest.mark.parametrize(
    ("setup", "words"),
    [
        pytest.param(
            lambda folder: "../weights.bin", ["which leaves the model's folder"], id="dot-dot"
        ),
        pytest.param(
            lambda folder: str(folder.parent / "weights.bin"),
            ["has an absolute location", "only paths inside the model's folder are read"],
            id="absolute",
        ),
        pytest.param(
            _symlink, ["at 'link.bin' cannot be opened: is a symbolic link"], id="symlink"
        ),
        pytest.param(
            _symlinked_folder,
            ["at 'up/weights.bin' cannot be opened: is a symbolic link"],
            id="symlinked-folder",
        ),
        pytest.param(_hardlink, ["is a file with 2 hard links"], id="hardlink"),
    ],
)
def test_external_data_outside_the_folder_is_refused(
    cli, model_folder, command, setup, words
) -> None:
    path = _external_model(model_folder, setup(model_folder))
    assert_refused(cli(*command, str(path)), 2, "external data of tensor 'W'", *words)


def test_external_data_length_past_the_end_is_refused(cli, model_folder) -> None:
    (model_folder / "weights.bin").write_bytes(W_BYTES)
    path = _external_model(model_folder, "weights.bin", length=10**12)
    assert_refused(
        cli("infer", str(path), "--dim", "n=2"),
        2,
        "reaches byte 1000000000000, past the end of its 48-byte file",
    )


# ---------------------------------------------------------------------------
# Metadata a stranger wrote


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("layerport.optional_inputs", "5"),
        ("layerport.params", '"x"'),
        ("layerport.dynamic_dims", "[1, 2]"),
        ("layerport.seed", '"abc"'),
        # issue 30: a recipe without its ops was a KeyError in inspect.
        ("layerport.quantization", '{"quantize": "int8", "library": "x", "mode": "dynamic"}'),
        (
            "layerport.quantization",
            '{"quantize": "int8", "library": "x", "mode": "dynamic", '
            '"weight_type": "QInt8", "ops": {"MatMulInteger": "2"}}',
        ),
        ("layerport.verification", "[" * 100_000),
    ],
)
def test_metadata_of_the_wrong_type_is_damaged_metadata(cli, tmp_path, key, value) -> None:
    record = ExportRecord(
        layer="linear",
        qualified_name="layerport:linear",
        params={"in_features": 4, "out_features": 3, "bias": True, "activation": "none"},
        plugin="layerport",
        plugin_version="0.1.0",
        dtype="float32",
        dynamic_dims={"batch": 2},
        optional_inputs=[],
        opset=17,
        versions={},
        seed=0,
    )
    props = {**record.to_props(), key: value}
    model = gemm_model()
    for name, text in props.items():
        model.metadata_props.add(key=name, value=text)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    for command in COMMANDS:
        assert_refused(cli(*command, str(path)), 2, "layerport metadata is damaged")


# ---------------------------------------------------------------------------
# Fuzzing


@pytest.mark.slow
def test_mutants_of_an_export_never_crash_inspect_or_infer(exported_rnn, tmp_path) -> None:
    summary = fuzz(exported_rnn, 1000, seed=20240611, jobs=2, folder=tmp_path)
    print(summary.line(), file=sys.stderr)
    assert summary.runs == 2000
    assert not summary.crashes, summary.crashes
    assert not summary.problems, summary.problems
    assert set(summary.exit_codes) <= {0, 1, 2}
    # Most mutants no longer parse; some still run. Both kinds must have been tried.
    assert summary.exit_codes[2] > 0 and summary.exit_codes[0] > 0
