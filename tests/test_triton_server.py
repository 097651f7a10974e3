"""A real tritonserver serving what layerport wrote (slow: builds the serving environment).

The serving environment is ``make serve-env``: a venv with layerport's runtime
(no torch, numpy 1.26), ``nvidia-pytriton``'s tritonserver and ``tritonclient``.
The server listens on 127.0.0.1 only, on free ports; each is stopped by its
process id, and what it left in ``/dev/shm`` is removed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from layerport.errors import WorkFailed
from layerport.serving.client import ServedModel
from layerport.serving.tritonserver import TritonServer, free_port, start_tritonserver

from conftest import Result, run_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVING_PAGE = ROOT / "docs" / "serving.md"
SERVING = re.compile(r"<!-- serving:start -->(.*?)<!-- serving:end -->", re.DOTALL)
Cli = Callable[..., Result]


@pytest.fixture(scope="session")
def serving_env() -> Path:
    """``make serve-env``, as the README says; pip makes it once per checkout."""
    completed = subprocess.run(
        ["make", "-C", str(ROOT), "serve-env", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return ROOT / ".serve-env"


def serve_python(env: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin" / "python"), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


SHM_PREFIX = re.compile(r"^(layerport-[0-9a-f]{12}-)")


def leaked_shm() -> set[str]:
    """Shared memory of layerport's servers that no running tritonserver owns.

    Other tests (other xdist workers) run servers at the same time, so what
    counts is an entry whose prefix no live process names on its command line.
    """
    live = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            live |= set(
                re.findall(
                    r"shm-region-prefix-name=(layerport-[0-9a-f]{12}-)",
                    cmdline.read_text(errors="replace"),
                )
            )
        except OSError:
            continue
    return {
        path.name
        for path in Path("/dev/shm").glob("layerport-*")
        if (match := SHM_PREFIX.match(path.name)) and match.group(1) not in live
    }


def export(*args: str, cwd: Path) -> None:
    result = run_process("export", *args, cwd=cwd)
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The linear, the rnn, an lstm (not batchable) and a wrong model, for the python backend."""
    folder = tmp_path_factory.mktemp("serving")
    models = folder / "models"
    for layer in ("linear", "rnn"):
        export(layer, "--target", "triton-python", "-o", str(models), cwd=folder)
    export(
        "lstm", "-p", "num_layers=2", "-p", "bidirectional=true", "--target", "triton-python",
        "-o", str(models), cwd=folder,
    )  # fmt: skip
    # A deliberately wrong model: its config says seed 0, its file holds seed 1's weights.
    export(
        "rnn", "--seed", "1", "--target", "triton-python", "--target-option", "name=rnn_wrong",
        "-o", str(models), cwd=folder,
    )  # fmt: skip
    right = (models / "rnn" / "config.pbtxt").read_text()
    (models / "rnn_wrong" / "config.pbtxt").write_text(
        right.replace('name: "rnn"', 'name: "rnn_wrong"', 1)
    )
    # A pinned dim, as a hand-written config pins it: seq is 32 where the file has -1.
    shutil.copytree(models / "rnn", models / "rnn_pinned")
    pinned = models / "rnn_pinned" / "config.pbtxt"
    text = pinned.read_text().replace('name: "rnn"', 'name: "rnn_pinned"', 1)
    pinned.write_text(text.replace("dims: [ -1, 128 ]", "dims: [ 32, 128 ]", 1))
    return models


@pytest.fixture(scope="module")
def server(serving_env: Path, repository: Path) -> Iterator[TritonServer]:
    server = start_tritonserver(serving_env, repository)
    yield server
    pid = server.process.pid
    server.stop()
    assert server.process.poll() is not None, f"tritonserver {pid} still runs"
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*")), "shared memory left behind"


def test_readme_serving_section_runs(serving_env: Path, tmp_path: Path) -> None:
    """Its commands, in order, in one folder, as a reader runs them; ports made free."""
    section = SERVING.search(SERVING_PAGE.read_text())
    assert section is not None
    lines = [
        line.removeprefix("$ ")
        for block in re.findall(r"```console\n(.*?)```", section.group(1), flags=re.DOTALL)
        for line in block.splitlines()
        if line.startswith("$ ")
    ]
    http, grpc = free_port(), free_port()
    before = leaked_shm()
    background: list[subprocess.Popen[str]] = []
    try:
        for line in lines:
            line = line.replace("8000", str(http)).replace("8001", str(grpc))
            if line.startswith("make "):
                assert line == "make serve-env"  # built by the serving_env fixture
                continue
            words = shlex.split(line.removesuffix("&"))
            assert words[0] == "layerport", line
            if line.endswith("&"):
                background.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "layerport", *words[1:]],
                        cwd=tmp_path,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env={"LAYERPORT_SERVE_ENV": str(serving_env), **_environ()},
                    )
                )
                _wait_ready(f"127.0.0.1:{http}", background[-1])
                continue
            result = run_process(*words[1:], cwd=tmp_path)
            assert result.exit_code == 0, f"{line}: {result.stderr}"
            assert "Traceback" not in result.stderr
            if words[1] == "verify":
                assert "result:    passed" in result.stdout
                assert "optional:  h0 left out (zeros)" in result.stdout
                assert "batch [1, 8, 32], seq [1, 32, 301]" in result.stdout
    finally:
        for process in background:
            process.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
            _, stderr = process.communicate(timeout=60)
    assert background, "the section starts a server"
    assert "serving models at http://127.0.0.1:" in stderr
    assert leaked_shm() <= before, "the server left shared memory behind"


