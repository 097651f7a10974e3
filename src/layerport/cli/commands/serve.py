"""``layerport serve``: run the tritonserver of a serving environment on a model repository (torch-free)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from layerport.errors import BadFile, WorkFailed

DEFAULT_SERVING_ENV = Path(".serve-env")


def check_servable(repository: Path) -> None:
    """Refuse what would stop this tritonserver from starting: it loads every model or none.

    It has only the python backend, and takes every folder for a model, a
    write's hidden temporary one included.
    """
    from layerport.serving.repository import read_config

    if not repository.is_dir():
        raise BadFile(f"{repository} is not a folder; a Triton model repository is a folder")
    models = sorted(entry for entry in repository.iterdir() if entry.is_dir())
    if not models:
        raise BadFile(f"{repository} holds no model folders")
    for folder in models:
        if folder.name.startswith("."):
            raise BadFile(
                f"{folder} is left from an interrupted write, and Triton would refuse to start "
                "with it: remove it"
            )
        backend = read_config(folder).get("backend")
        if backend != "python":
            raise BadFile(
                f"model {folder.name} is for the {backend} backend, and the tritonserver that "
                "pip installs has only the python backend; export it with --target triton-python"
            )


@click.command()
@click.argument("repository", type=click.Path(path_type=Path))
@click.option(
    "--env",
    "environment",
    type=click.Path(path_type=Path),
    default=DEFAULT_SERVING_ENV,
    show_default=True,
    envvar="LAYERPORT_SERVE_ENV",
    help="The serving environment: a venv with nvidia-pytriton and layerport's runtime "
    "('make serve-env'; also LAYERPORT_SERVE_ENV).",
)
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
def serve(repository: Path, environment: Path, http_port: int, grpc_port: int) -> None:
    """Serve a Triton model repository on 127.0.0.1 until interrupted.

    Starts the tritonserver that nvidia-pytriton installs (python backend only:
    export with --target triton-python), with the environment its python stub
    needs, and stops it, removing its shared memory, on Ctrl-C.

    \b
    Example:
      layerport export rnn --target triton-python -o models
      layerport serve models
    """
    from layerport.cli.output import note
    from layerport.serving.tritonserver import log_errors, start_tritonserver

    check_servable(repository)
    server = start_tritonserver(environment, repository, http_port=http_port, grpc_port=grpc_port)
    # Closing the terminal must stop the server too: it runs in a session of its own.
    signal.signal(signal.SIGHUP, signal.getsignal(signal.SIGTERM))
    try:
        note(
            f"serving {repository} at http://{server.url} (gRPC 127.0.0.1:{server.grpc_port}), "
            f"ready in {server.start_seconds:.1f} s; Ctrl-C stops it"
        )
        server.process.wait()
        raise WorkFailed(
            f"tritonserver exited with status {server.process.returncode}: {log_errors(server.log)}"
        )
    finally:
        server.stop()
