"""The external-data layout: a model's initializers in MODEL.onnx.data beside it (issue 22).

Files past protobuf's 2 GiB limit must be written so; ``--external-data``
forces the layout for a small layer. The fast tests take the big-file path
itself (weights never in a proto: ``ExternalModel``) by lowering its limit,
``runtime.external.INLINE_LIMIT``; the slow test exports 2.16 GB of weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hostile import assert_refused, assert_succeeded
from layerport.runtime import external

from conftest import run_process

SIZES = ["-p", "in_features=64", "-p", "out_features=32", "--trials", "1"]


WEIGHT_BYTES = 32 * 64 * 4


@pytest.fixture
def small_limit(monkeypatch) -> None:
    """Weights past 1000 bytes take the path of weights past 2 GiB, on export and on reading."""
    monkeypatch.setattr(external, "INLINE_LIMIT", 1000)


@pytest.fixture(params=["--external-data", "past the limit"])
def pair(request, cli, tmp_path) -> Path:
    """linear.onnx and its data file: asked for, or made so by weights past the limit."""
    model = tmp_path / "linear.onnx"
    if request.param == "--external-data":
        result = cli("export", "linear", *SIZES, "--external-data", "-o", str(model))
    else:
        request.getfixturevalue("small_limit")
        result = cli("export", "linear", *SIZES, "-o", str(model))
    assert_succeeded(result)
    assert "Note: the initializers are in MODEL.onnx.data beside the model" in result.stderr
    return model


def test_external_data_goes_to_a_file_named_after_the_model(pair) -> None:
    data = pair.with_name("linear.onnx.data")
    assert sorted(p.name for p in pair.parent.iterdir()) == ["linear.onnx", "linear.onnx.data"]
    skeleton = onnx.load(pair, load_external_data=False)
    outside = {
        tensor.name: {entry.key: entry.value for entry in tensor.external_data}
        for tensor in skeleton.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    }
    # The (32, 64) float32 weight goes out; the 128-byte bias stays inline (onnx's threshold).
    assert [entry["location"] for entry in outside.values()] == ["linear.onnx.data"]
    assert [entry["offset"] for entry in outside.values()] == ["0"]
    assert data.stat().st_size == WEIGHT_BYTES
    assert pair.stat().st_size < 2048


def test_a_pair_inspects_infers_and_verifies(cli, pair, tmp_path) -> None:
    inspected = cli("inspect", str(pair), "--json")
    assert_succeeded(inspected)
    assert_succeeded(cli("verify", str(pair), "--trials", "1"))
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    assert_succeeded(
        cli("infer", str(pair), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out))
    )
    # The oracle: onnx's own loader reads the pair, numpy computes the layer.
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(pair).graph.initializer}
    weight = next(w for w in weights.values() if w.ndim == 2)
    bias = next(w for w in weights.values() if w.ndim == 1)
    np.testing.assert_allclose(np.load(out)["y"], x @ weight.T + bias, rtol=1e-5, atol=1e-5)


def test_the_data_file_passes_the_same_path_checks(cli, pair, tmp_path) -> None:
    data = pair.with_name("linear.onnx.data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data.rename(elsewhere / data.name)
    data.symlink_to(elsewhere / data.name)
    assert_refused(cli("infer", str(pair)), 2, "cannot be opened: is a symbolic link")
    data.unlink()
    os.link(elsewhere / data.name, data)
    assert_refused(cli("inspect", str(pair)), 2, "is a file with 2 hard links")


def test_a_failed_write_keeps_the_old_pair_whole(pair, monkeypatch) -> None:
    """An interrupt after the data file is in place, before the model is, puts the old data back."""
    import layerport.runtime.files as files
    from layerport.config import resolve_config
    from layerport.pipeline import export_layer
    from layerport.plugins import get_registry

    data = pair.with_name("linear.onnx.data")
    old = (pair.read_bytes(), data.read_bytes())
    config = resolve_config(
        get_registry(), "linear", {"in_features": "64", "out_features": "32"}, seed=7
    )
    result = export_layer(config, verify=False, external_data=True)
    assert _data_file(result, pair) != old[1]
    replace = os.replace

    def interrupted(source, target):  # type: ignore[no-untyped-def]
        if Path(target) == pair:
            raise KeyboardInterrupt
        return replace(source, target)

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        result.write(pair)
    assert (pair.read_bytes(), data.read_bytes()) == old
    assert sorted(p.name for p in pair.parent.iterdir()) == ["linear.onnx", "linear.onnx.data"]
    monkeypatch.setattr(files.os, "replace", replace)
    result.write(pair)
    assert data.read_bytes() == _data_file(result, pair)


def _data_file(result, model: Path) -> bytes:  # type: ignore[no-untyped-def]
    """The bytes ``result`` writes as ``model``'s data file."""
    return b"".join(result.files(model.name)[model.name + ".data"])