def test_a_killed_serve_takes_its_server_with_it(serving_env: Path, repository: Path) -> None:
    """SIGKILL (an OOM kill) gives layerport no chance to clean up: the kernel tells the server."""
    http, grpc = free_port(), free_port()
    before = leaked_shm()
    process = subprocess.Popen(
        [sys.executable, "-m", "layerport", "serve", str(repository), "--env", str(serving_env),
         "--http-port", str(http), "--grpc-port", str(grpc)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    _wait_ready(f"127.0.0.1:{http}", process)
    process.kill()
    process.communicate(timeout=30)
    from layerport.serving.tritonserver import port_is_free

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not port_is_free(http):
        time.sleep(0.2)
    assert port_is_free(http), "tritonserver outlived the serve that started it"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not leaked_shm() <= before:
        time.sleep(0.2)
    assert leaked_shm() <= before


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _wait_ready(url: str, process: subprocess.Popen[str]) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no server ready at {url}")


def _infer(
    cli: Cli, file: Path, inputs: dict[str, np.ndarray], tmp_path: Path
) -> dict[str, np.ndarray]:
    np.savez(tmp_path / "in.npz", **inputs)
    result = cli(
        "infer",
        str(file),
        "--input",
        str(tmp_path / "in.npz"),
        "--output",
        str(tmp_path / "out.npz"),
    )
    assert result.exit_code == 0, result.stderr
    with np.load(tmp_path / "out.npz") as saved:
        return dict(saved)


def test_served_outputs_equal_infer(
    server: TritonServer, repository: Path, cli: Cli, tmp_path: Path
) -> None:
    generator = np.random.default_rng(0)
    cases: list[tuple[str, dict[str, np.ndarray]]] = []
    for batch in (1, 3, 8):
        for seq in (1, 7, 40):  # 32 is the traced length
            x = generator.standard_normal((batch, seq, 128)).astype(np.float32)
            h0 = generator.standard_normal((batch, 64)).astype(np.float32)
            cases += [("rnn", {"x": x}), ("rnn", {"x": x, "h0": h0})]
    for batch in (1, 5, 32):
        cases.append(("linear", {"x": generator.standard_normal((batch, 8)).astype(np.float32)}))
    x = generator.standard_normal((3, 11, 32)).astype(np.float32)
    cases.append(("lstm", {"x": x}))
    for name, inputs in cases:
        served = ServedModel(server.url, name)
        try:
            answer = served.infer(inputs)
        finally:
            served.close()
        expected = _infer(cli, repository / name / "1" / "model.onnx", inputs, tmp_path)
        assert answer.keys() == expected.keys()
        for output, array in expected.items():
            assert answer[output].shape == array.shape, (name, output)
            np.testing.assert_allclose(answer[output], array, rtol=1e-6, atol=1e-6)


def test_dynamic_batching_batched_concurrent_clients(server: TritonServer) -> None:
    probe = ServedModel(server.url, "rnn")
    before = probe.statistics()
    x = np.ones((1, 16, 128), np.float32)
    failures: list[BaseException] = []

    def client() -> None:
        model = ServedModel(server.url, "rnn")  # a connection per thread (gevent)
        try:
            for _ in range(25):
                model.infer({"x": x})
        except BaseException as error:
            failures.append(error)
        finally:
            model.close()

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = probe.statistics()
    probe.close()
    assert not failures
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 16 * 25
    assert executions < inferences, f"{executions} executions for {inferences} inferences"


@pytest.mark.parametrize("name", ["rnn", "linear", "lstm"])
def test_verify_server_passes(server: TritonServer, name: str) -> None:
    result = run_process("verify", "--server", server.url, name, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] is True
    assert summary["engines"] == [f"triton:{name}", "eager"]
    assert len(summary["grid"]["batch"]) == 3
    if name == "lstm":
        # Bidirectional: no streaming, and said so.
        assert summary["streaming"].startswith("skipped")
        assert summary["optional_left_out"] == ["h0", "c0"]


def test_verify_server_fails_against_a_wrong_model(server: TritonServer) -> None:
    result = run_process("verify", "--server", server.url, "rnn_wrong")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr


def test_verify_server_finds_a_dim_the_served_config_pins(server: TritonServer) -> None:
    result = run_process("verify", "--server", server.url, "rnn_pinned")
    assert result.exit_code == 1
    assert "declared-dynamic dim seq of x is pinned to 32 in the served config" in result.stderr


def test_verify_server_refuses_a_batch_the_server_refuses(server: TritonServer) -> None:
    result = run_process("verify", "--server", server.url, "rnn", "--dim", "batch=64")
    assert result.exit_code == 2
    assert (
        "batch=64 is above the served max_batch_size 32, which Triton refuses; give --dim batch=32 or less"
        in result.stderr
    )


def test_ctrl_c_during_verify_server_says_interrupted_and_nothing_else(
    server: TritonServer,
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerport",
            "verify",
            "--server",
            server.url,
            "rnn",
            "--trials",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)  # past start-up, into the grid's requests
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr == "Error: interrupted\n"


def test_verify_server_of_an_unknown_model_exits_2(server: TritonServer) -> None:
    result = run_process("verify", "--server", server.url, "nosuch")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: model 'nosuch' is not ready on {server.url}; "
        "ready models: linear, lstm, rnn, rnn_pinned, rnn_wrong\n"
    )


def test_served_model_answers_a_bad_request_with_an_error(server: TritonServer) -> None:
    """Triton checks what the config declares; the model checks the rest, and lives on."""
    served = ServedModel(server.url, "lstm")
    x = np.ones((3, 5, 32), np.float32)
    try:
        shape_refused = ServedModel(server.url, "rnn")
        with pytest.raises(WorkFailed, match="unexpected shape for input 'x'"):
            shape_refused.infer({"x": np.ones((2, 3, 127), np.float32)})
        shape_refused.close()
        # A batch of 2 in h0 against 3 in x passes Triton's -1 dims: the model refuses it.
        with pytest.raises(WorkFailed, match="h0"):
            served.infer({"x": x, "h0": np.ones((4, 2, 32), np.float32)})
        assert served.infer({"x": x})["y"].shape == (3, 5, 64)
    finally:
        served.close()


def test_configs_parse_with_tritons_own_schema(serving_env: Path, tmp_path: Path) -> None:
    """No server here has the onnxruntime backend, so its configs are checked by schema."""
    repo = tmp_path / "models"
    for args in (
        ["linear"],
        ["rnn"],
        ["rnn", "--dtype", "float64", "--target-option", "name=rnn64"],
        ["lstm", "-p", "num_layers=2"],
        ["conv1d"],
        ["linear", "--quantize", "int8", "-p", "in_features=64", "-p", "out_features=1024",
         "--target-option", "name=linear8", "--target-option", "instance_kind=gpu"],
    ):  # fmt: skip
        export(*args, "--target", "triton", "-o", str(repo), cwd=tmp_path)
    export("rnn", "--target", "triton-python", "-o", str(tmp_path / "python"), cwd=tmp_path)
    configs = [*repo.glob("*/config.pbtxt"), tmp_path / "python" / "rnn" / "config.pbtxt"]
    broken = tmp_path / "broken.pbtxt"
    broken.write_text('name: "x" max_batch_size: "many"')
    check = (
        "import sys\n"
        "from google.protobuf import text_format\n"
        "from tritonclient.grpc import model_config_pb2\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        config = text_format.Parse(open(path).read(), model_config_pb2.ModelConfig())\n"
        "        print(path, 'ok', config.max_batch_size, len(config.parameters))\n"
        "    except text_format.ParseError as error:\n"
        "        print(path, 'refused', error)\n"
    )
    completed = serve_python(serving_env, check, *map(str, configs), str(broken))
    assert completed.returncode == 0, completed.stderr
    verdicts = dict(line.split(" ", 2)[:2] for line in completed.stdout.splitlines())
    assert verdicts == {**{str(path): "ok" for path in configs}, str(broken): "refused"}


def test_runtime_runs_under_numpy_1_26_without_torch(serving_env: Path, tmp_path: Path) -> None:
    export("rnn", "-o", str(tmp_path / "rnn.onnx"), cwd=tmp_path)
    versions = serve_python(
        serving_env,
        "import importlib.util, numpy; print(numpy.__version__, importlib.util.find_spec('torch'))",
    )
    assert versions.stdout.split() == ["1.26.4", "None"]
    there = subprocess.run(
        [
            str(serving_env / "bin" / "layerport"),
            "infer",
            str(tmp_path / "rnn.onnx"),
            "--output",
            str(tmp_path / "there.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert there.returncode == 0, there.stderr
    here = run_process("infer", str(tmp_path / "rnn.onnx"), "--output", str(tmp_path / "here.npz"))
    assert here.exit_code == 0
    with np.load(tmp_path / "there.npz") as a, np.load(tmp_path / "here.npz") as b:
        for name in b.files:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)


def test_serving_benchmark_runs(serving_env: Path) -> None:
    """The script the README's serving figures come from, briefly."""
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "serving.py"),
            "--seconds",
            "0.5",
            "--rounds",
            "2",
            "--env",
            str(serving_env),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(r"\| rnn \| 16 \| \d+ \| \d+\.\d \|", completed.stdout)
    assert "server start: " in completed.stdout
