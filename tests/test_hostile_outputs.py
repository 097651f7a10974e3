"""Hostile output paths (``export -o``, ``run --output``, ``--report``), and never losing a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostile import BUILTINS_ONLY, assert_refused, assert_succeeded, save_gemm_model
from layerport import Dim, LayerSpec, Tensor
from layerport.runtime import files
from layerport.runtime.files import atomic_write_bytes

from conftest import SpecPlugin

OLD_BYTES = b"a good file from yesterday\n"


def _commands(folder: Path) -> dict[str, list[str]]:
    """Every option that writes a file, with its target left for the test to append."""
    model = save_gemm_model(folder / "gemm.onnx")
    return {
        "export -o": ["export", "linear", "-o"],
        "run --output": ["run", "linear", "--output"],
        "infer --output": ["infer", str(model), "--dim", "n=2", "--output"],
        "export --report": ["export", "linear", "-o", str(folder / "x.onnx"), "--report"],
        "verify --report": ["verify", "linear", "--report"],
    }


@pytest.fixture(
    params=["export -o", "run --output", "infer --output", "export --report", "verify --report"]
)
def writer(request, tmp_path) -> list[str]:
    return _commands(tmp_path)[request.param]


def test_missing_parent_folder(cli, writer, tmp_path) -> None:
    target = tmp_path / "nosuch" / "out.file"
    assert_refused(cli(*writer, str(target)), 2, f"folder {target.parent} does not exist")


def test_parent_is_a_file(cli, writer, tmp_path) -> None:
    (tmp_path / "plain").write_bytes(OLD_BYTES)
    target = tmp_path / "plain" / "out.file"
    assert_refused(cli(*writer, str(target)), 2, f"{tmp_path / 'plain'} is not a folder")
    assert (tmp_path / "plain").read_bytes() == OLD_BYTES


def test_target_is_a_folder(cli, writer, tmp_path) -> None:
    (tmp_path / "folder").mkdir()
    assert_refused(
        cli(*writer, str(tmp_path / "folder")), 2, f"{tmp_path / 'folder'} is a folder; give a file"
    )


def test_target_is_a_device(cli) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    result = cli("run", "linear", "--output", "/dev/null")
    assert_refused(result, 2, "cannot write /dev/null: it exists and is not a regular file")


@contextlib.contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """Make ``folder`` refuse new files, for root too where the filesystem allows it.

    Root ignores permission bits, so the folder is made immutable (chattr +i)
    when possible; otherwise, as a normal user, it is made read-only.
    """
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(folder)], check=True)
    elif os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
    else:
        pytest.skip("running as root where chattr +i is not available")


def test_read_only_folder_is_refused_before_any_work(cli, writer, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    with _unwritable(locked):
        result = cli(*writer, str(locked / "out.file"))
    assert_refused(result, 2, f"cannot write {locked / 'out.file'}: folder", "is not writable")
    assert list(locked.iterdir()) == []


def test_os_refusing_the_final_rename_is_a_clean_error(cli, tmp_path, monkeypatch) -> None:
    # The folder passed the check, then the OS refused the write itself.
    target = tmp_path / "out.npz"
    target.write_bytes(OLD_BYTES)

    def refuse(source: str, destination: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("layerport.runtime.files.os.replace", refuse)
    result = cli("run", "linear", "--output", str(target))
    assert_refused(result, 2, f"cannot write {target}: Permission denied")
    assert target.read_bytes() == OLD_BYTES
    assert [path.name for path in tmp_path.iterdir()] == ["out.npz"]


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path, monkeypatch) -> None:
    target = tmp_path / "file.onnx"
    target.write_bytes(OLD_BYTES)

    def interrupt(descriptor: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("layerport.runtime.files.os.fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new bytes")
    assert target.read_bytes() == OLD_BYTES
    assert [path.name for path in tmp_path.iterdir()] == ["file.onnx"]


# ---------------------------------------------------------------------------
# A failed export keeps the old file


def _two_faced_spec() -> LayerSpec:
    """A layer whose forward() adds 1 only while torch is exporting it: verification must fail."""

    def build(params):  # type: ignore[no-untyped-def]
        import torch
        from torch import nn

        class TwoFaced(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = nn.Linear(4, 3)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.linear(x)
                return y + 1 if torch.compiler.is_exporting() else y

        return TwoFaced()

    return LayerSpec(
        name="two-faced",
        description="Computes something else once exported.",
        build=build,
        weights=lambda params: {"linear.weight": (3, 4), "linear.bias": (3,)},
        dims=(Dim("batch", 5, "samples"),),
        inputs=(Tensor("x", ("batch", "4")),),
        outputs=(Tensor("y", ("batch", "3")),),
    )


def test_failed_verification_keeps_the_existing_file_byte_identical(
    cli, register_plugin, tmp_path
) -> None:
    register_plugin(SpecPlugin(_two_faced_spec()), "two-faced-plugin")
    target = tmp_path / "layer.onnx"
    target.write_bytes(OLD_BYTES)
    report = tmp_path / "report.md"
    result = cli("export", "two-faced", "-o", str(target), "--report", str(report))
    assert_refused(result, 1, "verification failed in", "comparisons", "worst:")
    assert target.read_bytes() == OLD_BYTES
    assert "result: **FAILED**" in report.read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["layer.onnx", "report.md"]


# ---------------------------------------------------------------------------
# Interrupted exports


def _wait_until_verifying(process: subprocess.Popen[str], limit: float = 120) -> None:
    """Wait until the child has traced the layer and loaded onnxruntime to verify it.

    The export of the default rnn verifies for seconds after that, and the file
    is written only at the end: a signal sent a second later lands in the middle
    of the work, after onnxruntime's import has finished (an interrupt inside a
    C extension's import turns into an ImportError; see the report).
    """
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if not maps.exists():  # not Linux: give it a fixed head start
            time.sleep(6)
            return
        with contextlib.suppress(OSError):
            if "onnxruntime_pybind11_state" in maps.read_text():
                time.sleep(1.0)
                return
        time.sleep(0.05)


@pytest.mark.parametrize(
    "signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_signal_during_export_leaves_no_partial_file(tmp_path, signal_number) -> None:
    target = tmp_path / "rnn.onnx"
    target.write_bytes(OLD_BYTES)
    process = subprocess.Popen(
        # 100 draws per grid point keep verification busy for tens of seconds, so
        # the signal lands mid-export however fast this machine is.
        [sys.executable, "-m", "layerport", "export", "rnn", "-o", str(target), "--trials", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **BUILTINS_ONLY},
    )
    try:
        _wait_until_verifying(process)
        assert process.poll() is None, "the export ended before it could be interrupted"
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    # One line only: Click would print a blank line of its own before it.
    assert stderr == "Error: interrupted\n"
    assert target.read_bytes() == OLD_BYTES
    assert [path.name for path in tmp_path.iterdir()] == ["rnn.onnx"]


def test_export_into_an_existing_file_replaces_it_whole(cli, tmp_path) -> None:
    target = tmp_path / "linear.onnx"
    target.write_bytes(OLD_BYTES)
    assert_succeeded(cli("export", "linear", "-o", str(target)))
    assert target.read_bytes() != OLD_BYTES
    assert_succeeded(cli("inspect", str(target)))
    assert [path.name for path in tmp_path.iterdir()] == ["linear.onnx"]


def test_overwriting_a_private_file_keeps_it_private(cli, tmp_path) -> None:
    target = tmp_path / "linear.onnx"
    target.write_bytes(OLD_BYTES)
    target.chmod(0o600)
    assert_succeeded(cli("export", "linear", "-o", str(target)))
    assert target.read_bytes() != OLD_BYTES
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_new_file_gets_the_umask_mode(tmp_path, monkeypatch) -> None:
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "new.bin", b"data")
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o666 & ~umask
    monkeypatch.setattr(files, "_UMASK", 0o027)
    atomic_write_bytes(tmp_path / "other.bin", b"data")
    assert stat.S_IMODE((tmp_path / "other.bin").stat().st_mode) == 0o640
