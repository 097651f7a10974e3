"""The eager module of a composed model: each layer's module, run in order.

The layers' modules are attributes named after the model file's layers, so
the composed state dict names each weight ``LAYER.WEIGHT`` (``encoder.weight_ih_l0``),
as ``layerport.model.compose`` declares them and a checkpoint's tensors are loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from layerport.errors import InvalidModel, InvalidSpec

if TYPE_CHECKING:
    from layerport.model.compose import Step


class ComposedModule(nn.Module):
    """Runs ``steps`` in order; ``forward`` takes the model's inputs, returns its outputs.

    Each layer is built under its own seed (the model's seed plus its index), so
    a seeded model is the same in any process, and each layer's weights differ.
    """

    def __init__(
        self, steps: Sequence[Step], inputs: Sequence[str], outputs: Sequence[str]
    ) -> None:
        super().__init__()
        self.steps = list(steps)
        self.input_names = list(inputs)
        self.output_values = list(outputs)
        for step in self.steps:
            config = step.config
            if hasattr(self, step.name):
                raise InvalidModel(
                    f"layer name {step.name!r} is taken by torch.nn.Module's own attributes; "
                    "rename the layer"
                )
            torch.manual_seed(config.seed)  # the caller forks the RNG state (eager.build)
            with config.layer.plugin_code("build()"):
                module = config.spec.build(config.params)
            if not isinstance(module, nn.Module):
                raise InvalidSpec(
                    f"layer {config.spec.name}: build() returned {type(module).__name__}, "
                    "not an nn.Module"
                )
            self.add_module(step.name, module)

    def forward(self, *inputs: torch.Tensor | None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        values = self.run_all(*inputs)
        outputs = tuple(values[name] for name in self.output_values)
        return outputs[0] if len(outputs) == 1 else outputs

    def run_all(self, *inputs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Every value the model computes, by name: its inputs and each ``LAYER.OUTPUT``."""
        values: dict[str, torch.Tensor] = {
            name: tensor
            for name, tensor in zip(self.input_names, inputs, strict=True)
            if tensor is not None
        }
        for step in self.steps:
            arguments = [None if source is None else values[source] for source in step.sources]
            lead = len(step.lead)
            if lead:
                # Run at every position: the leading dims folded into the layer's batch dim.
                shape = next(a for a in arguments if a is not None).shape[:lead]
                arguments = [None if a is None else a.flatten(0, lead - 1) for a in arguments]
            with step.config.layer.plugin_code("forward()"):
                result = getattr(self, step.name)(*arguments)
            results = (result,) if isinstance(result, torch.Tensor) else tuple(result)
            if lead:
                results = tuple(r.unflatten(0, shape) for r in results)
            names = step.values()
            if len(results) != len(names):
                raise InvalidSpec(
                    f"layer {step.config.spec.name}: forward() returned {len(results)} outputs, "
                    f"the spec declares {len(names)}"
                )
            values.update(zip(names, results, strict=True))
        return values
