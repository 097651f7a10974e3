"""Greedy decoding through a file that carries its KV cache: the loop, torch-free.

A decoder exported by layerport takes its ids and, per block, the cache
(``block0_past_key``...), and gives back its logits and the grown cache
(``block0_present_key``...); its record says which output feeds which input
(``ExportRecord.streaming``). One call is the prefill (the cache empty, past
0), then one call per new token. The loop takes any ``Step``: a plain
session's or eager torch's calls with the cache fed back (``copied_cache``),
or the file with its cache in bound buffers (``runtime.bound``), so the same
code decodes through each, and they can only disagree where their numbers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from layerport.errors import BadFile, UserInputError
from layerport.runtime.arrays import ArraySpec, numpy_dtype
from layerport.runtime.limits import check_allocation
from layerport.runtime.metadata import ExportRecord

Run = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Decoding:
    """What greedy decoding needs of a file: its ids input, its logits output and its cache.

    ``carry`` pairs each cache input with the output that grows it, and
    ``empty`` is the cache at the prefill: every input of ``carry`` at batch 1
    and past 0. ``grows`` names the dim the cache grows along, and ``longest``
    its largest size the file declares (``None``: no limit but memory).
    """

    ids: str
    logits: str
    carry: tuple[tuple[str, str], ...]
    empty: Mapping[str, np.ndarray]
    grows: str = "past"
    longest: int | None = None

    @classmethod
    def of(
        cls, record: ExportRecord | None, inputs: list[ArraySpec], outputs: list[ArraySpec]
    ) -> Decoding:
        """The decoding interface of a file, from its record and its inputs and outputs.

        Raises ``UserInputError`` for a file that does not decode: one with no
        record of a growing cache, or other than one integer input besides it;
        ``BadFile`` for a record whose stream names what the file lacks.
        """
        stream = record.streaming if record is not None else None
        if not stream or stream.get("grows") is None:
            raise UserInputError(
                "the file carries no KV cache (its layerport record has no stream that grows), "
                "so it cannot generate; export a decoder model file"
            )
        carry = tuple((given, made) for given, made in stream["carry"])
        _check_carry(carry, inputs, outputs)
        cached = {given for given, _ in carry}
        ids = [spec for spec in inputs if spec.name not in cached]
        if len(ids) != 1 or not ids[0].dtype.startswith("int") or len(ids[0].dims) != 2:
            names = ", ".join(spec.name for spec in ids) or "none"
            raise UserInputError(
                "generation feeds one input of token ids (batch, seq) besides the cache; "
                f"this file takes {names}"
            )
        grown = {made for _, made in carry}
        logits = next((spec for spec in outputs if spec.name not in grown), None)
        if logits is None:
            raise UserInputError("the file gives back its cache but no logits")
        _check_scores(ids[0], logits)
        batch = ids[0].dims[0]
        empty = {
            spec.name: np.zeros(
                tuple(
                    dim if isinstance(dim, int) else 1 if dim == batch else 0 for dim in spec.dims
                ),
                dtype=numpy_dtype(spec.dtype),
            )
            for spec in inputs
            if spec.name in cached
        }
        longest = (record.max_dims or {}).get(stream["grows"]) if record is not None else None
        return cls(ids[0].name, logits.name, carry, empty, stream["grows"], longest)

    def prefill(self, prompt: list[int]) -> dict[str, np.ndarray]:
        """The first call's inputs: the prompt, and the cache empty."""
        return {self.ids: np.asarray([prompt], dtype=np.int64), **self.empty}

    def largest_call(self, prompt: list[int], steps: int) -> dict[str, np.ndarray]:
        """Inputs shaped as the last call of decoding ``steps`` (2 or more) ids after ``prompt``
        (zeros): the call that makes the most, to size memory against before decoding starts.

        Raises ``UserInputError`` for a cache longer than ``longest``, and
        ``ResourceLimit`` for one past the memory limit, before making it.
        """
        # The prefill is fed no cache, and the last id picked is never fed back.
        past = len(prompt) + steps - 2
        fed = (
            f"decoding {steps} ids after a prompt of {len(prompt)} feeds back a cache of "
            f"{past} positions"
        )
        if self.longest is not None and past > self.longest:
            raise UserInputError(
                f"{fed}, but dim {self.grows} must be at most {self.longest} (the largest size "
                "the model declares, recorded in the file)"
            )
        # The empty cache's one empty axis is the one that grows.
        position_bytes = sum(
            array.itemsize * math.prod(size for size in array.shape if size)
            for array in self.empty.values()
        )
        check_allocation(past * position_bytes, f"a cache of {past} positions")
        grown = {
            name: np.zeros(
                tuple(past if size == 0 else size for size in array.shape), dtype=array.dtype
            )
            for name, array in self.empty.items()
        }
        return {self.ids: np.zeros((1, 1), dtype=np.int64), **grown}


