"""Byte-level fuzzing of ``layerport inspect`` and ``layerport infer`` on an exported rnn.

    python tests/fuzz_onnx.py 5000
    python tests/fuzz_onnx.py 5000 --model exported/rnn.onnx --seed 7 --jobs 2
    python tests/fuzz_onnx.py 1 --seed 7 --only 1234      # replay one mutant

Without ``--model`` it exports a small rnn first (``layerport export rnn ...``), so
that most mutations land in the graph rather than in weight bytes. Each mutant
(bit flips, byte overwrites, truncations, insertions; mutant ``i`` depends only on
``--seed`` and ``i``) is written to a scratch folder and run through the real CLI
in child processes, many mutants per child. Every run must exit 0, 1 or 2 with an
``Error:`` line and no traceback; a child killed by a signal, or stuck past its
timeout, is a crash, and the mutant that caused it is kept for replay.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS: tuple[tuple[str, ...], ...] = (("inspect",), ("infer", "--threads", "1"))
MUTANTS_PER_CHILD = 150
SECONDS_PER_MUTANT = 5.0  # generous: a child is only declared stuck past this on average
SMALL_RNN = (
    "-p", "input_size=4", "-p", "hidden_size=5", "-p", "output_size=3",
    "--dim", "batch=2", "--dim", "seq=3",
)  # fmt: skip
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level edits: flip bits, overwrite, truncate, insert or delete."""
    mutant = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("flip", "flip", "overwrite", "truncate", "insert", "delete"))
        if not mutant:
            break
        at = rng.randrange(len(mutant))
        if kind == "flip":
            mutant[at] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            value = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
            mutant[at : at + rng.randint(1, 8)] = bytes([value]) * rng.randint(1, 8)
        elif kind == "truncate":
            del mutant[at:]
        elif kind == "insert":
            mutant[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            del mutant[at : at + rng.randint(1, 16)]
    return bytes(mutant)


def mutant_bytes(data: bytes, seed: int, index: int) -> bytes:
    return mutate(data, random.Random(f"{seed}:{index}"))


@dataclass
class Summary:
    """What a fuzzing run found: runs by exit code, and every problem with its mutant."""

    mutants: int = 0
    runs: int = 0
    exit_codes: Counter[int] = field(default_factory=Counter)
    internal_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        codes = ", ".join(f"exit {code}: {n}" for code, n in sorted(self.exit_codes.items()))
        return (
            f"{self.mutants} mutants, {self.runs} runs ({codes}) in {self.seconds:.0f} s: "
            f"{len(self.crashes)} crashes, {len(self.problems)} bad exits or tracebacks, "
            f"{len(self.internal_errors)} internal errors"
        )


def fuzz(
    model: Path,
    count: int,
    *,
    seed: int = 0,
    jobs: int = 2,
    folder: Path | None = None,
    only: int | None = None,
) -> Summary:
    """Write ``count`` mutants of ``model`` and run every command on each in child processes."""
    started = time.monotonic()
    data = model.read_bytes()
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-onnx-")))
        indexes = [only] if only is not None else list(range(count))
        paths = []
        for index in indexes:
            path = folder / f"mutant-{index:06d}.onnx"
            path.write_bytes(mutant_bytes(data, seed, index))
            paths.append(path)
        batches = [
            paths[i : i + MUTANTS_PER_CHILD] for i in range(0, len(paths), MUTANTS_PER_CHILD)
        ]
        summary = Summary(mutants=len(paths))
        pending = list(batches)
        running: list[tuple[subprocess.Popen[bytes], list[Path], Path, float]] = []
        while pending or running:
            while pending and len(running) < jobs:
                batch = pending.pop(0)
                running.append(_start_child(batch, folder))
            for child in list(running):
                process, batch, results, deadline = child
                if process.poll() is None and time.monotonic() < deadline:
                    continue
                running.remove(child)
                rest = _collect(process, batch, results, deadline, summary)
                if rest:
                    pending.insert(0, rest)
            time.sleep(0.05)
        if summary.crashes and only is None:
            keep = Path(tempfile.mkdtemp(prefix="fuzz-onnx-crashes-"))
            for crash in summary.crashes:
                name = crash.split(":", 1)[0]
                (keep / name).write_bytes((folder / name).read_bytes())
            summary.crashes.append(f"(crashing mutants kept in {keep})")
    summary.seconds = time.monotonic() - started
    return summary


def _start_child(
    batch: list[Path], folder: Path
) -> tuple[subprocess.Popen[bytes], list[Path], Path, float]:
    results = Path(tempfile.mkstemp(dir=folder, prefix="results-", suffix=".jsonl")[1])
    log = (folder / (results.stem + ".stderr")).open("wb")
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", str(results), *map(str, batch)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={key: value for key, value in os.environ.items() if key != "LAYERPORT_DEBUG"},
    )
    log.close()
    deadline = time.monotonic() + 30 + SECONDS_PER_MUTANT * len(batch)
    return process, batch, results, deadline


