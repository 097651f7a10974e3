"""Decoding through a state that grows (a KV cache): the cases, and where a stream went wrong.

A layer whose ``Streaming`` ``grows`` is proved by a prefill of P tokens
followed by N single-token steps, its state carried from call to call, against
one pass over the P + N tokens with the state empty. P runs over the stream
dim's grid (1, traced, larger), N over 1 and the grid's largest, at each point
of the other dims' grid. A wrong cache is usually right until some step: a
failed case names the first wrong position, and the step that produced it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from layerport.dtypes import Tolerance
from layerport.spec import LayerSpec, Streaming
from layerport.verify.compare import Comparison


def decode_cases(
    grid: Mapping[str, list[int]], streaming: Streaming
) -> list[tuple[dict[str, int], int, int]]:
    """``(other dims, prompt length, decode steps)`` for every case of the proof."""
    prompts = grid[streaming.dim]
    steps = sorted({1, max(prompts)})
    others = {
        name: sizes for name, sizes in grid.items() if name not in (streaming.dim, streaming.grows)
    }
    points = [
        dict(zip(others, sizes, strict=True)) for sizes in itertools.product(*others.values())
    ]
    return [(dims, prompt, count) for dims in points for prompt in prompts for count in steps]


def describe_position(position: int, prompt: int) -> str:
    """``decode step 3 (position 10)``, or ``the prefill (position 5)`` within the prompt."""
    if position < prompt:
        return f"the prefill (position {position})"
    return f"decode step {position - prompt + 1} (position {position})"


def locate_in_stream(
    spec: LayerSpec,
    judged: Sequence[Comparison],
    streamed: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    prompt: int,
    tolerance: Tolerance | None,
) -> str:
    """Where a failed stream first went wrong: ``first wrong at decode step 3 (position 10)``.

    The first position, over every failed output, where an element is beyond the
    bound its comparison applied: ``allowed`` under the verdict (``reference`` is
    then float64 eager's), else ``tolerance`` (``reference`` is eager's own); or,
    in an output that holds NaN or Inf, where the first of them is.
    """
    streaming = spec.streaming
    assert streaming is not None
    first: int | None = None
    for comparison in judged:
        tensor = next(tensor for tensor in spec.outputs if tensor.name == comparison.output)
        axis = _position_axis(streaming, tensor.dims)
        actual, expected = streamed[tensor.name], reference[tensor.name]
        if comparison.passed or axis is None or actual.shape != expected.shape:
            continue
        actual, expected = actual.astype(np.float64), expected.astype(np.float64)
        if comparison.problem is not None:  # NaN or Inf: where they are
            wrong = ~np.isfinite(actual)
        else:
            if comparison.allowed is not None:
                bound: float | np.ndarray = comparison.allowed
            else:
                assert tolerance is not None
                bound = tolerance.atol + tolerance.rtol * np.abs(expected)
            wrong = ~(np.abs(actual - expected) <= bound)
        other_axes = tuple(index for index in range(wrong.ndim) if index != axis)
        positions = np.flatnonzero(wrong.any(axis=other_axes))
        if positions.size and (first is None or int(positions[0]) < first):
            first = int(positions[0])
    if first is None:
        return "no position found wrong (a shape or dtype differs)"
    return f"first wrong at {describe_position(first, prompt)}"


def _position_axis(streaming: Streaming, dims: tuple[str, ...]) -> int | None:
    """The axis of an output's positions: the stream dim's, or a carried state's grown one."""
    for name in (streaming.dim, streaming.grown_dim):
        if name in dims:
            return dims.index(name)
    return None