Step = Callable[[np.ndarray], np.ndarray]


def _check_carry(
    carry: tuple[tuple[str, str], ...], inputs: list[ArraySpec], outputs: list[ArraySpec]
) -> None:
    """Refuse a record (edited, or another file's) whose stream carries from an output the
    file lacks, into an input it lacks, or from one output into several inputs."""
    given_names, made_names = {spec.name for spec in inputs}, {spec.name for spec in outputs}
    seen: set[str] = set()
    for given, made in carry:
        if given not in given_names:
            problem = f"its stream carries into {given}, which is not one of its inputs"
        elif made not in made_names:
            problem = f"its stream carries {made}, which is not one of its outputs"
        elif made in seen:
            problem = f"its stream carries {made} into more than one input"
        else:
            seen.add(made)
            continue
        raise BadFile(f"the file's layerport metadata is damaged: {problem}")


def _check_scores(ids: ArraySpec, logits: ArraySpec) -> None:
    """Refuse an output that is not one score per id the input takes: a model without its
    head gives hidden features, and their argmax is not a token."""
    features = logits.dims[-1] if logits.dims else None
    if ids.values is None or not isinstance(features, int):
        return
    low, high = ids.values
    if low == 0 and features != high:
        raise UserInputError(
            f"output {logits.name} gives {features} values per position, but input "
            f"{ids.name} takes {high} ids: it is not a score per id (a model without its head?), "
            "so greedy decoding would pick features, not tokens"
        )


def copied_cache(run: Run, decoding: Decoding) -> Step:
    """Calls of ``run`` as decoding steps (ids ``(1, n)`` in, logits out), each call's grown
    cache fed to the next, as a plain session takes the file: the cache copied every call."""
    cache = dict(decoding.empty)

    def step(ids: np.ndarray) -> np.ndarray:
        nonlocal cache
        outputs = run({decoding.ids: ids, **cache})
        cache = {given: outputs[made] for given, made in decoding.carry}
        return outputs[decoding.logits]

    return step


def greedy_ids(step: Step, prompt: list[int], steps: int) -> list[int]:
    """The ``steps`` ids greedy decoding picks after ``prompt``, one ``step`` per id after the
    prefill; ``step`` takes ids ``(1, n)`` and gives their logits, its cache its own.

    Each pick is the argmax of the last position's logits (the first of equal
    ones, as ``torch.argmax`` and transformers' greedy search pick).
    """
    if not prompt:
        raise UserInputError("the prompt needs at least one id")
    if steps < 1:
        raise UserInputError(f"steps must be at least 1, got {steps}")
    ids = np.asarray([prompt], dtype=np.int64)
    picked: list[int] = []
    for _ in range(steps):
        logits = step(ids)
        picked.append(int(np.argmax(logits[0, -1])))
        ids = np.asarray([[picked[-1]]], dtype=np.int64)
    return picked