def _collect(
    process: subprocess.Popen[bytes],
    batch: list[Path],
    results: Path,
    deadline: float,
    summary: Summary,
) -> list[Path]:
    """Record a finished child's results; return the mutants it did not get to."""
    stuck = process.poll() is None
    if stuck:
        process.kill()
        process.wait()
    done: Counter[str] = Counter()
    for line in results.read_text().splitlines():
        record = json.loads(line)
        done[record["file"]] += 1
        summary.runs += 1
        summary.exit_codes[record["exit_code"]] += 1
        name = Path(record["file"]).name
        where = f"{name}: {' '.join(record['command'])}"
        if record["exit_code"] not in (0, 1, 2):
            summary.problems.append(f"{where}: exit {record['exit_code']}")
        if "Traceback" in record["stderr"]:
            summary.problems.append(f"{where}: traceback")
        if record["exit_code"] != 0 and not (
            record["stderr"].startswith("Error: ") and record["stderr"].count("\n") == 1
        ):
            summary.problems.append(f"{where}: not one Error: line: {record['stderr'][:200]!r}")
        if "internal error" in record["stderr"]:
            summary.internal_errors.append(f"{where}: {record['stderr'].strip()[:300]}")
    log = results.with_suffix(".stderr")
    if "Traceback" in log.read_text(errors="replace"):
        summary.problems.append(f"{log.name}: a traceback outside the CLI's own output")
    if process.returncode == 0 and not stuck:
        return []
    # The child died (or hung) on the first mutant it had not finished.
    rest = [path for path in batch if done[str(path)] < len(COMMANDS)]
    if not rest:
        return []
    how = "stuck" if stuck else f"exit status {process.returncode}"
    summary.crashes.append(f"{rest[0].name}: child {how}")
    summary.exit_codes[-1] += 1
    return rest[1:]


def _worker(results: Path, files: Sequence[str]) -> None:
    """Run every command on every file in this process, one JSON line per run."""
    from layerport.cli import _State, main

    with results.open("a") as out:
        for file in files:
            for command in COMMANDS:
                stdout, stderr = io.StringIO(), io.StringIO()
                _State.warned = False
                with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                    try:
                        main([*command, file])
                        exit_code = 0
                    except SystemExit as exit_:
                        exit_code = exit_.code if isinstance(exit_.code, int) else 1
                record = {
                    "file": file,
                    "command": list(command),
                    "exit_code": exit_code,
                    "stderr": stderr.getvalue(),
                }
                out.write(json.dumps(record) + "\n")
                out.flush()


def export_small_rnn(folder: Path) -> Path:
    """``layerport export rnn`` at small sizes, in a child process, into ``folder``."""
    target = folder / "rnn.onnx"
    subprocess.run(
        [sys.executable, "-m", "layerport", "export", "rnn", *SMALL_RNN, "-o", str(target)],
        check=True,
        capture_output=True,
    )
    return target


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--worker"]:
        _worker(Path(arguments[1]), arguments[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="number of mutants")
    parser.add_argument("--model", type=Path, help="the file to mutate (default: a small rnn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--only", type=int, help="replay the mutant with this index only")
    options = parser.parse_args(arguments)
    with tempfile.TemporaryDirectory(prefix="fuzz-onnx-model-") as scratch:
        model = options.model or export_small_rnn(Path(scratch))
        summary = fuzz(
            model, options.count, seed=options.seed, jobs=options.jobs, only=options.only
        )
    print(summary.line())
    for line in summary.crashes + summary.problems + summary.internal_errors:
        print("  " + line)
    return 1 if summary.crashes or summary.problems else 0


if __name__ == "__main__":
    sys.exit(main())
