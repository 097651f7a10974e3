"""The external-data layout: a model's initializers in MODEL.onnx.data beside it (issue 22).

Files past protobuf's 2 GiB limit must be written so; ``--external-data``
forces the layout for a small layer, which is what these fast tests export.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from hostile import assert_refused, assert_succeeded

SIZES = ["-p", "in_features=64", "-p", "out_features=32", "--trials", "1"]


@pytest.fixture
def pair(cli, tmp_path) -> Path:
    model = tmp_path / "linear.onnx"
    result = cli("export", "linear", *SIZES, "--external-data", "-o", str(model))
    assert_succeeded(result)
    assert "Note: the initializers are in MODEL.onnx.data beside the model" in result.stderr
    return model


def test_external_data_goes_to_a_file_named_after_the_model(pair) -> None:
    data = pair.with_name("linear.onnx.data")
    assert sorted(p.name for p in pair.parent.iterdir()) == ["linear.onnx", "linear.onnx.data"]
    skeleton = onnx.load(pair, load_external_data=False)
    external = {
        tensor.name: {entry.key: entry.value for entry in tensor.external_data}
        for tensor in skeleton.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
    }
    # The (32, 64) float32 weight goes out; the 128-byte bias stays inline (onnx's threshold).
    assert [entry["location"] for entry in external.values()] == ["linear.onnx.data"]
    assert data.stat().st_size == 32 * 64 * 4
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


def test_the_triton_target_writes_the_pair_in_the_version_folder(cli, tmp_path) -> None:
    repository = tmp_path / "repo"
    result = cli(
        "export", "linear", *SIZES, "--external-data", "--target", "triton", "-o", str(repository)
    )
    assert_succeeded(result)
    version = repository / "linear" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert_succeeded(cli("verify", str(version / "model.onnx"), "--trials", "1"))
