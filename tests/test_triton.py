"""The triton and triton-python export targets, without a server.

What a served model's clients depend on is checked in the written
``config.pbtxt`` itself: batching only where every tensor has the batch first,
-1 for dynamic dims, optional inputs, the file's own dtypes, versions that never
overwrite, and a repository left as it was by a failed or refused export.
Against a real tritonserver: ``test_triton_server.py`` (slow).
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from layerport.errors import BadFile, UserInputError
from layerport.runtime.metadata import ExportRecord
from layerport.runtime.session import load_model
from layerport.serving import pbtxt
from layerport.serving.model_config import io_signature, record_of

from conftest import Result

Cli = Callable[..., Result]
SMALL_RNN = ["-p", "input_size=6", "-p", "output_size=3", "-p", "hidden_size=5"]


def config_of(model_folder: Path) -> dict[str, object]:
    return pbtxt.parse((model_folder / "config.pbtxt").read_text())


def tensors(config: dict[str, object], kind: str) -> dict[str, dict[str, object]]:
    return {entry["name"]: entry for entry in pbtxt.as_list(config[kind])}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporaries included) and its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ---------------------------------------------------------------------------
# config.pbtxt


def test_rnn_config_batches_with_the_batch_dim_left_out(cli: Cli, tmp_path: Path) -> None:
    result = cli("export", "rnn", *SMALL_RNN, "--target", "triton", "-o", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.stderr
    assert "exported:     " + str(tmp_path / "repo" / "rnn" / "1" / "model.onnx") in result.stdout
    config = config_of(tmp_path / "repo" / "rnn")
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 32
    inputs, outputs = tensors(config, "input"), tensors(config, "output")
    assert inputs["x"] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 6]}
    assert inputs["h0"]["dims"] == [5]
    # The onnxruntime backend binds only what a request carries, and h0 is a
    # required input of the file: optional there would fail every request without it.
    assert "optional" not in inputs["h0"]
    assert "Triton's onnxruntime backend cannot leave out h0: the config requires it" in (
        result.stderr
    )
    assert outputs["y"]["dims"] == [-1, 3]
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [8],
        "max_queue_delay_microseconds": 500,
    }
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    # The file's metadata rides in the parameters: verify --server rebuilds from it.
    record = record_of(config["parameters"])
    model = load_model(tmp_path / "repo" / "rnn" / "1" / "model.onnx")
    assert record == ExportRecord.from_model(model.proto)
    assert record is not None and record.params["hidden_size"] == 5
    assert record.verification["passed"] is True


def test_torch_layout_state_means_no_batching_and_full_dims(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "export", "lstm", "-p", "input_size=4", "-p", "hidden_size=3", "-p", "num_layers=2",
        "-p", "bidirectional=true", "--target", "triton", "-o", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "Triton will not batch lstm: h0 does not have batch first" in result.stderr
    config = config_of(tmp_path / "lstm")
    assert config["max_batch_size"] == 0
    assert "dynamic_batching" not in config
    inputs, outputs = tensors(config, "input"), tensors(config, "output")
    assert inputs["x"]["dims"] == [-1, -1, 4]
    # num_layers x directions is derived from parameters: a size, not -1.
    assert inputs["h0"]["dims"] == [4, -1, 3]
    assert "optional" not in inputs["c0"]
    assert outputs["y"]["dims"] == [-1, -1, 6]


def test_a_dim_derived_from_a_dynamic_dim_is_dynamic(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "export", "conv1d", "-p", "kernel_size=3", "-p", "padding=0", "--target", "triton",
        "-o", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = config_of(tmp_path / "conv1d")
    assert config["max_batch_size"] == 32
    output = tensors(config, "output")["y"]
    assert output["dims"][-1] == -1  # length - 2, a formula over a dynamic dim


@pytest.mark.parametrize(
    ("options", "expected"),
    [(["--dtype", "float64"], "TYPE_FP64"), (["--quantize", "int8"], "TYPE_FP32")],
    ids=["float64", "int8-keeps-float32-io"],
)
def test_data_types_are_the_files_own(
    cli: Cli, tmp_path: Path, options: list[str], expected: str
) -> None:
    result = cli(
        "export", "linear", "-p", "in_features=64", "-p", "out_features=1024", *options,
        "--target", "triton", "-o", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = config_of(tmp_path / "linear")
    assert tensors(config, "input")["x"]["data_type"] == expected
    assert tensors(config, "output")["y"]["data_type"] == expected


def test_options_set_batching_instances_and_name(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "export", "linear", "--target", "triton", "-o", str(tmp_path),
        "--target-option", "name=classifier", "--target-option", "max_batch_size=4",
        "--target-option", "preferred_batch_size=16", "--target-option", "max_queue_delay_us=0",
        "--target-option", "instance_kind=gpu", "--target-option", "instance_count=3",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = config_of(tmp_path / "classifier")
    assert config["name"] == "classifier"
    assert config["max_batch_size"] == 4
    # A preferred size above the largest batch would make Triton refuse the config.
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [4],
        "max_queue_delay_microseconds": 0,
    }
    assert config["instance_group"] == [{"count": 3, "kind": "KIND_GPU"}]
    assert not (tmp_path / "linear").exists()


def test_python_variant_holds_model_py_beside_the_same_file(cli: Cli, tmp_path: Path) -> None:
    for target in ("triton", "triton-python"):
        result = cli(
            "export", "linear", "--target", target, "-o", str(tmp_path / target), "--seed", "3"
        )
        assert result.exit_code == 0, result.stderr
    plain = tmp_path / "triton" / "linear" / "1"
    python = tmp_path / "triton-python" / "linear" / "1"
    assert sorted(path.name for path in python.iterdir()) == ["model.onnx", "model.py"]
    assert (python / "model.onnx").read_bytes() == (plain / "model.onnx").read_bytes()
    assert (
        "from layerport.serving.python_backend import TritonPythonModel"
        in (python / "model.py").read_text()
    )
    assert config_of(python.parent)["backend"] == "python"


def test_python_backend_config_marks_optional_inputs(cli: Cli, tmp_path: Path) -> None:
    result = cli("export", "rnn", *SMALL_RNN, "--target", "triton-python", "-o", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    inputs = tensors(config_of(tmp_path / "rnn"), "input")
    assert inputs["h0"]["optional"] is True  # its model.py fills zeros in
    assert "optional" not in inputs["x"]
    assert "cannot leave out" not in result.stderr


def test_a_file_that_crashes_the_layout_optimizer_asks_for_a_lower_level(
    cli: Cli, tmp_path: Path
) -> None:
    # The float16 rnn segfaults onnxruntime 1.32's NCHWc transformer at the default level.
    result = cli(
        "export", "rnn", *SMALL_RNN, "--dtype", "float16", "--target", "triton", "-o", str(tmp_path)
    )
    assert result.exit_code == 0, result.stderr
    assert config_of(tmp_path / "rnn")["optimization"] == {"graph": {"level": 1}}
    float32 = cli("export", "rnn", *SMALL_RNN, "--target", "triton", "-o", str(tmp_path / "f32"))
    assert float32.exit_code == 0
    assert "optimization" not in config_of(tmp_path / "f32" / "rnn")


def test_default_repository_is_under_exported(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("export", "linear", "--target", "triton-python")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "exported" / "triton-python" / "linear" / "1" / "model.py").is_file()


def test_targets_lists_the_triton_targets(cli: Cli) -> None:
    result = cli("targets")
    assert result.exit_code == 0
    assert "triton-python" in result.stdout
    assert "max_batch_size" in result.stdout


# ---------------------------------------------------------------------------
# Versions and atomicity


def test_a_new_export_is_the_next_version_and_never_overwrites(cli: Cli, tmp_path: Path) -> None:
    assert cli("export", "linear", "--target", "triton", "-o", str(tmp_path)).exit_code == 0
    first = (tmp_path / "linear" / "1" / "model.onnx").read_bytes()
    result = cli("export", "linear", "--seed", "5", "--target", "triton", "-o", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert str(tmp_path / "linear" / "2" / "model.onnx") in result.stdout
    assert (tmp_path / "linear" / "1" / "model.onnx").read_bytes() == first
    assert (tmp_path / "linear" / "2" / "model.onnx").read_bytes() != first
    record = record_of(config_of(tmp_path / "linear")["parameters"])
    assert record is not None and record.seed == 5  # the config describes the newest
    # A stray folder takes its number: the next version goes above it.
    (tmp_path / "linear" / "7").mkdir()
    assert cli("export", "linear", "--target", "triton", "-o", str(tmp_path)).exit_code == 0
    assert (tmp_path / "linear" / "8" / "model.onnx").is_file()
    assert not any(path.name.startswith(".") for path in (tmp_path / "linear").iterdir())


def test_a_version_with_other_inputs_or_outputs_needs_a_new_name(cli: Cli, tmp_path: Path) -> None:
    assert (
        cli("export", "rnn", *SMALL_RNN, "--target", "triton", "-o", str(tmp_path)).exit_code == 0
    )
    before = snapshot(tmp_path)
    result = cli(
        "export", "rnn", *SMALL_RNN[:4], "-p", "hidden_size=7", "--target", "triton",
        "-o", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"Error: model rnn in {tmp_path} cannot take this export as a new version: its inputs "
        "are x FP32 [-1, 6], h0 FP32 [5], the new export's are x FP32 [-1, 6], h0 FP32 [7]"
    )
    assert "give it a new model name with --target-option name=NAME" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before
    renamed = cli(
        "export", "rnn", *SMALL_RNN[:4], "-p", "hidden_size=7", "--target", "triton",
        "-o", str(tmp_path), "--target-option", "name=rnn7",
    )  # fmt: skip
    assert renamed.exit_code == 0, renamed.stderr


def test_a_new_version_keeps_the_models_max_batch_size_unless_given(
    cli: Cli, tmp_path: Path
) -> None:
    first = cli(
        "export", "linear", "--target", "triton", "-o", str(tmp_path),
        "--target-option", "max_batch_size=64",
    )  # fmt: skip
    assert first.exit_code == 0, first.stderr
    again = cli("export", "linear", "--seed", "2", "--target", "triton", "-o", str(tmp_path))
    assert again.exit_code == 0, again.stderr
    assert config_of(tmp_path / "linear")["max_batch_size"] == 64
    assert (tmp_path / "linear" / "2" / "model.onnx").is_file()
    # A change of inputs is named before the batch size.
    wider = cli(
        "export", "linear", "--dtype", "float64", "--target", "triton", "-o", str(tmp_path),
        "--target-option", "max_batch_size=8",
    )  # fmt: skip
    assert wider.exit_code == 2
    assert "its inputs are x FP32 [8], the new export's are x FP64 [8]" in wider.stderr


def test_another_backend_for_the_same_model_is_refused_before_exporting(
    cli: Cli, tmp_path: Path
) -> None:
    assert cli("export", "linear", "--target", "triton", "-o", str(tmp_path)).exit_code == 0
    before = snapshot(tmp_path)
    result = cli("export", "linear", "--target", "triton-python", "-o", str(tmp_path))
    smaller = cli(
        "export", "linear", "--target", "triton", "-o", str(tmp_path),
        "--target-option", "max_batch_size=4",
    )  # fmt: skip
    assert smaller.exit_code == 2
    assert (
        "its max_batch_size is 32 and the new export's 4 would refuse the batches its clients "
        "may send" in smaller.stderr
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"Error: model linear in {tmp_path} is served by the onnxruntime backend and this "
        "export is for the python backend; give it a new model name"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("existing", [False, True], ids=["new-model", "new-version"])
def test_a_failed_write_leaves_the_repository_as_it_was(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    if existing:
        assert cli("export", "linear", "--target", "triton", "-o", str(tmp_path)).exit_code == 0
    before = snapshot(tmp_path)

    def rename(source: object, destination: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("layerport.runtime.files.os.rename", rename)
    result = cli("export", "linear", "--seed", "9", "--target", "triton", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "No space left on device" in result.stderr
    assert snapshot(tmp_path) == before  # no half-written folder, hidden or not
    assert sorted(os.listdir(tmp_path)) == (["linear"] if existing else [])


def test_concurrent_writers_each_get_their_own_version(tmp_path: Path) -> None:
    from layerport.serving.repository import write_version

    config = {"name": "m", "backend": "python", "max_batch_size": 0, "input": [], "output": []}
    first = write_version(tmp_path / "m", config, {"model.onnx": b"one"})
    # Another process created version 2 between our listing and our rename.
    real_write = __import__("layerport.runtime.files", fromlist=["x"]).atomic_write_folder
    calls = []

    def racing(path: Path, files: dict[str, bytes]) -> None:
        if not calls:
            calls.append(path)
            real_write(path, {"model.onnx": b"theirs"})
        real_write(path, files)

    import layerport.serving.repository as repository

    original = repository.atomic_write_folder
    repository.atomic_write_folder = racing  # type: ignore[assignment]
    try:
        second = write_version(tmp_path / "m", config, {"model.onnx": b"two"})
    finally:
        repository.atomic_write_folder = original
    assert first.name == "1"
    assert (tmp_path / "m" / "2" / "model.onnx").read_bytes() == b"theirs"
    assert second.name == "3"
    assert (second / "model.onnx").read_bytes() == b"two"


# ---------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("setup", "options", "message"),
    [
        (
            lambda repo: repo.write_text("x"),
            [],
            "is not a folder; the triton target writes into a folder",
        ),
        (
            lambda repo: (repo / "linear").mkdir(parents=True),
            [],
            "exists and is not a Triton model folder (it has no config.pbtxt)",
        ),
        (
            lambda repo: (repo / "linear").mkdir(parents=True)
            or (repo / "linear" / "config.pbtxt").write_text('name: "linear" backend: {'),
            [],
            "config.pbtxt: expected }, found 'the end'",
        ),
        (lambda repo: None, ["--target-option", "name=../up"], "model name '../up' must be"),
        (lambda repo: None, ["--target-option", "max_batch_size=-1"], "max_batch_size"),
        (lambda repo: None, ["--target-option", "instance_kind=tpu"], "instance_kind"),
        (
            lambda repo: None,
            ["--target", "triton-python", "--target-option", "instance_kind=gpu"],
            "the triton-python model runs layerport's CPU runtime",
        ),
        (
            lambda repo: None,
            ["--target", "triton-python", "--dtype", "bfloat16"],
            "numpy has no bfloat16: serve float16 or float32",
        ),
        (
            lambda repo: None,
            ["--dtype", "bfloat16"],
            "onnxruntime's CPU provider cannot run this bfloat16 linear",
        ),
        (
            lambda repo: None,
            ["--target", "triton-python", "--target-option", "name=a/b"],
            "model name 'a/b' must be",
        ),
    ],
    ids=[
        "repository-is-a-file", "not-a-model", "damaged-config", "bad-name",
        "zero-batch", "unknown-kind", "python-on-gpu", "python-bfloat16", "cpu-bfloat16",
        "slash-in-name",
    ],
)  # fmt: skip
def test_bad_repositories_and_options_exit_2(
    cli: Cli,
    tmp_path: Path,
    setup: Callable[[Path], object],
    options: list[str],
    message: str,
) -> None:
    repo = tmp_path / "repo"
    setup(repo)
    target = [] if "--target" in options else ["--target", "triton"]
    result = cli("export", "linear", *target, *options, "-o", str(repo))
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("Error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    if not repo.exists() or repo.is_dir():
        # A refused export leaves no empty repository behind.
        assert not repo.exists() or any(repo.iterdir())


def test_repository_target_named_like_a_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    result = cli("export", "linear", "--target", "triton", "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 2
    assert "names a file; the triton target writes a repository, and -o names its folder" in (
        result.stderr
    )


def test_a_config_that_cannot_be_replaced_takes_its_version_back(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("export", "linear", "--target", "triton", "-o", str(tmp_path)).exit_code == 0
    before = snapshot(tmp_path)

    def fail(path: Path, data: bytes) -> None:
        raise BadFile(f"cannot write {path}: Operation not permitted")

    monkeypatch.setattr("layerport.serving.repository.atomic_write_bytes", fail)
    result = cli("export", "linear", "--seed", "4", "--target", "triton", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "Operation not permitted" in result.stderr
    assert snapshot(tmp_path) == before  # version 2 taken back: config and versions agree


def test_one_name_for_all_layers_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "export", "--all", "--target", "triton", "--target-option", "name=m", "-o", str(tmp_path)
    )
    assert result.exit_code == 2
    assert "names one model" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# The text format


def test_pbtxt_reads_what_people_write() -> None:
    text = """
    # a comment
    name: 'm'  backend: "python"
    max_batch_size: 8
    input { name: "a" dims: [ 2, -1 ] data_type: TYPE_FP32 }
    input < name: "b" dims: 3 dims: 4 optional: true >;
    parameters: { key: "k" value: { string_value: "a \\"quoted\\" value" } }
    ratio: 1.5e3
    """
    config = pbtxt.parse(text)
    assert config["name"] == "m"
    assert [entry["name"] for entry in config["input"]] == ["a", "b"]
    assert config["input"][1]["dims"] == [3, 4]
    assert isinstance(config["input"][0]["data_type"], pbtxt.Enum)
    assert config["parameters"]["value"]["string_value"] == 'a "quoted" value'
    assert config["ratio"] == 1500.0
    signature = io_signature(config)
    assert signature["input"][1] == ("b", "None", (3, 4), True)


def test_pbtxt_round_trips_what_it_renders() -> None:
    message = {
        "name": "m \u00e9",
        "count": 3,
        "flag": False,
        "kind": pbtxt.Enum("KIND_CPU"),
        "dims": [-1, 4],
        "nested": {"inner": "x\ny"},
        "items": [{"a": 1}, {"a": 2}],
    }
    assert pbtxt.parse(pbtxt.render(message)) == message


@pytest.mark.parametrize("text", ["name: @", "input { name: 'a'", "dims: [ 1, 2", "x: }"])
def test_pbtxt_refuses_malformed_text(text: str) -> None:
    with pytest.raises(BadFile):
        pbtxt.parse(text)


# ---------------------------------------------------------------------------
# The python backend's model, with the backend's utilities stood in for


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeRequest:
    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: object = None) -> None:
        self.outputs = {tensor.name: tensor.array for tensor in output_tensors}
        self.error = error


@pytest.fixture
def backend_utils(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = FakeTensor  # type: ignore[attr-defined]
    utils.InferenceResponse = FakeResponse  # type: ignore[attr-defined]

    class TritonError(str):
        INVALID_ARG, INTERNAL = "400", "500"

        def __new__(cls, message: str, code: str = "500") -> TritonError:
            return super().__new__(cls, f"TritonError {code}: {message}")

    utils.TritonError = TritonError  # type: ignore[attr-defined]
    utils.get_input_tensor_by_name = lambda request, name: (  # type: ignore[attr-defined]
        FakeTensor(name, request.arrays[name]) if name in request.arrays else None
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    return utils


@pytest.fixture(scope="module")
def python_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from click.testing import CliRunner

    from layerport.cli import cli

    repo = tmp_path_factory.mktemp("python-backend")
    result = CliRunner().invoke(
        cli, ["export", "rnn", *SMALL_RNN, "--target", "triton-python", "-o", str(repo)]
    )
    assert result.exit_code == 0, result.output
    return repo / "rnn"


def loaded_model(model_folder: Path) -> object:
    from layerport.serving.python_backend import TritonPythonModel

    config = pbtxt.parse((model_folder / "config.pbtxt").read_text())
    model = TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps({"max_batch_size": config["max_batch_size"]}),
            "model_repository": str(model_folder),
            "model_version": "1",
        }
    )
    return model


def test_python_backend_batches_same_shaped_requests_into_one_call(
    backend_utils: types.ModuleType, python_repository: Path
) -> None:
    model = loaded_model(python_repository)
    session = model.session  # type: ignore[attr-defined]
    generator = np.random.default_rng(0)
    x = [generator.standard_normal((n, 4, 6)).astype(np.float32) for n in (1, 3, 2)]
    h0 = generator.standard_normal((3, 5)).astype(np.float32)
    other_length = generator.standard_normal((2, 9, 6)).astype(np.float32)
    requests = [
        FakeRequest(x=x[0]),
        FakeRequest(x=x[1], h0=h0),  # h0 given: not batched with the ones without
        FakeRequest(x=x[2]),
        FakeRequest(x=other_length),  # another length: a call of its own
    ]
    calls = []
    real_run = session.run
    session.run = lambda arrays: (
        calls.append({k: v.shape for k, v in arrays.items()}) or real_run(arrays)
    )
    responses = model.execute(requests)  # type: ignore[attr-defined]
    assert [response.error for response in responses] == [None] * 4
    assert calls == [{"x": (3, 4, 6)}, {"x": (3, 4, 6), "h0": (3, 5)}, {"x": (2, 9, 6)}]
    for request, response in zip(requests, responses, strict=True):
        alone = real_run(request.arrays)  # omitted h0 is zeros, in a call or a batch
        assert response.outputs.keys() == {"y", "h_n"}
        for name, array in alone.items():
            np.testing.assert_allclose(response.outputs[name], array, rtol=1e-6, atol=1e-6)


def test_python_backend_answers_a_bad_request_with_an_error_not_a_crash(
    backend_utils: types.ModuleType, python_repository: Path
) -> None:
    model = loaded_model(python_repository)
    good = FakeRequest(x=np.zeros((2, 3, 6), np.float32))
    wrong_width = FakeRequest(x=np.zeros((2, 3, 7), np.float32))
    wrong_dtype = FakeRequest(x=np.zeros((2, 3, 6), np.float64))
    responses = model.execute([good, wrong_width, wrong_dtype])  # type: ignore[attr-defined]
    assert responses[0].error is None
    assert responses[1].error.startswith("TritonError 400: input x")  # the client's error
    assert "7" in responses[1].error
    assert responses[2].error.startswith("TritonError 400: input x")
    assert "float64" in responses[2].error


# ---------------------------------------------------------------------------
# verify --server and serve, without a server


def test_verify_server_that_cannot_be_reached_exits_2(cli: Cli) -> None:
    from layerport.serving.tritonserver import free_port

    url = f"127.0.0.1:{free_port()}"
    result = cli("verify", "--server", url, "rnn")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cannot reach a Triton server at {url}: ")
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--second-opinion"], "--second-opinion does not apply to a served model"),
        (["-p", "hidden_size=3"], "-p does not apply to a served model"),
    ],
)
def test_verify_server_refuses_options_for_files_and_layers(
    cli: Cli, args: list[str], message: str
) -> None:
    result = cli("verify", "--server", "127.0.0.1:1", "rnn", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_verify_server_refuses_https(cli: Cli) -> None:
    result = cli("verify", "--server", "https://example.invalid", "rnn")
    assert result.exit_code == 2
    assert "only http:// servers are supported" in result.stderr


@pytest.mark.parametrize("url", ["127.0.0.1", "127.0.0.1:99999", "host:80/v2", "::1", "a b:1"])
def test_verify_server_refuses_what_is_not_host_port(cli: Cli, url: str) -> None:
    result = cli("verify", "--server", url, "rnn")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: server {url!r} must be HOST:PORT, for example 127.0.0.1:8000 (Triton's HTTP port)\n"
    )


@pytest.mark.parametrize("url", ["HTTP://127.0.0.1:{port}/", "http://127.0.0.1:{port}"])
def test_verify_server_takes_an_http_url(cli: Cli, url: str) -> None:
    from layerport.serving.tritonserver import free_port

    port = free_port()
    result = cli("verify", "--server", url.format(port=port), "rnn")
    assert result.exit_code == 2
    assert "cannot reach a Triton server at" in result.stderr
    assert "Connection refused" in result.stderr


def test_verify_server_on_a_port_that_does_not_speak_http_1(cli: Cli) -> None:
    """Triton's gRPC port answers in HTTP/2 frames: the wrong port, said so."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer() -> None:
        for _ in range(4):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00@@@\xfe\x00\x00\r\n\r\n")
            connection.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    url = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        result = cli("verify", "--server", url, "linear")
    finally:
        listener.close()
    assert result.exit_code == 2, result.stderr
    assert "answers, but not as a Triton (KServe v2) HTTP server" in result.stderr
    assert "not its gRPC port" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_verify_wait_needs_a_server(cli: Cli) -> None:
    result = cli("verify", "linear", "--wait", "5")
    assert result.exit_code == 2
    assert "--wait applies to a served model: give --server URL" in result.stderr


