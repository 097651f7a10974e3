"""Checkpoints as they come (issue 23 part 4): ``.npz`` archives and TorchScript archives.

Every file is a real one, written by numpy.savez or torch.jit.save; the tensors
read are compared with the scripted module's own ``state_dict()``, and hostile
archives are refused with nothing run.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hostile import assert_refused, assert_succeeded
from layerport.errors import BadFile
from layerport.weights import (
    keyed_checkpoint,
    read_tensor_shapes,
    read_weights_file,
    weights_format,
)


class Encoder(nn.Module):
    """A nested custom module with buffers: a registered one and BatchNorm's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.norm = nn.BatchNorm1d(4)
        self.register_buffer("scale", torch.full((4,), 0.5))
        self.head = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.conv(x)).mean(-1) * self.scale
        return self.head(features)


def _trained_encoder() -> Encoder:
    torch.manual_seed(3)
    model = Encoder()
    model.train()
    for _ in range(3):  # running statistics and the step counter move off their defaults
        model(torch.randn(8, 3, 10))
    return model.eval()


def _run(cli, tmp_path: Path, layer: str, x: torch.Tensor, *weights: str) -> dict:  # type: ignore[no-untyped-def]
    """``layerport run LAYER`` on ``x`` with ``weights`` options: its outputs by name."""
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "out.npz"
    result = cli("run", layer, *weights, "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out))
    assert_succeeded(result)
    return dict(np.load(out))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(1)
    return {
        "sequential": nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)),
        "nested": _trained_encoder(),
        "lstm": nn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True),
        "cells": nn.ModuleDict({"lstm": nn.LSTMCell(3, 4), "gru": nn.GRUCell(3, 4)}),
    }


@pytest.mark.parametrize("name", ["sequential", "nested", "lstm", "cells"])
def test_a_torchscript_archive_reads_as_its_state_dict(tmp_path, monkeypatch, name) -> None:
    scripted = torch.jit.script(_models()[name])
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    expected = scripted.state_dict()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.jit.load compiles and runs the archive's code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    read = read_weights_file(path).entries
    assert list(read) == list(expected)
    for key, tensor in expected.items():
        assert read[key].dtype == tensor.dtype, key
        assert torch.equal(read[key], tensor), key
    assert weights_format(path) == "torchscript"


def test_batchnorm_buffers_from_torchscript_run_as_the_module(cli, tmp_path) -> None:
    model = _trained_encoder()
    assert int(model.norm.num_batches_tracked) == 3
    path = tmp_path / "encoder.pt"
    torch.jit.script(model).save(str(path))
    x = torch.randn(2, 4, 7)
    outputs = _run(
        cli, tmp_path, "batchnorm1d", x, "--weights", str(path), "--weights-prefix", "norm."
    )
    with torch.no_grad():
        expected = model.norm(x).numpy()
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".jit", ".bin", ".torchscript"])
def test_a_torchscript_archive_is_known_by_its_content(cli, tmp_path, suffix) -> None:
    model = nn.Linear(8, 2)
    path = tmp_path / f"head{suffix}"
    torch.jit.script(model).save(str(path))
    if suffix == ".torchscript":
        assert weights_format(path) == "torchscript"
    result = cli("run", "linear", "--weights", str(path), "--json")
    assert_succeeded(result)


def test_a_torch_save_zip_and_an_npz_are_known_by_content_too(tmp_path) -> None:
    torch.save(nn.Linear(8, 2).state_dict(), tmp_path / "last.ckpt")
    np.savez(tmp_path / "weights.data", weight=np.ones((2, 8), np.float32))
    assert weights_format(tmp_path / "last.ckpt") == "torch"
    assert weights_format(tmp_path / "weights.data.npz") == "npz"
    (tmp_path / "weights.data.npz").rename(tmp_path / "weights.archive")
    assert weights_format(tmp_path / "weights.archive") == "npz"


# ---------------------------------------------------------------------------
# Hostile TorchScript archives: a data.pkl that would run code


def _archive_with_pickle(tmp_path: Path, data: bytes) -> Path:
    """A real TorchScript archive whose data.pkl is replaced by ``data``."""
    original = tmp_path / "real.pt"
    torch.jit.script(nn.Linear(8, 2)).save(str(original))
    path = tmp_path / "hostile.pt"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            content = data if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info.filename, content)
    return path


class _Call:
    """Pickles as a call of ``function`` with ``arguments``, as an attacker would write it."""

    def __init__(self, function: object, *arguments: object) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.function, self.arguments)


def _global_then_call(module: str, name: str, argument: str) -> bytes:
    """GLOBAL module.name, then a REDUCE of it with one string: the raw opcodes."""
    return (
        b"\x80\x02c"
        + f"{module}\n{name}\n".encode()
        + b"X"
        + len(argument).to_bytes(4, "little")
        + argument.encode()
        + b"\x85R."
    )


