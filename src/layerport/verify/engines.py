"""Engines: what runs a layer, or an exported file, on named input arrays.

Verification compares any two engines on the same inputs, and bench times any
set of them, so a new way to compute a layer (another runtime, another
reference) is one new engine here, not edits across verification and bench.

- ``eager``: the layer's own module, as layerport builds it;
- ``torch-reference``: the layer's declared independent torch implementation,
  ``LayerSpec.reference`` (for the rnn, ``nn.RNN`` + ``nn.Linear``);
- ``onnxruntime``: a CPU session on the exported model;
- ``onnx-reference``: the exported model in onnx's ``ReferenceEvaluator``;
- the runtime matrix's runtimes (``runtime.runtimes``: ``ort-noopt``,
  ``openvino``...): a ``FileEngine`` named after the runtime;
- ``triton:NAME``: a model a Triton server serves (``serving.client.ServedModel``).

Each engine takes numpy arrays by input name (an optional input may be left out)
and returns numpy arrays by output name. ``bind`` prepares a call on fixed
inputs for timing, with the conversion done once, outside the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from layerport.config import LayerConfig
from layerport.errors import InvalidSpec
from layerport.runtime.session import Session

if TYPE_CHECKING:
    from torch import nn

    from layerport.runtime.bound import BoundCache
    from layerport.serving.client import ServedModel


class Engine(Protocol):
    """Runs a layer or a file on named arrays."""

    name: str

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; omitted optional inputs are zeros (or ``None`` to torch)."""
        ...

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call on ``inputs``, prepared once, for timing; it returns the raw result."""
        ...


class EagerEngine:
    """The layer's own ``nn.Module``, in eager PyTorch."""

    name = "eager"

    def __init__(self, module: nn.Module, config: LayerConfig) -> None:
        self.module = module
        self.config = config

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from layerport.eager.build import run_module

        return run_module(self.module, self.config, inputs)

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        from layerport.eager.build import torch_arguments

        module, arguments = self.module, torch_arguments(self.config, inputs)
        return lambda: module(*arguments)


class TorchReferenceEngine:
    """The layer's declared reference: an independent torch implementation, same weights."""

    name = "torch-reference"

    def __init__(self, module: nn.Module, config: LayerConfig) -> None:
        if config.spec.reference is None:
            raise InvalidSpec(f"layer {config.spec.name} declares no reference")
        with config.layer.plugin_code("reference()"):
            self.reference = config.spec.reference(module)
        self.config = config

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from layerport.eager.build import run_module

        return run_module(self.reference, self.config, inputs, who="reference")

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        from layerport.eager.build import torch_arguments

        reference, arguments = self.reference, torch_arguments(self.config, inputs)
        return lambda: reference(*arguments)


class FileEngine:
    """The exported model, in the session's runtime: ``onnxruntime`` or ``onnx-reference``."""

    def __init__(self, session: Session, name: str | None = None) -> None:
        self.session = session
        self.name = name or session.runtime

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(inputs)

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        return self.session.bind(inputs)


class BoundCacheEngine:
    """A decoder file with its KV cache in bound buffers (``runtime.bound``), as ``generate``
    runs it: each call starts from the cache it is given, copied into buffers with room for
    the call, and writes the call's positions in place.

    ``session`` is on ``bound_model``'s variant of the file; ``carry`` pairs each
    cache input with the output that grows it; ``slack`` is room the buffers keep
    past the call.
    """

    def __init__(
        self,
        session: Session,
        carry: tuple[tuple[str, str], ...],
        name: str | None = None,
        *,
        slack: int = 0,
    ) -> None:
        self.session = session
        self.carry = carry
        self.name = name or f"{session.runtime}-bound"
        self.slack = slack

    def _cache_for(self, inputs: Mapping[str, np.ndarray]) -> tuple[BoundCache, dict[str, Any]]:
        from layerport.runtime.bound import PAST_AXIS, BoundCache

        cached = {given for given, _ in self.carry}
        cache = {name: array for name, array in inputs.items() if name in cached}
        feed = {name: array for name, array in inputs.items() if name not in cached}
        past = next(iter(cache.values())).shape[PAST_AXIS]
        seq = max(array.shape[1] for array in feed.values())
        return BoundCache(self.session, self.carry, cache, past + seq + self.slack), feed

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bound, feed = self._cache_for(inputs)
        return {**bound(feed), **bound.cache()}

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        bound, feed = self._cache_for(inputs)
        past = bound.length

        def call() -> Any:
            bound.length = past  # the same call each time: over the same cache
            return bound(feed)

        return call


class ServerEngine:
    """A served model as a verification or bench engine (``verify.engines.Engine``)."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.name = f"triton:{model.name}"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.infer(inputs)

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        model, arrays = self.model, dict(inputs)
        return lambda: model.infer(arrays)


def float64_baseline(config: LayerConfig) -> EagerEngine | None:
    """The layer in float64, from the same source weights (converted exactly), or ``None``.

    It prices every precision but float64 itself, int8's quantization included,
    and judges a float file by the float64 verdict unless a fixed tolerance is
    given (a quantized file is judged by its recipe's tolerance, against the
    same quantization).
    """
    from layerport.eager.build import build_module

    if config.dtype == "float64":
        return None
    in_float64 = dataclasses.replace(config, dtype="float64")
    return EagerEngine(build_module(in_float64), in_float64)
