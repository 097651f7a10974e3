"""Seeded mutation fuzzing of weights files through ``layerport run LAYER --weights``.

    python tests/fuzz_weights.py 2000
    python tests/fuzz_weights.py 2000 --seed 7 --jobs 2
    python tests/fuzz_weights.py 1 --seed 7 --only 1234      # replay one mutant

The seeds are small weights of the ``linear`` and ``rnn`` layers in every format
layerport reads: ``.safetensors``, torch's zip ``.pt`` and the legacy pickle
``.pt`` (``.pth`` and ``.bin`` are the same two), an ``.npz`` archive and a
TorchScript archive. ``fuzz_models`` reuses the workers and checks for model
files (``--worker models``). Mutant ``i`` depends only on
``--seed`` and ``i``: byte-level edits of the file (``fuzz_onnx.mutate``), or,
for a zip, of the pickle inside it, re-zipped, so that the mutations reach the
unpickler past the zip's checksums.

Each mutant runs in a child process of its own, forked from a worker that has
imported torch once, under ``LAYERPORT_MAX_MEMORY`` (256M by default). A run
must exit 0, 1 or 2, print at most one ``Error:`` line and no traceback, not
end by a signal (or be stuck past a minute: SIGALRM), and its peak resident
memory, above what the worker held when it forked, must stay under the limit.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fuzz_onnx import mutate

if TYPE_CHECKING:
    import torch

LIMIT = "256M"
LIMIT_BYTES = 256 * 2**20
SECONDS_PER_RUN = 60  # a child still running after this is ended by SIGALRM: stuck
SEEDS = (
    "linear.safetensors",
    "linear.pt",
    "linear-legacy.pt",
    "rnn.safetensors",
    "rnn.pt",
    "rnn-legacy.pt",
    "linear.npz",
    "linear-script.pt",
    "rnn.npz",
    "rnn-script.pt",
)
RNN = ("-p", "input_size=4", "-p", "hidden_size=5", "-p", "output_size=3")
LOAD_PLUGINS = ""  # the built-in layers only: linear and rnn
# What a campaign mutates, by name: the module that says its seed files, how a
# mutant is made and which command runs it (``SEEDS``, ``seed_files``,
# ``mutant_bytes``, ``command_for``, ``LOAD_PLUGINS``).
KINDS = {"weights": "fuzz_weights", "models": "fuzz_models"}


def seed_files(folder: Path) -> dict[str, Path]:
    """The good weights files every mutant starts from, written into ``folder``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    shapes = {
        "linear": {"weight": (2, 8), "bias": (2,)},
        "rnn": {
            "wi.weight": (5, 4),
            "wi.bias": (5,),
            "wh.weight": (5, 5),
            "wh.bias": (5,),
            "wo.weight": (3, 5),
            "wo.bias": (3,),
        },
    }
    paths = {}
    for name in SEEDS:
        layer = name.split(".")[0].removesuffix("-legacy").removesuffix("-script")
        tensors = {
            key: torch.randn(shape, generator=generator) for key, shape in shapes[layer].items()
        }
        path = folder / name
        if name.endswith(".safetensors"):
            save_file(tensors, path)
        elif name.endswith(".npz"):
            np.savez(path, **{key: tensor.numpy() for key, tensor in tensors.items()})
        elif "-script" in name:
            module = _scripted(layer)
            module.load_state_dict(tensors)
            torch.jit.script(module).save(str(path))
        else:
            torch.save(tensors, path, _use_new_zipfile_serialization="legacy" not in name)
        paths[name] = path
    return paths


def _scripted(layer: str) -> torch.nn.Module:
    """A module whose state dict holds ``layer``'s weights, to save as a TorchScript archive."""
    import torch

    if layer == "linear":
        return torch.nn.Linear(8, 2)
    module = torch.nn.Module()
    module.wi, module.wh, module.wo = (torch.nn.Linear(4, 5), torch.nn.Linear(5, 5),
                                       torch.nn.Linear(5, 3))  # fmt: skip
    return module


def mutant_bytes(data: bytes, seed: int, index: int) -> bytes:
    """Mutant ``index``: the file's bytes edited, or the pickle inside a zip edited and re-zipped."""
    rng = random.Random(f"{seed}:{index}")
    if data[:2] != b"PK" or rng.random() < 0.4:
        return mutate(data, rng)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    pickles = [info.filename for info, _ in members if info.filename.endswith(".pkl")]
    target = rng.choice(pickles or [info.filename for info, _ in members])  # npz: an array
    if rng.random() < 0.3:  # a data record rather than the pickle
        target = rng.choice([info.filename for info, _ in members])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info, content in members:
            archive.writestr(info, mutate(content, rng) if info.filename == target else content)
    return out.getvalue()


def command_for(seed_name: str, path: Path, index: int) -> list[str]:
    """``run LAYER --weights`` on the mutant; every weights mutant takes the same command."""
    layer = seed_name.split(".")[0].removesuffix("-legacy").removesuffix("-script")
    return ["run", layer, *(RNN if layer == "rnn" else ()), "--weights", str(path)]


