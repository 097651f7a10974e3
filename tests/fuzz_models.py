"""Seeded mutation fuzzing of model files (``*.toml``) through ``show``, ``run`` and ``export``.

    python tests/fuzz_models.py 2000
    python tests/fuzz_models.py 2000 --seed 7 --jobs 2
    python tests/fuzz_models.py 1 --seed 7 --only 1234      # replay one mutant

The seeds are three small model files, each beside the good checkpoint it
reads: a tagger (embedding, lstm, linear) over a training checkpoint's zip
``.pt``, a linear head with per-weight keys and a ``[dims]`` table over an
``.npz``, and a conv1d, batchnorm1d, maxpool1d chain over a ``.safetensors``.
Mutant ``i`` depends only on ``--seed`` and ``i``: the file's bytes edited
(``fuzz_onnx.mutate``), or its TOML parsed and one value replaced, a key
dropped, renamed or added, or a list edited, and written back, so that most
mutants still parse and reach the composition, the shapes and the memory
sizing rather than stopping at the TOML parser.

The runs share ``fuzz_weights``'s forked children and checks: exit 0, 1 or 2,
at most one ``Error:`` line, no traceback, no signal, and peak memory growth
under ``LAYERPORT_MAX_MEMORY`` (256M).
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

from fuzz_onnx import mutate

HEAD = """\
[model]
name = "head"
description = "a linear head over per-weight keys"

[inputs.x]
shape = ["batch", "seq", 6]

[[layer]]
name = "fc"
use = "linear"
weights = { weight = "fc_w", bias = "fc_b" }
params = { activation = "relu" }

[dims.seq]
default = 7
check_size = 19
"""
WEIGHTS = {"tagger.toml": "tagger.pt", "head.toml": "head.npz", "frames.toml": "frames.safetensors"}
SEEDS = tuple(WEIGHTS)
# export verifies on a grid (seconds a run): one mutant in eight, spread over the seeds.
COMMANDS = ("run", "show", "run", "show", "run", "show", "run", "export")
LOAD_PLUGINS = None  # every installed plugin: the models use layerport-nn's and -recurrent's layers
# Values a mutation puts in place of another: sizes at the edges, wrong types,
# names the file uses elsewhere, dtypes, and strings no name may be.
INTERESTING: tuple[Any, ...] = (
    0, -1, 1, 2, 3, 7, 1000, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63), 10**9,
    0.5, -0.0, math.inf, math.nan, True, False,
    "", "batch", "seq", "length", "x", "ids", "signal", "head.y", "encoder.y", "encoder",
    "embed", "fc", "conv.y", "embedding.", "lstm.", "0.", "fc_w", "fc_b", "weight",
    "float16", "bfloat16", "float64", "int64", "int32", "bool", "int8",
    "linear", "rnn", "lstm", "layerport-nn:embedding", "nosuch:linear", "model:tagger",
    "../../etc/passwd", "/dev/zero", "é", "a" * 300, "Upper", "a.b.c",
    [], [1], ["batch"], ["batch", 10**9], ["batch", "seq", 2**40], [-1, 0],
    {}, {"weight": "fc_w"}, {"x": "ids"}, {"in_features": 10**9}, {"function": "gelu"},
)  # fmt: skip
KEYS = (
    "name", "use", "weights", "params", "input", "dtype", "shape", "high", "default",
    "check_size", "description", "model", "inputs", "dims", "layer", "outputs", "batch",
    "seq", "bias", "weight", "kernel_size", "hidden_size", "num_layers", "unknown",
)  # fmt: skip


def seed_files(folder: Path) -> dict[str, Path]:
    """The model files every mutant starts from, and the checkpoints they read, in ``folder``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from torch import nn

    # The model-file tests' tagger and conv1d chain.
    from test_model_file import SEQUENCE_CHAIN, TAGGER

    torch.manual_seed(0)
    tagger = nn.ModuleDict(
        {
            "embedding": nn.Embedding(20, 4),
            "lstm": nn.LSTM(4, 3, bidirectional=True, batch_first=True),
            "head": nn.Linear(6, 2),
        }
    )
    torch.save({"model_state_dict": tagger.state_dict(), "epoch": 1}, folder / WEIGHTS[SEEDS[0]])
    head = nn.Linear(6, 3)
    np.savez(folder / WEIGHTS[SEEDS[1]], fc_w=head.weight.detach().numpy(),
             fc_b=head.bias.detach().numpy())  # fmt: skip
    frames = nn.Sequential(nn.Conv1d(4, 5, 3), nn.BatchNorm1d(5), nn.MaxPool1d(2))
    save_file(frames.state_dict(), folder / WEIGHTS[SEEDS[2]])
    paths = {}
    for name, text in zip(SEEDS, (TAGGER, HEAD, SEQUENCE_CHAIN), strict=True):
        paths[name] = folder / name
        paths[name].write_text(text)
    return paths