# What each hostile pickle would call, and with what: each would create the canary.
HOSTILE_CALLS = [
    ("os", "system", "touch {canary}"),
    ("builtins", "eval", "open({canary!r}, 'w')"),
    ("builtins", "exec", "open({canary!r}, 'w')"),
    ("subprocess", "getoutput", "touch {canary}"),
    ("__torch__.torch.classes.evil", "Run", "touch {canary}"),  # a C++ class's own code
]


@pytest.mark.parametrize(("module", "name", "command"), HOSTILE_CALLS)
def test_a_hostile_torchscript_archive_runs_nothing(cli, tmp_path, module, name, command) -> None:
    canary = tmp_path / "canary"
    path = _archive_with_pickle(
        tmp_path, _global_then_call(module, name, command.format(canary=str(canary)))
    )
    assert weights_format(path) == "torchscript"
    result = cli("run", "linear", "--weights", str(path))
    assert_refused(result, 2, f"{path} was refused", f"it would import {module}.{name}")
    assert not canary.exists()


@pytest.mark.parametrize(("module", "name", "command"), HOSTILE_CALLS[:4])
def test_the_hostile_pickles_would_run_anywhere_else(tmp_path, module, name, command) -> None:
    # Without this, the test above could pass on pickles that do nothing.
    canary = tmp_path / "canary"
    pickle.loads(_global_then_call(module, name, command.format(canary=str(canary))))
    assert canary.exists()


def test_a_pickled_call_in_a_torchscript_archive_runs_nothing(cli, tmp_path) -> None:
    canary = tmp_path / "canary"
    path = _archive_with_pickle(tmp_path, pickle.dumps(_Call(os.system, f"touch {canary}")))
    result = cli("run", "linear", "--weights", str(path))
    assert_refused(result, 2, f"it would import {os.system.__module__}.system")
    assert not canary.exists()


def test_a_mangled_global_is_named_on_one_printable_line(cli, tmp_path) -> None:
    path = _archive_with_pickle(tmp_path, _global_then_call("os\x07", "sys\x1btem", "x"))
    result = cli("run", "linear", "--weights", str(path))
    assert_refused(result, 2, "it would import 'os\\x07.sys\\x1btem'")


def test_a_module_that_saves_its_own_state_is_refused(cli, tmp_path) -> None:
    # NEWOBJ of a __torch__ class, then BUILD with a tuple: state only its __setstate__ reads.
    data = b"\x80\x02c__torch__\nOwn\n)\x81K\x01K\x02\x86b."
    path = _archive_with_pickle(tmp_path, data)
    assert_refused(
        cli("run", "linear", "--weights", str(path)),
        2,
        "module __torch__.Own saves its own state (__getstate__)",
    )


