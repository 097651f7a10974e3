"""Starting the tritonserver that pip installs (``nvidia-pytriton``'s), on 127.0.0.1: no torch.

``nvidia-pytriton`` bundles tritonserver 2.51 with only the python backend. It
runs in a serving environment of its own (a venv with numpy < 2, see
``constraints-serve.txt``), and starting it by hand needs what this module does,
each measured here:

- the backend's stub, one build per Python version, is copied into a backend
  folder of its own, as pytriton itself does (``pytriton/triton.py``);
- the stub links ``libpython3.x.so``: ``LD_LIBRARY_PATH`` starts with the
  serving interpreter's ``LIBDIR``, or another libpython on the machine is
  picked up, and with the wheel's ``nvidia_pytriton.libs`` (its libcudart);
- the stub runs ``python`` from ``PATH``: the serving venv's ``bin`` goes first;
- the python backend's shared memory goes in ``/dev/shm`` under a prefix of its
  own, removed when the server stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from layerport.errors import BadFile, UserInputError, WorkFailed

_PROBE = """
import json, os, sys, sysconfig
import pytriton
root = os.path.dirname(pytriton.__file__)
print(json.dumps({
    "dist": os.path.join(root, "tritonserver"),
    "libs": os.path.join(os.path.dirname(root), "nvidia_pytriton.libs"),
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
}))
"""


@dataclass
class TritonServer:
    """A running tritonserver; ``stop`` ends it by its process id and cleans up after it."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    workspace: Path
    shm_prefix: str
    start_seconds: float  # from the process start to the health endpoint saying ready

    @property
    def url(self) -> str:
        """The HTTP endpoint, as ``tritonclient.http`` and ``verify --server`` take it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def log(self) -> str:
        """What the server has printed so far."""
        with contextlib.suppress(OSError):
            return (self.workspace / "tritonserver.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """SIGTERM (Triton's graceful stop), SIGKILL after 30 s; then remove its files."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: SIGTERM it when its parent dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG).

    The server runs in a session of its own, so that Ctrl-C reaches layerport
    first; without this, a killed ``layerport serve`` would leave it running.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` of 127.0.0.1 (so a ready answer there is ours)."""
    with socket.socket() as probe:
        # As a server binds: a port whose old connections wait out TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def log_errors(log: str) -> str:
    """The error lines of a tritonserver log (``E1202 05:23:53.799 ... file.cc:241] "..."``), joined.

    Triton ends a failed start with its table of models and a usage text; the
    reason is in its error lines.
    """
    errors = re.findall(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$", log, flags=re.MULTILINE)
    wanted = [line.strip('"') for line in errors if "CudaDriverHelper" not in line]
    if wanted:
        return "; ".join(dict.fromkeys(wanted))
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(it printed nothing)"


def start_tritonserver(
    environment: Path,
    repository: Path,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    timeout: float = 120.0,
) -> TritonServer:
    """Start the tritonserver of the serving venv ``environment`` on ``repository``.

    It listens on 127.0.0.1 only, on the given ports or free ones, and is ready
    when this returns. Raises ``BadFile`` when ``environment`` has no
    ``nvidia-pytriton``, ``WorkFailed`` (with the end of the server's log) when
    the server exits or is not ready within ``timeout`` seconds.
    """
    python = environment / "bin" / "python"
    if not python.is_file():
        raise BadFile(
            f"{environment} is not a virtual environment (it has no bin/python); build the "
            "serving environment with 'make serve-env', or name one with LAYERPORT_SERVE_ENV"
        )
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    if http_port == grpc_port:
        raise UserInputError(f"the HTTP and gRPC ports must differ, both are {http_port}")
    for port in (http_port, grpc_port):
        if not port_is_free(port):
            raise BadFile(f"port {port} on 127.0.0.1 is in use; choose another")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise BadFile(
            f"{environment} has no nvidia-pytriton; build the serving environment with "
            "'make serve-env' (see the README's 'Serving with Triton')"
        )
    paths = json.loads(probe.stdout)
    workspace = Path(tempfile.mkdtemp(prefix="layerport-tritonserver-"))
    backends = workspace / "backends"
    shutil.copytree(Path(paths["dist"]) / "backends", backends)
    shutil.copy(
        Path(paths["dist"])
        / "python_backend_stubs"
        / paths["python"]
        / "triton_python_backend_stub",
        backends / "python" / "triton_python_backend_stub",
    )
    shm_prefix = f"layerport-{uuid.uuid4().hex[:12]}-"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        part for part in (paths["libdir"], paths["libs"], env.get("LD_LIBRARY_PATH")) if part
    )
    env["PATH"] = os.pathsep.join((str(environment.resolve() / "bin"), env.get("PATH", "")))
    options = {
        "model-repository": repository.resolve(),
        "backend-directory": backends,
        "http-address": "127.0.0.1",
        "grpc-address": "127.0.0.1",
        "http-port": http_port,
        "grpc-port": grpc_port,
        "allow-metrics": "false",
        "backend-config": f"python,shm-region-prefix-name={shm_prefix}",
    }
    command = [
        str(Path(paths["dist"]) / "bin" / "tritonserver"),
        *(f"--{name}={value}" for name, value in options.items()),
    ]
    started = time.perf_counter()
    with open(workspace / "tritonserver.log", "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = TritonServer(process, http_port, grpc_port, workspace, shm_prefix, 0.0)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            reason = log_errors(server.log)
            server.stop()
            raise WorkFailed(f"tritonserver exited with status {process.returncode}: {reason}")
        if _ready(server.url):
            server.start_seconds = time.perf_counter() - started
            return server
        time.sleep(0.05)
    reason = log_errors(server.log)
    server.stop()
    raise WorkFailed(f"tritonserver was not ready after {timeout:g} s: {reason}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
