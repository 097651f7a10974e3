"""The deployment side never needs torch.

Commands that do not build or export a layer must not import it (start-up time,
and deployments without torch), and a second virtual environment where torch is
not installed at all must run ``layerport infer`` on a file the first exported.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_process

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from layerport.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
else:
    code = 0
heavy = sorted(name for name in ("torch", "onnxscript", "safetensors") if name in sys.modules)
print("MODULES", ",".join(heavy), "EXIT", code, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def rnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torch_free") / "rnn.onnx"
    assert run_process("export", "rnn", "-o", str(path)).exit_code == 0
    return path


PROBED = [
    ["--help"],
    ["list"],
    ["list", "--json"],
    ["show", "rnn"],
    ["plugins"],
    ["targets"],
    ["serve", "--help"],
    ["inspect", "{file}"],
    ["infer", "{file}"],
    ["generate", "--help"],
    ["run", "--help"],
    ["export", "--help"],
]


@pytest.mark.parametrize("args", PROBED)
def test_command_does_not_import_torch(args: list[str], rnn_file: Path) -> None:
    argv = [arg.format(file=rnn_file) for arg in args]
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    last = completed.stderr.strip().splitlines()[-1]
    assert last == "MODULES  EXIT 0", completed.stderr


def test_the_torch_free_commands_are_the_ones_probed_and_documented() -> None:
    """The list a runtime-only install's error gives is the one tested above, and the docs'."""
    from layerport.cli.app import TORCH_FREE_COMMANDS

    probed = {args[0] for args in PROBED if not args[0].startswith("-")}
    assert set(TORCH_FREE_COMMANDS) <= probed
    page = (Path(__file__).parent.parent / "docs" / "deploying.md").read_text()
    documented = page.split("the commands", 1)[1].split("never import torch", 1)[0]
    assert set(re.findall(r"`(\w+)`", documented)) == set(TORCH_FREE_COMMANDS)


def test_run_does_import_torch() -> None:
    # The probe can tell: without this, the test above could never fail.
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "linear"], capture_output=True, text=True
    )
    assert "torch" in completed.stderr.strip().splitlines()[-1]


def test_the_serving_modules_do_not_import_torch() -> None:
    # The python backend's model runs in Triton's stub, in an environment without torch.
    modules = [
        "layerport.serving." + name
        for name in (
            "pbtxt",
            "model_config",
            "repository",
            "python_backend",
            "client",
            "tritonserver",
        )
    ]
    code = f"import sys; import {', '.join(modules)}; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.stdout.strip() == "False", completed.stderr


def test_the_runtime_imports_neither_the_registry_nor_the_configuration() -> None:
    # Data flows one way: reading arrays and checking sizes needs only layerport.limits.
    code = "import sys, layerport.runtime.session; print(' '.join(sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = set(completed.stdout.split())
    assert "layerport.runtime.limits" in loaded, completed.stderr
    assert not loaded & {"layerport.registry", "layerport.config", "layerport.weights"}


def test_infer_matches_run(rnn_file: Path, tmp_path: Path) -> None:
    run = run_process("run", "rnn", "--output", str(tmp_path / "run.npz"))
    infer = run_process("infer", str(rnn_file), "--output", str(tmp_path / "infer.npz"))
    assert run.exit_code == 0 and infer.exit_code == 0, infer.stderr
    with np.load(tmp_path / "run.npz") as eager, np.load(tmp_path / "infer.npz") as exported:
        for name in ("y", "h_n"):
            np.testing.assert_allclose(exported[name], eager[name], rtol=1e-4, atol=1e-5)


def test_infer_leaves_optional_inputs_out_and_checks_the_rest(
    rnn_file: Path, tmp_path: Path
) -> None:
    x = np.random.default_rng(5).standard_normal((3, 11, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_process("infer", str(rnn_file), "--input", f"x={tmp_path / 'x.npy'}", "--json")
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert outputs["y"]["shape"] == [3, 11, 16] and outputs["h_n"]["shape"] == [3, 64]
    np.save(tmp_path / "bad.npy", x[:, :, :100])
    bad = run_process("infer", str(rnn_file), "--input", f"x={tmp_path / 'bad.npy'}")
    assert bad.exit_code == 2
    assert bad.stderr == "Error: input x axis 2 must be 128, got 100\n"
    np.save(tmp_path / "h0.npy", np.zeros((3, 64), np.float32))
    missing = run_process("infer", str(rnn_file), "--input", f"h0={tmp_path / 'h0.npy'}")
    assert missing.exit_code == 2
    assert missing.stderr == "Error: input x is required (batch x seq x 128)\n"


@pytest.mark.slow
def test_a_torch_free_environment_runs_infer(rnn_file: Path, tmp_path: Path) -> None:
    """The README's deployment install, in a fresh venv: no torch, the same outputs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(REPO / "constraints.txt"), str(REPO)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "torch is installed in the deployment environment"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    deployed = subprocess.run(
        [str(venv / "bin" / "layerport"), "infer", str(rnn_file), "--output", str(tmp_path / "d.npz")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stderr.startswith("saved y, h_n to "), deployed.stderr  # and nothing else
    assert deployed.stderr.count("\n") == 1
    needs_torch = subprocess.run(
        [str(venv / "bin" / "layerport"), "run", "linear"], capture_output=True, text=True, env=env
    )
    assert needs_torch.returncode == 1
    assert needs_torch.stderr.startswith("Error: this command needs torch,")
    assert "pip install -c constraints.txt 'layerport[export]'" in needs_torch.stderr
    # draft reads .npz without torch; a .safetensors file needs the export extra, and says so.
    (tmp_path / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    drafted = subprocess.run(
        [str(venv / "bin" / "layerport"), "draft", str(tmp_path / "w.safetensors")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert drafted.returncode == 1, drafted.stderr
    assert drafted.stderr.startswith("Error: reading this weights file needs safetensors, "), (
        drafted.stderr
    )
    here = run_process("infer", str(rnn_file), "--output", str(tmp_path / "here.npz"))
    assert here.exit_code == 0
    with np.load(tmp_path / "d.npz") as a, np.load(tmp_path / "here.npz") as b:
        for name in ("y", "h_n"):
            np.testing.assert_array_equal(a[name], b[name])


def test_infer_dim_typo_suggests_the_files_dims(rnn_file: Path) -> None:
    result = run_process("infer", str(rnn_file), "--dim", "bach=2")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: the file has no symbolic dim 'bach' (did you mean 'batch'?); "
        "its symbolic dims: batch, seq\n"
    )