@dataclass
class Summary:
    """What a campaign found: runs by exit code, and every problem with its mutant."""

    runs: int = 0
    exit_codes: Counter[int] = field(default_factory=Counter)
    signals: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    over_limit: list[str] = field(default_factory=list)
    peak_growth: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        codes = ", ".join(f"exit {code}: {n}" for code, n in sorted(self.exit_codes.items()))
        return (
            f"{self.runs} runs ({codes}) in {self.seconds:.0f} s: {len(self.signals)} signals, "
            f"{len(self.internal_errors)} internal errors, {len(self.problems)} bad outputs, "
            f"{len(self.over_limit)} over the {LIMIT} limit (largest growth "
            f"{self.peak_growth / 2**20:.0f} MiB)"
        )

    def add(self, record: dict[str, object]) -> None:
        self.runs += 1
        where = f"mutant {record['index']} of {record['seed_file']}"
        stderr = str(record["stderr"])
        signal_number = record["signal"]
        if signal_number:
            self.signals.append(f"{where}: signal {signal_number}")
            self.exit_codes[-int(str(signal_number))] += 1
            return
        code = int(str(record["exit_code"]))
        self.exit_codes[code] += 1
        if code not in (0, 1, 2):
            self.problems.append(f"{where}: exit {code}")
        if "Traceback" in stderr:
            self.problems.append(f"{where}: traceback")
        errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
        if len(errors) > 1 or (code != 0 and len(errors) != 1):
            self.problems.append(f"{where}: {len(errors)} Error: lines: {stderr[:200]!r}")
        if "internal error" in stderr:
            self.internal_errors.append(f"{where}: {stderr.strip()[:300]}")
        growth = int(str(record["growth"]))
        self.peak_growth = max(self.peak_growth, growth)
        if growth > LIMIT_BYTES:
            self.over_limit.append(f"{where}: {growth / 2**20:.0f} MiB")

    @property
    def clean(self) -> bool:
        return not (self.signals or self.internal_errors or self.problems or self.over_limit)


def fuzz(
    count: int, *, seed: int = 0, jobs: int = 2, only: int | None = None, kind: str = "weights"
) -> Summary:
    """Run ``count`` mutants of ``kind``'s files (spread over its seed files) in ``jobs`` workers."""
    started = time.monotonic()
    indexes = [only] if only is not None else list(range(count))
    target = importlib.import_module(KINDS[kind])
    environment = {**os.environ, "LAYERPORT_MAX_MEMORY": LIMIT, "OMP_NUM_THREADS": "1"}
    environment.pop("LAYERPORT_LOAD_PLUGINS", None)
    if target.LOAD_PLUGINS is not None:
        environment["LAYERPORT_LOAD_PLUGINS"] = target.LOAD_PLUGINS
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{kind}-") as scratch:
        folder = Path(scratch)
        shares = [indexes[job::jobs] for job in range(jobs)]
        workers = []
        for job, share in enumerate(shares):
            if not share:
                continue
            results = folder / f"results-{job}.jsonl"
            workers.append(
                (
                    subprocess.Popen(
                        [sys.executable, __file__, "--worker", kind, str(results), str(seed)]
                        + [str(index) for index in share],
                        env=environment,
                        stdout=subprocess.DEVNULL,
                    ),
                    results,
                )
            )
        for process, results in workers:
            process.wait()
            if process.returncode != 0:
                summary.problems.append(f"a worker ended with status {process.returncode}")
            if results.exists():
                for line in results.read_text().splitlines():
                    summary.add(json.loads(line))
    summary.seconds = time.monotonic() - started
    return summary


def _worker(kind: str, results: Path, seed: int, indexes: Sequence[int]) -> None:
    """Run each mutant in a child forked from this process, one JSON line per run."""
    import torch  # noqa: F401  (imported once, before the forks)

    from layerport.cli import main
    from layerport.plugins import get_registry

    get_registry()  # the plugins load once, before the forks
    target = importlib.import_module(KINDS[kind])
    folder = results.parent / f"{results.stem}-files"
    folder.mkdir()
    seeds = {name: path.read_bytes() for name, path in target.seed_files(folder).items()}
    with results.open("a") as out:
        for index in indexes:
            seed_name = target.SEEDS[index % len(target.SEEDS)]
            path = folder / f"mutant{Path(seed_name).suffix}"
            path.write_bytes(target.mutant_bytes(seeds[seed_name], seed, index))
            stderr_path = folder / "stderr.txt"
            growth_path = folder / "growth.txt"
            growth_path.write_text("0")
            pid = os.fork()
            if pid == 0:
                command = target.command_for(seed_name, path, index)
                _child(main, command, stderr_path, growth_path)
            _, status = os.waitpid(pid, 0)
            record = {
                "index": index,
                "seed_file": seed_name,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1,
                "stderr": stderr_path.read_text(errors="replace"),
                "growth": int(growth_path.read_text() or 0),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()


def _child(main: object, command: list[str], stderr_path: Path, growth_path: Path) -> None:
    """A forked child's whole life: run one command, its stderr to a file, and ``os._exit``.

    Its peak memory above what it started with goes to ``growth_path``: the
    peak (VmHWM) is reset at the start, since a forked child inherits its
    parent's pages.
    """
    code = 1
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    start = _resident_bytes()
    try:
        import signal

        signal.alarm(SECONDS_PER_RUN)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        log = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 2)
        try:
            main(command)  # type: ignore[operator]
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        growth_path.write_text(str(max(0, _peak_resident_bytes() - start)))
        os._exit(code)


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _resident_bytes() -> int:
    """This process's resident memory now; a forked child starts with it mapped."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def main(argv: Sequence[str] | None = None, kind: str = "weights") -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--worker"]:
        _worker(
            arguments[1], Path(arguments[2]), int(arguments[3]), [int(i) for i in arguments[4:]]
        )
        return 0
    description = importlib.import_module(KINDS[kind]).__doc__ or ""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("count", type=int, help="number of mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--only", type=int, help="replay the mutant with this index only")
    options = parser.parse_args(arguments)
    summary = fuzz(
        options.count, seed=options.seed, jobs=options.jobs, only=options.only, kind=kind
    )
    print(summary.line())
    for line in summary.signals + summary.problems + summary.internal_errors + summary.over_limit:
        print("  " + line)
    return 0 if summary.clean else 1


if __name__ == "__main__":
    sys.exit(main())