@pytest.mark.parametrize("forced", [True, False], ids=["--external-data", "past the limit"])
def test_the_triton_target_writes_the_pair_in_the_version_folder(
    cli, tmp_path, forced, request
) -> None:
    if not forced:
        request.getfixturevalue("small_limit")
    repository = tmp_path / "repo"
    asked = ["--external-data"] if forced else []
    result = cli("export", "linear", *SIZES, *asked, "--target", "triton", "-o", str(repository))
    assert_succeeded(result)
    version = repository / "linear" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert_succeeded(cli("verify", str(version / "model.onnx"), "--trials", "1"))


def test_weights_past_the_limit_never_make_a_proto_that_holds_them(small_limit) -> None:
    """The exporter's arrays are taken over as they are: the module's own memory, no copy."""
    from layerport.config import resolve_config
    from layerport.eager.build import build_module
    from layerport.export.torch_onnx import export_model
    from layerport.pipeline import export_layer
    from layerport.plugins import get_registry
    from layerport.runtime.external import ExternalModel

    config = resolve_config(get_registry(), "linear", {"in_features": "64", "out_features": "32"})
    module = build_module(config)
    model = export_model(module, config, 18)
    assert isinstance(model, ExternalModel)
    assert np.shares_memory(model.tensors["weight"], module.weight.detach().numpy())
    assert not any(
        t.HasField("raw_data") for t in model.proto.graph.initializer if t.name == "weight"
    )
    result = export_layer(config, verify=False)
    assert result.external_data and set(result.external_tensors) == {"weight"}
    assert len(result.model_bytes) < 2048
    assert result.size == len(result.model_bytes) + WEIGHT_BYTES


def test_a_pair_past_the_limit_is_read_into_arrays(pair, small_limit) -> None:
    """read_model keeps the data outside the proto, and the arrays are the file's bytes."""
    from layerport.runtime.external import ExternalModel
    from layerport.runtime.modelfile import read_model

    model = read_model(pair)
    assert isinstance(model, ExternalModel)
    data = np.fromfile(pair.with_name("linear.onnx.data"), dtype=np.float32)
    np.testing.assert_array_equal(model.tensors["weight"].ravel(), data)
    assert model.tensors["weight"].shape == (32, 64)


def test_the_data_file_of_each_tensor_starts_at_an_aligned_offset(small_limit) -> None:
    """Every tensor in the data file starts at a multiple of 64 KiB, where onnxruntime maps it."""
    from layerport.runtime.external import ALIGNMENT, ExternalModel, external_layout

    first, second = np.ones((300, 2), np.float32), np.full((5, 60), 2.0, np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(first, "a"), numpy_helper.from_array(second, "b")],
    )
    model = external.detach_tensors(onnx.helper.make_model(graph))
    files = external_layout(ExternalModel(model.proto, model.tensors), "m.onnx")
    skeleton = onnx.load_from_string(files["m.onnx"])
    offsets = [int(t.external_data[1].value) for t in skeleton.graph.initializer]
    assert offsets == [0, ALIGNMENT]
    data = b"".join(files["m.onnx.data"])
    assert data[ALIGNMENT : ALIGNMENT + second.nbytes] == second.tobytes()
    assert data[first.nbytes : ALIGNMENT] == bytes(ALIGNMENT - first.nbytes)


@pytest.mark.parametrize("command", ["verify", "infer", "inspect"])
def test_a_missing_or_short_data_file_is_named(cli, pair, command) -> None:
    data = pair.with_name("linear.onnx.data")
    with open(data, "r+b") as handle:
        handle.truncate(4000)
    assert_refused(
        cli(command, str(pair)),
        2,
        "external data of tensor 'weight' at 'linear.onnx.data' reaches byte "
        f"{WEIGHT_BYTES}, past the end of its 4000-byte file",
    )
    data.unlink()
    assert_refused(
        cli(command, str(pair)),
        2,
        "external data of tensor 'weight' at 'linear.onnx.data' cannot be opened: "
        "No such file or directory",
    )


def test_a_location_outside_the_folder_is_refused_past_the_limit(cli, pair, small_limit) -> None:
    skeleton = onnx.load(pair, load_external_data=False)
    weight = next(t for t in skeleton.graph.initializer if t.name == "weight")
    weight.external_data[0].value = "../linear.onnx.data"
    pair.with_name("linear.onnx.data").rename(pair.parent.parent / "linear.onnx.data")
    pair.write_bytes(skeleton.SerializeToString())
    assert_refused(
        cli("verify", str(pair)),
        2,
        "has location '../linear.onnx.data', which leaves the model's folder",
    )