def mutant_bytes(data: bytes, seed: int, index: int) -> bytes:
    """Mutant ``index``: the TOML's bytes edited, or its data edited and written back."""
    rng = random.Random(f"{seed}:{index}")
    if rng.random() < 0.25:
        return mutate(data, rng)
    document = tomllib.loads(data.decode())
    for _ in range(1 if rng.random() < 0.7 else 2):
        _edit(document, rng)
    text = toml_text(document).encode()
    return mutate(text, rng) if rng.random() < 0.05 else text


def _edit(document: dict[str, Any], rng: random.Random) -> None:
    """One edit at a random place in the document, most often a leaf's value."""
    places: list[tuple[Any, Any]] = []  # (container, key or index)

    def walk(node: Any) -> None:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        for key in keys:
            places.append((node, key))
            if isinstance(node[key], dict | list):
                walk(node[key])

    walk(document)
    leaves = [place for place in places if not isinstance(place[0][place[1]], dict | list)]
    container, key = rng.choice(leaves if leaves and rng.random() < 0.8 else places)
    kind = rng.choice(("like", "like", "like", "value", "drop", "rename", "add", "list"))
    if kind == "like":  # a value of the same type: most of these still parse and compose
        container[key] = _alike(container[key], leaves, rng)
    elif kind == "value":
        container[key] = rng.choice(INTERESTING)
    elif kind == "drop":
        del container[key]
    elif kind == "rename" and isinstance(container, dict):
        container[rng.choice(KEYS)] = container.pop(key)
    elif kind == "add" and isinstance(container, dict):
        container[rng.choice(KEYS)] = rng.choice(INTERESTING)
    else:
        lists = [node for node, _ in places if isinstance(node, list)]
        if not lists:
            return
        target = rng.choice(lists)
        how = rng.choice(("duplicate", "remove", "reverse"))
        if how == "duplicate" and target:
            target.append(json.loads(json.dumps(rng.choice(target))))
        elif how == "remove" and target:
            target.pop(rng.randrange(len(target)))
        else:
            target.reverse()


def _alike(value: Any, leaves: list[tuple[Any, Any]], rng: random.Random) -> Any:
    """Another value of ``value``'s type: a size at an edge, or a string the file holds."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([item for item in INTERESTING if type(item) is int] + [value + 1])
    if isinstance(value, str):
        strings = [node[at] for node, at in leaves if isinstance(node[at], str)]
        return rng.choice(strings + [item for item in INTERESTING if isinstance(item, str)])
    return rng.choice(INTERESTING)


def toml_text(document: dict[str, Any]) -> str:
    """The document as TOML, every table inline: ``key = {...}`` lines."""
    return "".join(f"{_key(key)} = {_value(value)}\n" for key, value in document.items())


def _key(key: str) -> str:
    return _string(str(key))


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return (
        '"'
        + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in escaped)
        + '"'
    )


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def command_for(seed_name: str, path: Path, index: int) -> list[str]:
    """``show``, ``run`` or ``export`` of the mutant with its seed's checkpoint."""
    weights = ["--weights", str(path.parent / WEIGHTS[seed_name])]
    command = COMMANDS[(index // len(SEEDS)) % len(COMMANDS)]
    if command == "export":
        return ["export", str(path), *weights, "-o", str(path.with_suffix(".onnx"))]
    return [command, str(path), *weights]


def main(argv: Sequence[str] | None = None) -> int:
    import fuzz_weights

    return fuzz_weights.main(argv, kind="models")


if __name__ == "__main__":
    sys.exit(main())
