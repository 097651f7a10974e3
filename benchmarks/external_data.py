"""Peak memory and time of exporting a layer past protobuf's 2 GiB limit (issue 22).

Runs ``layerport export linear -p in_features=16384 -p out_features=33000``
(a float32 weight of 2.16 GB) with ``--external-data`` under ``/usr/bin/time -v``
in a scratch folder, and prints its exit status, last error line, wall time,
peak resident memory (as a multiple of the weights' bytes) and the sizes of
the files written. The export needs the memory limit raised
(``LAYERPORT_MAX_MEMORY``, set here to 32G). Usage:

    .venv/bin/python benchmarks/external_data.py [--in 16384] [--out 33000] [--no-verify]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="in_features", type=int, default=16384)
    parser.add_argument("--out", dest="out_features", type=int, default=33000)
    parser.add_argument("--no-verify", action="store_true")
    arguments = parser.parse_args()
    layerport = Path(sys.executable).with_name("layerport")
    weight_bytes = 4 * arguments.in_features * (arguments.out_features + 1)
    with tempfile.TemporaryDirectory(prefix="layerport-bench-") as folder:
        command = [
            "/usr/bin/time", "-v", str(layerport), "export", "linear",
            "-p", f"in_features={arguments.in_features}",
            "-p", f"out_features={arguments.out_features}",
            "--external-data", "--dim", "batch=2", "--trials", "1",
            "-o", str(Path(folder, "linear.onnx")),
        ]  # fmt: skip
        if arguments.no_verify:
            command = [word for word in command if word not in ("--trials", "1")]
            command.append("--no-verify")
        environment = {**os.environ, "LAYERPORT_MAX_MEMORY": "32G", "OMP_NUM_THREADS": "2"}
        run = subprocess.run(command, capture_output=True, text=True, env=environment)
        peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)[1]) * 1024
        wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", run.stderr)[1]
        errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
        print(f"exit {run.returncode}{': ' + errors[-1] if errors else ''}")
        print(f"weights: {weight_bytes / 1e9:.2f} GB; wall {wall}")
        print(f"peak RSS: {peak / 1e9:.2f} GB ({peak / weight_bytes:.2f}x the weights)")
        for path in sorted(Path(folder).iterdir()):
            print(f"{path.name}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