def test_a_self_contained_export_removes_the_old_data_file(cli, pair, monkeypatch) -> None:
    """The data file named after the model goes with the model it belonged to."""
    monkeypatch.setattr(external, "INLINE_LIMIT", 2**31)
    result = cli("export", "linear", *SIZES, "-o", str(pair))
    assert_succeeded(result)
    assert [p.name for p in pair.parent.iterdir()] == ["linear.onnx"]
    assert_succeeded(cli("verify", str(pair), "--trials", "1"))


def test_a_failed_self_contained_write_keeps_the_old_pair(pair, monkeypatch) -> None:
    import layerport.runtime.files as files
    from layerport.config import resolve_config
    from layerport.pipeline import export_layer
    from layerport.plugins import get_registry

    monkeypatch.setattr(external, "INLINE_LIMIT", 2**31)
    data = pair.with_name("linear.onnx.data")
    old = (pair.read_bytes(), data.read_bytes())
    config = resolve_config(get_registry(), "linear", {"in_features": "64", "out_features": "32"})
    result = export_layer(config, verify=False)
    replace = os.replace

    def interrupted(source, target):  # type: ignore[no-untyped-def]
        if Path(target) == pair:
            raise KeyboardInterrupt
        return replace(source, target)

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        result.write(pair)
    assert (pair.read_bytes(), data.read_bytes()) == old
    assert sorted(p.name for p in pair.parent.iterdir()) == ["linear.onnx", "linear.onnx.data"]


def test_only_onnxruntime_runs_a_model_past_the_limit(pair, small_limit) -> None:
    from layerport.errors import WorkFailed
    from layerport.runtime.modelfile import read_model
    from layerport.runtime.session import Session, SessionSettings

    with pytest.raises(WorkFailed, match="its weights are past protobuf's 2 GiB"):
        Session(read_model(pair), "m", SessionSettings(runtime="onnx-reference"))


def test_quantizing_weights_past_the_limit_is_refused(cli, tmp_path, small_limit) -> None:
    assert_refused(
        cli("export", "linear", *SIZES, "--quantize", "int8", "-o", str(tmp_path / "q.onnx")),
        2,
        "past protobuf's 2 GiB; quantizing a model that large is not supported",
    )


@pytest.mark.slow
def test_a_linear_past_2_gib_exports_verifies_inspects_and_infers(tmp_path) -> None:
    """16384 x 33000 float32 weights (2.16 GB), end to end through the CLI, each in a fresh process.

    Verified on a small batch grid ([1, 2, 37], one draw) to keep it to minutes;
    the oracle for ``infer`` is numpy on the data file's own bytes.
    """
    in_features, out_features = 16384, 33000
    environment = {"LAYERPORT_MAX_MEMORY": "32G", "OMP_NUM_THREADS": "2"}
    grid = ["--dim", "batch=2", "--trials", "1"]
    model = tmp_path / "linear.onnx"
    sizes = ["-p", f"in_features={in_features}", "-p", f"out_features={out_features}"]
    exported = run_process("export", "linear", *sizes, *grid, "-o", str(model), env=environment)
    assert_succeeded(exported)
    assert "verification: passed" in exported.stdout
    data = model.with_name("linear.onnx.data")
    assert data.stat().st_size > 2**31 and model.stat().st_size < 4096
    verified = run_process("verify", str(model), *grid, env=environment)
    assert_succeeded(verified)
    assert "passed" in verified.stdout and "batch [1, 2, 37]" in verified.stdout
    inspected = run_process("inspect", str(model), "--json", env=environment)
    assert_succeeded(inspected)
    weight_bytes = 4 * out_features * (in_features + 1)
    assert f'"weight_bytes": {weight_bytes}' in inspected.stdout

    x = np.random.default_rng(1).standard_normal((2, in_features)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npz"
    inferred = run_process(
        "infer", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out),
        env=environment,
    )  # fmt: skip
    assert_succeeded(inferred)
    where = {
        tensor.name: {entry.key: int(entry.value) for entry in tensor.external_data[1:]}
        for tensor in onnx.load(model, load_external_data=False).graph.initializer
    }
    weight = np.memmap(
        data, np.float32, "r", where["weight"]["offset"], (out_features, in_features)
    )
    bias = np.memmap(data, np.float32, "r", where["bias"]["offset"], (out_features,))
    expected = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    np.testing.assert_allclose(np.load(out)["y"], expected, rtol=1e-4, atol=1e-4)