def test_a_module_that_contains_itself_is_refused(tmp_path) -> None:
    # A module record whose attribute "loop" is the record itself (BINPUT 0, BINGET 0).
    path = _archive_with_pickle(tmp_path, b"")
    with zipfile.ZipFile(tmp_path / "real.pt") as archive:
        real = next(archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl"))
    # The class as the archive's code declares it (torch mangles a second Linear's name).
    linear = re.match(rb"\x80\x02(c__torch__[^\n]*\n\w+\n)", real).group(1)  # type: ignore[union-attr]
    data = b"\x80\x02" + linear + b")\x81q\x00}X\x04\x00\x00\x00looph\x00sb."
    path = _archive_with_pickle(tmp_path, data)
    with pytest.raises(BadFile, match="module loop contains itself"):
        read_weights_file(path)


def test_a_tensor_reaching_past_its_record_is_refused(tmp_path) -> None:
    path = tmp_path / "real.pt"
    torch.jit.script(nn.Linear(8, 2)).save(str(path))
    with zipfile.ZipFile(path) as archive:
        data = next(archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl"))
    # The weight's size (2, 8) becomes (2, 80): 160 elements from a record of 16.
    changed = data.replace(b"(K\x02K\x08t", b"(K\x02KPt", 1)
    assert changed != data
    hostile = _archive_with_pickle(tmp_path, changed)
    with pytest.raises(BadFile, match="reaches past its storage of 16 elements"):
        read_weights_file(hostile)


def test_a_damaged_torchscript_archive_is_a_bad_file(cli, tmp_path) -> None:
    path = _archive_with_pickle(tmp_path, b"\x80\x02c__torch__\nBroken\n")
    assert_refused(
        cli("run", "linear", "--weights", str(path)), 2, "is not a valid TorchScript archive"
    )


# ---------------------------------------------------------------------------
# .npz archives


def test_an_npz_keeps_its_keys_and_order(tmp_path) -> None:
    table, weight = np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((2, 3), np.float64)
    np.savez(tmp_path / "g2p.npz", emb_table=table, fc_w=weight, fc_b=np.zeros(2, np.float64))
    source = read_weights_file(tmp_path / "g2p.npz")
    assert list(source.entries) == ["emb_table", "fc_w", "fc_b"]
    assert torch.equal(source.entries["emb_table"], torch.from_numpy(table))
    assert source.entries["fc_w"].dtype == torch.float64
    assert read_tensor_shapes(tmp_path / "g2p.npz") == {
        "emb_table": (4, 3),
        "fc_w": (2, 3),
        "fc_b": (2,),
    }


def test_an_npzs_own_names_are_picked_per_weight(tmp_path) -> None:
    weight, bias = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)
    np.savez(tmp_path / "g2p.npz", emb_table=np.zeros((4, 3), np.float32), fc_w=weight, fc_b=bias)
    source = read_weights_file(tmp_path / "g2p.npz")
    checkpoint = keyed_checkpoint(source, {"weight": "fc_w", "bias": "fc_b"})
    assert list(checkpoint.tensors) == ["weight", "bias"]
    assert torch.equal(checkpoint.tensors["weight"], torch.from_numpy(weight))
    assert checkpoint.notes == ("reading weight from 'fc_w', bias from 'fc_b'",)
    with pytest.raises(
        BadFile, match=r"holds no tensor 'fc_wt' \(for weight\); did you mean 'fc_w'"
    ):
        keyed_checkpoint(source, {"weight": "fc_wt", "bias": "fc_b"})


def test_an_npz_of_torch_names_loads_an_lstm_cell(cli, tmp_path) -> None:
    torch.manual_seed(4)
    cell = nn.LSTMCell(3, 5)
    np.savez(tmp_path / "cell.npz", **{k: v.numpy() for k, v in cell.state_dict().items()})
    x = torch.randn(2, 3)
    out = _run(cli, tmp_path, "lstm_cell", x, "--weights", str(tmp_path / "cell.npz"))
    with torch.no_grad():
        h1, c1 = cell(x)
    np.testing.assert_allclose(out["h1"], h1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["c1"], c1.numpy(), rtol=1e-5, atol=1e-6)


def test_an_npz_keeps_batchnorms_integer_step_counter(cli, tmp_path) -> None:
    norm = _trained_encoder().norm
    state = {key: tensor.numpy() for key, tensor in norm.state_dict().items()}
    assert state["num_batches_tracked"].dtype == np.int64
    np.savez(tmp_path / "norm.npz", **state)
    assert read_weights_file(tmp_path / "norm.npz").entries["num_batches_tracked"].item() == 3
    x = torch.randn(2, 4, 5)
    outputs = _run(cli, tmp_path, "batchnorm1d", x, "--weights", str(tmp_path / "norm.npz"))
    with torch.no_grad():
        expected = norm(x).numpy()
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-5, atol=1e-6)


def test_an_object_array_in_an_npz_is_refused_by_its_key(cli, tmp_path) -> None:
    path = tmp_path / "w.npz"
    np.savez(
        path,
        weight=np.ones((2, 8), np.float32),
        bias=np.array([os.system, "x"], dtype=object),
    )
    assert_refused(
        cli("run", "linear", "--weights", str(path)), 2, "(array bias) holds Python objects"
    )


def test_an_npz_of_strings_is_refused_by_its_key(cli, tmp_path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, weight=np.ones((2, 8), np.float32), bias=np.array(["a", "b"]))
    assert_refused(cli("run", "linear", "--weights", str(path)), 2, "(array bias) holds <U1")


def test_a_big_endian_npz_loads_as_its_values(tmp_path) -> None:
    np.savez(tmp_path / "w.npz", weight=np.arange(6, dtype=">f4").reshape(2, 3))
    tensor = read_weights_file(tmp_path / "w.npz").entries["weight"]
    assert torch.equal(tensor, torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_reading_pickle_free_formats_needs_no_torch(tmp_path) -> None:
    import subprocess
    import sys

    from safetensors.numpy import save_file

    np.savez(tmp_path / "w.npz", weight=np.ones((2, 8), np.float32))
    save_file({"fc.weight": np.ones((2, 8), np.float32)}, str(tmp_path / "w.safetensors"))
    probe = (
        "import sys; from pathlib import Path\n"
        "from layerport.weights import read_tensor_shapes\n"
        f"print(read_tensor_shapes(Path({str(tmp_path / 'w.npz')!r})),"
        f" read_tensor_shapes(Path({str(tmp_path / 'w.safetensors')!r})), 'torch' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert completed.stdout.strip() == "{'weight': (2, 8)} {'fc.weight': (2, 8)} False", (
        completed.stderr
    )


def test_a_zip_python_cannot_read_is_left_to_torch(cli, tmp_path) -> None:
    # A member whose "version needed to extract" is 12.8: zipfile refuses it, torch does not.
    torch.save(nn.Linear(8, 2).state_dict(), tmp_path / "w.pt")
    data = bytearray((tmp_path / "w.pt").read_bytes())
    entry = data.index(b"PK\x01\x02")
    data[entry + 6] = 128
    (tmp_path / "w.pt").write_bytes(bytes(data))
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(tmp_path / "w.pt")
    assert weights_format(tmp_path / "w.pt") == "torch"
    assert_succeeded(cli("run", "linear", "--weights", str(tmp_path / "w.pt")))
