"""Serving figures for the README's "Serving with Triton": requests/s, batch sizes, latency.

Exports the linear and the rnn with ``--target triton-python``, starts the
serving environment's tritonserver on 127.0.0.1 (``serving.tritonserver``),
and measures, for each model:

- requests per second and Triton's average batch (inferences / executions,
  from its statistics) at 1, 8 and 16 concurrent clients, each client a thread
  with its own HTTP connection sending batch-1 requests back to back;
- the median latency of one request against one in-process ``infer`` call
  (``runtime.session``) on the same inputs, timed in alternating blocks;
- the server's start time, from the process start to ready.

Prints a Markdown table and the load average. Usage (the main environment,
after ``make serve-env``):

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--env .serve-env]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from layerport.runtime.session import SessionSettings, load_model
from layerport.serving.client import ServedModel
from layerport.serving.tritonserver import start_tritonserver

MODELS = {"linear": {"x": (1, 8)}, "rnn": {"x": (1, 32, 128)}}
CLIENTS = (1, 8, 16)


def load(
    url: str, name: str, inputs: dict[str, np.ndarray], clients: int, seconds: float
) -> dict[str, float]:
    """``clients`` threads send ``inputs`` back to back for ``seconds``.

    Each thread opens its own connection: tritonclient's HTTP client runs on
    gevent, whose connections belong to the thread that made them.
    """
    probe = ServedModel(url, name)
    before = probe.statistics()
    counts = [0] * clients
    ready = threading.Barrier(clients + 1)
    stop = [0.0]

    def client(index: int) -> None:
        model = ServedModel(url, name)
        ready.wait()
        while time.perf_counter() < stop[0]:
            model.infer(inputs)
            counts[index] += 1
        model.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    stop[0] = started + seconds
    ready.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = probe.statistics()
    probe.close()
    executions = after["execution_count"] - before["execution_count"]
    inferences = after["inference_count"] - before["inference_count"]
    return {
        "requests_per_s": sum(counts) / elapsed,
        "average_batch": inferences / max(executions, 1),
    }


def latency(
    url: str, name: str, file: Path, inputs: dict[str, np.ndarray], rounds: int
) -> dict[str, float]:
    """Median seconds of one served request and one in-process call, in alternating blocks."""
    served = ServedModel(url, name)
    session = load_model(file, SessionSettings(runtime=None, threads=1))
    call = session.bind(inputs)
    served_times, local_times = [], []
    for _ in range(rounds):
        for timings, run in ((served_times, lambda: served.infer(inputs)), (local_times, call)):
            started = time.perf_counter()
            for _ in range(10):
                run()
            timings.append((time.perf_counter() - started) / 10)
    served.close()
    return {
        "served_s": statistics.median(served_times),
        "in_process_s": statistics.median(local_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per client count")
    parser.add_argument("--rounds", type=int, default=20, help="latency blocks per engine")
    parser.add_argument("--env", type=Path, default=Path(".serve-env"))
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "models"
        for name in MODELS:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "layerport",
                    "export",
                    name,
                    "--target",
                    "triton-python",
                    "-o",
                    str(repository),
                ],
                check=True,
                capture_output=True,
            )
        with start_tritonserver(arguments.env, repository) as server:
            print(f"server start: {server.start_seconds:.2f} s")
            print("| model | clients | requests/s | average batch |")
            print("| --- | --- | --- | --- |")
            generator = np.random.default_rng(0)
            arrays = {
                name: {
                    k: generator.standard_normal(s).astype(np.float32) for k, s in shapes.items()
                }
                for name, shapes in MODELS.items()
            }
            for name in MODELS:
                for clients in CLIENTS:
                    figures = load(server.url, name, arrays[name], clients, arguments.seconds)
                    print(
                        f"| {name} | {clients} | {figures['requests_per_s']:.0f} "
                        f"| {figures['average_batch']:.1f} |"
                    )
            print()
            print("| model | served request | in-process call | ratio |")
            print("| --- | --- | --- | --- |")
            for name in MODELS:
                file = repository / name / "1" / "model.onnx"
                figures = latency(server.url, name, file, arrays[name], arguments.rounds)
                print(
                    f"| {name} | {figures['served_s'] * 1e3:.2f} ms "
                    f"| {figures['in_process_s'] * 1e6:.0f} µs "
                    f"| {figures['served_s'] / figures['in_process_s']:.0f}x |"
                )
    print(
        f"\nload average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}, cores: {os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