def test_verify_server_waits_for_a_server_to_come_up(cli: Cli) -> None:
    from layerport.serving.tritonserver import free_port

    url = f"127.0.0.1:{free_port()}"
    result = cli("verify", "--server", url, "rnn", "--wait", "0.5")
    assert result.exit_code == 2  # nothing came up: the same one line as without --wait
    assert result.stderr.startswith(f"Error: cannot reach a Triton server at {url}: ")


def test_verify_server_against_an_http_server_that_is_not_triton(cli: Cli, tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        result = cli("verify", "--server", url, "rnn")
    finally:
        server.shutdown()
    assert result.exit_code == 2
    assert "answers, but not as a Triton (KServe v2) server" in result.stderr


@pytest.mark.parametrize(
    ("make", "env", "message"),
    [
        (False, None, "is not a folder; a Triton model repository is a folder"),
        (True, "nothing-here", "is not a virtual environment (it has no bin/python)"),
        (True, sys.prefix, "has no nvidia-pytriton; build the serving environment with"),
    ],
    ids=["no-repository", "no-venv", "venv-without-pytriton"],
)
def test_serve_without_what_it_needs_exits_2(
    cli: Cli, tmp_path: Path, make: bool, env: str | None, message: str
) -> None:
    repo = tmp_path / "models"
    if make:
        (repo / "m").mkdir(parents=True)
        (repo / "m" / "config.pbtxt").write_text('backend: "python"')
    result = cli("serve", str(repo), *(["--env", str(tmp_path / env)] if env else []))
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no model folders"),
        ({".rnn.abc.tmp": "python"}, "is left from an interrupted write"),
        (
            {"linear": "onnxruntime"},
            "is for the onnxruntime backend, and the tritonserver that pip installs has only the python backend",
        ),
    ],
    ids=["empty", "leftover-temporary", "onnxruntime-model"],
)
def test_serve_refuses_a_repository_it_cannot_serve(
    cli: Cli, tmp_path: Path, layout: dict[str, str], message: str
) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    for name, backend in layout.items():
        (repo / name).mkdir()
        (repo / name / "config.pbtxt").write_text(f'backend: "{backend}"')
    result = cli("serve", str(repo), "--env", sys.prefix)
    assert result.exit_code == 2
    assert message in result.stderr


