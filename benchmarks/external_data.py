"""Peak memory and time of a layer past protobuf's 2 GiB limit (issue 22).

Runs, each under ``/usr/bin/time -v`` in a scratch folder, with
``linear -p in_features=16384 -p out_features=33000`` (a float32 weight of
2.16 GB, which goes to ``linear.onnx.data`` without being asked):

- ``export --no-verify``: the export and the write alone;
- ``export --dim batch=2 --trials 1``: the export, verified on the batch grid
  [1, 2, 37] (eager float32, eager float64 and onnxruntime hold the weights);
- ``verify linear.onnx --dim batch=2 --trials 1``: the file read back and verified;
- ``inspect linear.onnx``.

It prints each one's exit status, last error line, wall time and peak resident
memory (as a multiple of the weights' bytes), and the sizes of the files
written. The runs need the memory limit raised (``LAYERPORT_MAX_MEMORY``, set
here to 32G) and about 13 GB of free memory. Usage:

    .venv/bin/python benchmarks/external_data.py [--in 16384] [--out 33000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GRID = ["--dim", "batch=2", "--trials", "1"]


def measure(layerport: Path, arguments: list[str], weight_bytes: int) -> None:
    """Run ``layerport ARGUMENTS`` under /usr/bin/time -v and print its figures."""
    environment = {**os.environ, "LAYERPORT_MAX_MEMORY": "32G", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        ["/usr/bin/time", "-v", str(layerport), *arguments],
        capture_output=True,
        text=True,
        env=environment,
    )
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    peak = int(found[1]) * 1024 if found else 0
    wall = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
    split = ""
    if "--json" in arguments and run.returncode == 0:
        summary = json.loads(run.stdout)
        split = f" (export {summary['export_seconds']:.1f} s, verification {summary['verify_seconds']:.1f} s)"
    print(
        f"layerport {' '.join(arguments[:2])} ... {' '.join(a for a in arguments[2:] if a.startswith('--'))}"
    )
    print(f"  exit {run.returncode}{': ' + errors[-1] if errors else ''}")
    print(
        f"  wall {wall[1] if wall else '?'}{split}; peak RSS {peak / 1e9:.2f} GB ({peak / weight_bytes:.2f}x the weights)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--in", dest="in_features", type=int, default=16384)
    parser.add_argument("--out", dest="out_features", type=int, default=33000)
    arguments = parser.parse_args()
    layerport = Path(sys.executable).with_name("layerport")
    weight_bytes = 4 * arguments.out_features * (arguments.in_features + 1)
    print(f"weights: {weight_bytes / 1e9:.2f} GB")
    sizes = [
        "-p",
        f"in_features={arguments.in_features}",
        "-p",
        f"out_features={arguments.out_features}",
    ]
    with tempfile.TemporaryDirectory(prefix="layerport-bench-") as folder:
        model = str(Path(folder, "linear.onnx"))
        measure(
            layerport,
            ["export", "linear", *sizes, "--no-verify", "--json", "-o", model],
            weight_bytes,
        )
        measure(layerport, ["export", "linear", *sizes, *GRID, "--json", "-o", model], weight_bytes)
        for path in sorted(Path(folder).iterdir()):
            print(f"  {path.name}: {path.stat().st_size:,} bytes")
        measure(layerport, ["verify", model, *GRID], weight_bytes)
        measure(layerport, ["inspect", model], weight_bytes)


if __name__ == "__main__":
    main()
