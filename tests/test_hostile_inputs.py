"""Hostile ``--input`` files for ``run`` and ``infer``: refused with exit 2, never unpickled."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest

from hostile import assert_refused, assert_succeeded, save_gemm_model

# Both commands read the same files: linear takes x of batch x 8, the gemm file x of n x 4.
COMMANDS = {
    "run": lambda folder: ["run", "linear"],
    "infer": lambda folder: ["infer", str(save_gemm_model(folder / "gemm.onnx"))],
}
WIDTH = {"run": 8, "infer": 4}


@pytest.fixture(params=sorted(COMMANDS))
def command(request, tmp_path):  # type: ignore[no-untyped-def]
    """The command line up to --input, and the width of x it expects."""
    return COMMANDS[request.param](tmp_path), WIDTH[request.param]


def test_missing_file(cli, command, tmp_path) -> None:
    args, _ = command
    missing = tmp_path / "nosuch.npy"
    assert_refused(cli(*args, "--input", f"x={missing}"), 2, f"input file {missing} does not exist")


def test_text_file_is_not_an_array(cli, command, tmp_path) -> None:
    args, _ = command
    text = tmp_path / "x.npy"
    text.write_text("1, 2, 3\n")
    assert_refused(cli(*args, "--input", f"x={text}"), 2, f"{text} is not an .npy or .npz file")


def test_empty_file(cli, command, tmp_path) -> None:
    args, _ = command
    (tmp_path / "x.npy").write_bytes(b"")
    assert_refused(cli(*args, "--input", f"x={tmp_path / 'x.npy'}"), 2, "(it is empty)")


def test_pickled_object_array_is_refused_without_unpickling(cli, command, tmp_path) -> None:
    args, _ = command
    marker = tmp_path / "unpickled"
    array = np.array([_Marker(marker), None], dtype=object)
    np.save(tmp_path / "x.npy", array, allow_pickle=True)
    result = cli(*args, "--input", f"x={tmp_path / 'x.npy'}")
    assert_refused(result, 2, "holds Python objects (a pickle)", "reads only numeric arrays")
    np.savez(tmp_path / "inputs.npz", x=array)
    result = cli(*args, "--input", str(tmp_path / "inputs.npz"))
    assert_refused(result, 2, "(array x) holds Python objects (a pickle)")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("shape_of", "dtype", "words"),
    [
        pytest.param(lambda width: (3, width + 1), np.float32, ["axis 1 must be"], id="shape"),
        pytest.param(lambda width: (3, width, 1), np.float32, ["must have 2 dims"], id="rank"),
        pytest.param(
            lambda width: (3, width),
            np.float64,
            [
                "must be float32, got float64",
                "convert it before saving it (array.astype(numpy.float32))",
            ],
            id="f64",
        ),
        pytest.param(lambda width: (3, width), np.int32, ["must be float32, got int32"], id="int"),
        pytest.param(lambda width: (0, width), np.float32, ["axis 0 is empty"], id="empty-axis"),
    ],
)
def test_wrong_shape_rank_or_dtype(cli, command, tmp_path, shape_of, dtype, words) -> None:
    args, width = command
    np.save(tmp_path / "x.npy", np.zeros(shape_of(width), dtype))
    assert_refused(cli(*args, "--input", f"x={tmp_path / 'x.npy'}"), 2, "input x", *words)


def test_unknown_input_name(cli, command, tmp_path) -> None:
    args, width = command
    np.save(tmp_path / "x.npy", np.zeros((2, width), np.float32))
    assert_refused(
        cli(*args, "--input", f"z={tmp_path / 'x.npy'}"), 2, "unknown input 'z'; inputs: x"
    )
    np.savez(tmp_path / "in.npz", x=np.zeros((2, width), np.float32), extra=np.zeros(1))
    assert_refused(cli(*args, "--input", str(tmp_path / "in.npz")), 2, "unknown input 'extra'")


def test_nan_and_inf_run_and_say_so(cli, command, tmp_path) -> None:
    args, width = command
    array = np.ones((3, width), np.float32)
    array[0, 0], array[1, 1] = np.nan, np.inf
    np.save(tmp_path / "x.npy", array)
    result = cli(*args, "--input", f"x={tmp_path / 'x.npy'}")
    assert_succeeded(result)
    assert "Warning: input x holds NaN or Inf values" in result.stderr.splitlines()


def test_truncated_array_and_lying_header(cli, command, tmp_path) -> None:
    args, width = command
    np.save(tmp_path / "x.npy", np.zeros((4, width), np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[:-5])
    assert_refused(cli(*args, "--input", f"x={tmp_path / 'x.npy'}"), 2, "is truncated")
    # A header that promises 32 GB in a 200-byte file is refused before allocating.
    (tmp_path / "big.npy").write_bytes(_header((10**9, width)) + bytes(64))
    result = cli(*args, "--input", f"x={tmp_path / 'big.npy'}")
    assert_refused(result, 2, f"is truncated: its header promises {10**9 * width * 4} bytes")


def test_array_over_the_memory_limit_is_refused_before_reading(
    cli, command, tmp_path, monkeypatch
) -> None:
    args, width = command
    np.savez_compressed(tmp_path / "in.npz", x=np.zeros((10_000, width), np.float32))
    monkeypatch.setenv("LAYERPORT_MAX_MEMORY", "64K")
    result = cli(*args, "--input", str(tmp_path / "in.npz"))
    assert_refused(result, 2, "reading", "(array x) needs about", "LAYERPORT_MAX_MEMORY")


def test_damaged_npz(cli, command, tmp_path) -> None:
    args, width = command
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, width), np.float32))
    (tmp_path / "in.npz").write_bytes(buffer.getvalue()[:-30])
    assert_refused(cli(*args, "--input", str(tmp_path / "in.npz")), 2, "damaged .npz file")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert_refused(
        cli(*args, "--input", str(tmp_path / "other.npz")), 2, "'notes.txt', which is not an .npy"
    )


def test_npy_and_npz_mixed_up(cli, command, tmp_path) -> None:
    args, width = command
    np.save(tmp_path / "x.npy", np.zeros((2, width), np.float32))
    np.savez(tmp_path / "in.npz", x=np.zeros((2, width), np.float32))
    assert_refused(cli(*args, "--input", str(tmp_path / "x.npy")), 2, "is a single array")
    assert_refused(
        cli(*args, "--input", f"x={tmp_path / 'in.npz'}"), 2, "is an .npz archive", "without NAME="
    )


class _Marker:
    """Creates a file when unpickled, so a test can tell whether it was."""

    def __init__(self, path) -> None:  # type: ignore[no-untyped-def]
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


def _header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def test_input_file_conflicting_with_an_explicit_dim_is_refused(tmp_path) -> None:
    from layerport.cli.app import render_error
    from layerport.config import bind_inputs, resolve_config
    from layerport.errors import UserInputError
    from layerport.plugins import get_registry
    from layerport.runtime.npy import read_arrays

    config = resolve_config(get_registry(), "linear", dims={"batch": 4})
    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.float32))
    arrays = read_arrays([("x", tmp_path / "x.npy")])
    with pytest.raises(UserInputError) as refused:
        bind_inputs(config, arrays, explicit_dims={"batch": 4})
    # The library names the dims argument; the CLI words it as its flag.
    assert re.match(r"^dim batch is 4 from --dim but 8 in input x$", render_error(refused.value))
    assert str(refused.value) == "dim batch is 4 from the dims argument but 8 in input x"
    # A --dim that agrees with the file, and no --dim at all, both run at the file's size.
    agreeing = resolve_config(get_registry(), "linear", dims={"batch": 8})
    assert bind_inputs(agreeing, arrays, explicit_dims={"batch": 8})[0].dims["batch"] == 8
    assert bind_inputs(resolve_config(get_registry(), "linear"), arrays)[0].dims["batch"] == 8