def test_serve_refuses_a_port_in_use(cli: Cli, tmp_path: Path) -> None:
    import socket

    repo = tmp_path / "models"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('backend: "python"')
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", str(repo), "--env", str(env), "--http-port", str(port))
        same = cli(
            "serve", str(repo), "--env", str(env), "--http-port", "18555", "--grpc-port", "18555"
        )
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use; choose another" in result.stderr
    assert same.exit_code == 2
    assert "the HTTP and gRPC ports must differ, both are 18555" in same.stderr


def test_tritonserver_log_errors_name_the_reason() -> None:
    from layerport.serving.tritonserver import log_errors

    log = (
        'I1202 05:23:53.802490 2355 model_lifecycle.cc:472] "loading: echo:1"\n'
        'E1202 05:23:53.799640 2355 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        "E1202 05:23:54.1 2355 model_lifecycle.cc:654] \"failed to load 'm': unable to find "
        "backend library for backend 'onnxruntime'\"\n"
        "| Model | Version | Status |\n"
    )
    assert log_errors(log) == (
        "failed to load 'm': unable to find backend library for backend 'onnxruntime'"
    )
    assert log_errors("just this\n") == "just this"


def test_record_of_refuses_damaged_metadata() -> None:
    with pytest.raises(BadFile, match="damaged"):
        record_of({"layerport.layer": {"string_value": "rnn"}})
    assert record_of({"other": {"string_value": "x"}}) is None
    with pytest.raises(UserInputError):
        from layerport.serving.repository import check_model_name

        check_model_name("a/b")
