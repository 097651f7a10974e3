"""The hostile-files campaign of issue 30: every export and precision, weights files, model files.

    python tests/fuzz_campaign.py 2000            # 2,000 mutants of each export, weights and models
    python tests/fuzz_campaign.py 2000 --seed 7 --jobs 2
    python tests/fuzz_campaign.py 1200 --files 400     # 400 weights files and 400 model files

Exports ``linear`` and ``rnn`` at small sizes in float32, float64, float16,
bfloat16 and int8, fuzzes ``inspect`` and ``infer`` on each (``fuzz_onnx``),
then ``run --weights`` on mutated weights files in every format
(``fuzz_weights``), then ``show``, ``run`` and ``export`` on mutated model
files (``fuzz_models``), all under ``LAYERPORT_MAX_MEMORY=256M``: ``count``
mutants of each of the 10 exports, and ``--files`` (default ``count``) of each
kind of file. Prints one line per target and a total; exits 1 on any signal,
internal error, bad output or breach of the limit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import fuzz_onnx
import fuzz_weights

LAYERS = {
    "linear": ("-p", "in_features=4", "-p", "out_features=3", "--dim", "batch=2"),
    "rnn": fuzz_onnx.SMALL_RNN,
}
# onnxruntime's quantizer takes only MatMul weights of 65,536 elements or more
# (export refuses an int8 that would quantize nothing): sizes that have one.
INT8_LAYERS = {
    "linear": ("-p", "in_features=256", "-p", "out_features=256", "--dim", "batch=2"),
    "rnn": (
        "-p", "input_size=256", "-p", "hidden_size=256", "-p", "output_size=3",
        "--dim", "batch=2", "--dim", "seq=3",
    ),
}  # fmt: skip
PRECISIONS = (
    ("--dtype", "float32"),
    ("--dtype", "float64"),
    ("--dtype", "float16"),
    ("--dtype", "bfloat16"),
    ("--quantize", "int8"),
)


def export(layer: str, precision: tuple[str, str], folder: Path) -> Path:
    target = folder / f"{layer}-{precision[1]}.onnx"
    sizes = INT8_LAYERS[layer] if precision == ("--quantize", "int8") else LAYERS[layer]
    options = [*sizes, *precision, "-o", str(target)]
    subprocess.run(
        [sys.executable, "-m", "layerport", "export", layer, *options],
        check=True,
        capture_output=True,
    )
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="mutants of each export")
    parser.add_argument("--files", type=int, help="mutants of the weights and of the models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    options = parser.parse_args(argv)
    os.environ["LAYERPORT_MAX_MEMORY"] = fuzz_weights.LIMIT
    started = time.monotonic()
    runs = mutants = 0
    clean = True
    with tempfile.TemporaryDirectory(prefix="fuzz-campaign-") as scratch:
        folder = Path(scratch)
        for layer in LAYERS:
            for precision in PRECISIONS:
                model = export(layer, precision, folder)
                summary = fuzz_onnx.fuzz(model, options.count, seed=options.seed, jobs=options.jobs)
                print(f"{model.name}: {summary.line()}", flush=True)
                for line in summary.crashes + summary.problems + summary.internal_errors:
                    print("  " + line)
                runs += summary.runs
                mutants += summary.mutants
                clean = clean and not (
                    summary.crashes or summary.problems or summary.internal_errors
                )
    for kind, what in (("weights", "weights files"), ("models", "model files")):
        count = options.count if options.files is None else options.files
        files = fuzz_weights.fuzz(count, seed=options.seed, jobs=options.jobs, kind=kind)
        print(f"{what}: {files.line()}", flush=True)
        for line in files.signals + files.problems + files.internal_errors + files.over_limit:
            print("  " + line)
        runs += files.runs
        mutants += files.runs
        clean = clean and files.clean
    print(
        f"total: {mutants} mutants, {runs} runs in {time.monotonic() - started:.0f} s: "
        + ("clean" if clean else "PROBLEMS")
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
