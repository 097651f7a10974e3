"""Hostile ``--weights`` files: never executed, never cast, refused with exit 2 and one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import sys
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from hostile import BUILTINS_ONLY, assert_refused, assert_succeeded
from layerport.weights import tensors_sha256

from conftest import run_process

# The linear layer at its defaults: 8 -> 2 with a bias.
SHAPES = {"weight": (2, 8), "bias": (2,)}


def good_weights(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {
        name: torch.randn(shape, generator=generator).to(dtype) for name, shape in SHAPES.items()
    }


class _TouchOnUnpickle:
    """Unpickling this runs os.system, which creates a marker file."""

    def __init__(self, marker) -> None:  # type: ignore[no-untyped-def]
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_pickle_never_runs_even_when_torch_is_told_to(tmp_path, container) -> None:
    marker = tmp_path / "pwned"
    payload = {"weight": _TouchOnUnpickle(marker), "bias": torch.zeros(2)}
    path = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    result = run_process(
        "run",
        "linear",
        "--weights",
        str(path),
        env={**BUILTINS_ONLY, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert not marker.exists(), "the weights file ran code"
    assert_refused(result, 2, f"{path} was refused", "never runs code from a weights file")
    if container == "torch.save":
        assert "(it would import posix.system)" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        pytest.param("w.pt", lambda good: b"", ["weights file", "is empty"], id="empty-pt"),
        pytest.param(
            "w.pt",
            lambda good: good[: len(good) // 2],
            ["is not a valid PyTorch weights file", "failed finding central directory"],
            id="truncated-pt",
        ),
        pytest.param(
            "w.pt",
            lambda good: b"\x00" + random.Random(1).randbytes(999),
            ["is not a PyTorch weights file (neither a zip archive nor a pickle)"],
            id="random-pt",
        ),
        pytest.param(
            "w.safetensors",
            lambda good: b"",
            ["is not a valid safetensors file"],
            id="empty-safetensors",
        ),
        pytest.param(
            "w.safetensors",
            lambda good: random.Random(2).randbytes(1000),
            ["is not a valid safetensors file"],
            id="random-safetensors",
        ),
        pytest.param(
            "w.bin.txt",
            lambda good: b"weights",
            ["must end in .safetensors, .pt, .pth, .bin or .npz", "'.txt'"],
            id="unknown-suffix",
        ),
    ],
)
def test_damaged_weights_file(cli, tmp_path, name, content, words) -> None:
    torch.save(good_weights(), tmp_path / "good.pt")
    path = tmp_path / name
    path.write_bytes(content((tmp_path / "good.pt").read_bytes()))
    assert_refused(cli("run", "linear", "--weights", str(path)), 2, str(path), *words)


def test_damaged_safetensors_header(cli, tmp_path) -> None:
    save_file(good_weights(), tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    assert_refused(
        cli("run", "linear", "--weights", str(path)),
        2,
        "is not a valid safetensors file",
        "Error while deserializing header",
    )
    path.write_bytes(data[:-7])
    assert_refused(cli("run", "linear", "--weights", str(path)), 2, "is not a valid safetensors")


def test_missing_weights_file(cli, tmp_path) -> None:
    path = tmp_path / "nosuch.safetensors"
    assert_refused(cli("run", "linear", "--weights", str(path)), 2, f"{path} does not exist")


def test_pickled_list_instead_of_a_dict(cli, tmp_path) -> None:
    torch.save(list(good_weights().values()), tmp_path / "list.pt")
    result = cli("run", "linear", "--weights", str(tmp_path / "list.pt"))
    assert_refused(result, 2, "holds a list, not a state dict of name -> tensor")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        # The tensors set the sizes (issue 11): a missing bias means bias=false, a (3, 8)
        # weight means 3 outputs. What cannot be read from them is still refused.
        pytest.param(
            lambda w: w.pop("weight"), ["do not fit the layer: missing weight"], id="missing"
        ),
        pytest.param(
            lambda w: w.update(extra=torch.zeros(1)), ["unexpected extra"], id="extra-key"
        ),
        pytest.param(
            lambda w: w.update(weight=torch.zeros(3, 8)),
            ["bias has shape (2,), expected (3,)"],
            id="wrong-shape",
        ),
        pytest.param(
            lambda w: w["weight"].__setitem__((0, 0), float("nan")),
            ["weight holds NaN or Inf"],
            id="nan",
        ),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_that_do_not_fit_the_layer(cli, tmp_path, change, words, suffix) -> None:
    weights = good_weights()
    change(weights)
    path = tmp_path / f"w{suffix}"
    torch.save(weights, path) if suffix == ".pt" else save_file(weights, path)
    result = cli("run", "linear", "--weights", str(path))
    assert_refused(result, 2, f"weights in {path} do not fit the layer", *words)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_without_dtype_the_layer_takes_the_weights_own(cli, tmp_path, dtype) -> None:
    path = tmp_path / "w.pt"
    torch.save(good_weights(dtype), path)
    result = cli("run", "linear", "--weights", str(path), "--json")
    assert_succeeded(result)
    assert json.loads(result.stdout)["dtype"] == str(dtype).removeprefix("torch.")
    assert "converting" not in result.stderr


@pytest.mark.parametrize(
    ("saved", "asked"),
    [(torch.float32, "float16"), (torch.float64, "float32"), (torch.float32, "bfloat16")],
)
def test_an_explicit_dtype_converts_the_weights_with_a_note(cli, tmp_path, saved, asked) -> None:
    path = tmp_path / "w.pt"
    torch.save(good_weights(saved), path)
    result = cli("run", "linear", "--weights", str(path), "--dtype", asked, "--json")
    assert_succeeded(result)
    assert json.loads(result.stdout)["dtype"] == asked
    source = str(saved).removeprefix("torch.")
    assert f"Note: converting the weights from {source} to {asked}" in result.stderr


def test_converted_weights_are_recorded_by_their_source(cli, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(good_weights(), path)
    model = tmp_path / "m.onnx"
    exported = cli(
        "export", "linear", "--weights", str(path), "--dtype", "float16", "-o", str(model)
    )
    assert_succeeded(exported)
    assert "Note: converting the weights from float32 to float16" in exported.stderr
    record = json.loads(cli("inspect", str(model), "--json").stdout)["layerport"]
    assert record["dtype"] == "float16" and record["weights_dtype"] == "float32"
    # The recorded hash is the source tensors': the float32 file verifies the float16 export.
    assert_succeeded(cli("verify", str(model), "--weights", str(path)))


@pytest.mark.parametrize(
    ("weights", "args", "message"),
    [
        pytest.param(
            {"weight": torch.ones(2, 8, dtype=torch.int64), "bias": torch.zeros(2)},
            (),
            "weight is int64, not floating point",
            id="integer",
        ),
        pytest.param(
            {"weight": torch.full((2, 8), 1e5), "bias": torch.zeros(2)},
            ("--dtype", "float16"),
            "weight holds 100000, beyond float16's largest value 65504: converting it would "
            "make it Inf",
            id="overflow",
        ),
        pytest.param(
            {"weight": torch.ones(2, 8), "bias": torch.zeros(2, dtype=torch.float16)},
            (),
            "mix dtypes (float16 and float32); convert them all with --dtype float32",
            id="mixed",
        ),
    ],
)
def test_weights_that_cannot_become_the_layers_dtype_are_refused(
    cli, tmp_path, weights, args, message
) -> None:
    path = tmp_path / "w.pt"
    torch.save(weights, path)
    assert_refused(cli("run", "linear", "--weights", str(path), *args), 2, message)


def test_float64_weights_work_with_dtype_float64(cli, tmp_path) -> None:
    save_file(good_weights(torch.float64), tmp_path / "w.safetensors")
    result = cli(
        "run", "linear", "--dtype", "float64", "--weights", str(tmp_path / "w.safetensors")
    )
    assert_succeeded(result)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_good_weights_run_export_and_verify_only_with_the_same_file(cli, tmp_path, suffix) -> None:
    path = tmp_path / f"w{suffix}"
    torch.save(good_weights(), path) if suffix == ".pt" else save_file(good_weights(), path)
    ran = cli("run", "linear", "--weights", str(path), "--json")
    assert_succeeded(ran)
    model = tmp_path / "linear.onnx"
    assert_succeeded(cli("export", "linear", "--weights", str(path), "-o", str(model)))
    described = json.loads(cli("inspect", str(model), "--json").stdout)
    recorded = described["layerport"]["weights_sha256"]
    # The file records the tensors' content, not the weights file's bytes (issue 10).
    assert recorded == tensors_sha256(good_weights())
    assert recorded != hashlib.sha256(path.read_bytes()).hexdigest()
    assert described["layerport"]["seed"] is None

    assert_succeeded(cli("verify", str(model), "--weights", str(path)))
    other = tmp_path / f"other{suffix}"
    changed = good_weights()
    changed["bias"] += 1
    torch.save(changed, other) if suffix == ".pt" else save_file(changed, other)
    assert_refused(
        cli("verify", str(model), "--weights", str(other)),
        2,
        f"weights file {other} does not match the one this file was exported from",
        f"recorded {recorded[:12]}...",
    )
    assert_refused(cli("verify", str(model)), 2, "exported from a weights file; pass the same file")
    # The same tensors in the other container, keys in another order: the same weights.
    same = dict(reversed(list(good_weights().items())))
    twin = tmp_path / ("twin.pt" if suffix == ".safetensors" else "twin.safetensors")
    torch.save(same, twin) if twin.suffix == ".pt" else save_file(same, twin)
    assert_succeeded(cli("verify", str(model), "--weights", str(twin)))
    missing = tmp_path / f"nosuch{suffix}"
    assert_refused(
        cli("verify", str(model), "--weights", str(missing)), 2, f"{missing} does not exist"
    )


def _meta() -> dict[str, torch.Tensor]:
    return {name: torch.empty_like(t, device="meta") for name, t in good_weights().items()}


def _sparse() -> dict[str, torch.Tensor]:
    return {**good_weights(), "weight": good_weights()["weight"].to_sparse()}


def _quantized() -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # torch deprecates quantized tensors; users still have them
        warnings.simplefilter("ignore")
        weight = torch.quantize_per_tensor(good_weights()["weight"], 0.1, 0, torch.qint8)
    return {**good_weights(), "weight": weight}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            _meta,
            "bias holds no data: it is a meta tensor (saved from a module built on device='meta')",
            id="meta",
        ),
        pytest.param(
            _sparse, "weight is a sparse_coo tensor; save it dense (tensor.to_dense())", id="sparse"
        ),
        pytest.param(
            _quantized,
            "weight is a quantized tensor; save it dequantized (tensor.dequantize())",
            id="quantized",
        ),
    ],
)
def test_weights_that_are_not_plain_dense_tensors_are_refused(cli, tmp_path, make, message) -> None:
    path = tmp_path / "w.pt"
    torch.save(make(), path)
    assert_refused(cli("run", "linear", "--weights", str(path)), 2, "do not fit the layer", message)


# ---------------------------------------------------------------------------
# Weights of the wrong rank (issue 30): the file's fault, named before plugin code runs


def _dropped(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-1]


def _added(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape, 1)


@pytest.mark.parametrize(
    ("layer", "tensor", "reshape"),
    [
        pytest.param("linear", "weight", _dropped, id="linear-1d"),
        pytest.param("linear", "weight", _added, id="linear-3d"),
        pytest.param("rnn", "wi.weight", _dropped, id="rnn"),
        pytest.param("mlp", "fc1.weight", _added, id="mlp"),
        pytest.param("gru", "weight_ih_l0", _dropped, id="gru"),
        pytest.param("lstm", "weight_hh_l0", _added, id="lstm"),
        pytest.param("elman", "weight_ih_l0", _dropped, id="elman"),
        pytest.param("conv1d", "weight", _dropped, id="conv1d"),
        pytest.param("conv2d", "weight", _dropped, id="conv2d"),
        pytest.param("conv2d", "bias", _added, id="conv2d-bias"),
    ],
)
def test_weight_of_the_wrong_rank_is_the_files_fault(cli, tmp_path, layer, tensor, reshape) -> None:
    from layerport.plugins import get_registry

    spec = get_registry().resolve(layer).spec
    expected = spec.weights(spec.resolve_params())
    tensors = {name: torch.zeros(shape) for name, shape in expected.items()}
    tensors[tensor] = torch.zeros(reshape(expected[tensor]))
    path = tmp_path / "w.safetensors"
    save_file(tensors, path)
    shape = tuple(tensors[tensor].shape)
    assert_refused(
        cli("run", layer, "--weights", str(path)),
        2,
        f"weights in {path} do not fit layer {layer}: {tensor} has shape {shape}",
        f"expected a {len(expected[tensor])}-d shape such as {expected[tensor]}",
    )


def test_a_flat_linear_weight_names_the_shape_it_should_have(cli, tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(8), "bias": torch.zeros(2)}, path)
    result = cli("run", "linear", "--weights", str(path))
    assert_refused(
        result,
        2,
        "do not fit layer linear: weight has shape (8,)",
        "expected a 2-d shape such as (2, 8)",
    )
    assert "plugin" not in result.stderr


def test_a_later_layers_weight_of_the_wrong_rank_is_named(cli, tmp_path) -> None:
    # weight_ih_l1 is not among the default lstm's weights; its rank is weight_ih_l0's.
    shapes = {"weight_ih_l0": (128, 16), "weight_hh_l0": (128, 32), "weight_ih_l1": (128,)}
    path = tmp_path / "w.safetensors"
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path)), 2, "weight_ih_l1 has shape (128,) (1-d)"
    )


# ---------------------------------------------------------------------------
# Corrupt records inside a valid container (issue 30): bad files, not internal errors


def _legacy_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(good_weights(), buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def _zip_with_pickle_byte(position: int, value: int) -> bytes:
    buffer = io.BytesIO()
    torch.save(good_weights(), buffer)
    members = {}
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    changed = io.BytesIO()
    with zipfile.ZipFile(changed, "w") as archive:
        for name, data in members.items():
            if name.endswith("data.pkl"):
                data = data[:position] + bytes([value]) + data[position + 1 :]
            archive.writestr(name, data)
    return changed.getvalue()


def _element_count(data: bytes) -> bytes:
    # The weight's storage records 16 elements (BININT1 16); say 64, more than its 64 bytes hold.
    return data.replace(b"cpuq\x06K\x10t", b"cpuq\x06K@t", 1)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(lambda: _legacy_bytes()[:3], "IndexError", id="legacy-cut-at-3"),
        pytest.param(lambda: _legacy_bytes()[:18], "error: unpack requires", id="short-record"),
        pytest.param(lambda: _zip_with_pickle_byte(57, 0), "IndexError", id="bad-pickle-index"),
        pytest.param(lambda: _zip_with_pickle_byte(188, 0), "AttributeError", id="not-a-tensor"),
        pytest.param(lambda: _element_count(_zip_with_pickle_byte(0, 0x80)), "", id="count"),
    ],
)
def test_corrupt_record_in_a_weights_file_is_a_bad_file(cli, tmp_path, make, words) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(make())
    assert_refused(
        cli("run", "linear", "--weights", str(path)),
        2,
        f"{path} is not a valid PyTorch weights file",
        words,
    )


# ---------------------------------------------------------------------------
# Fuzzing (issue 30): every weights format, and model files, each mutant in a child of its own


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "count"), [("weights", 200), ("models", 48)])
def test_mutants_of_weights_and_model_files_never_crash(kind: str, count: int) -> None:
    from fuzz_weights import LIMIT, fuzz

    summary = fuzz(count, seed=20261206, jobs=2, kind=kind)
    print(summary.line(), file=sys.stderr)
    assert summary.runs == count
    assert not summary.signals, summary.signals
    assert not summary.internal_errors, summary.internal_errors
    assert not summary.problems, summary.problems
    assert not summary.over_limit, (LIMIT, summary.over_limit)
    assert set(summary.exit_codes) <= {0, 1, 2}
    # Most mutants are refused; some still load. Both kinds must have been tried.
    assert summary.exit_codes[2] > 0 and summary.exit_codes[0] > 0
