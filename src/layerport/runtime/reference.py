"""onnx's reference evaluator, behind the slice of onnxruntime's session API layerport uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from layerport.errors import BadFile, one_line


class ReferenceSession:
    """``onnx.reference.ReferenceEvaluator`` behind the slice of onnxruntime's API we use.

    The evaluator is onnx's own implementation of every operator in numpy: slow
    (7x to 20x onnxruntime on the rnn), but independent of onnxruntime, and it
    runs the precisions onnxruntime's CPU provider has no kernels for (bfloat16).
    It is pure Python, so it needs no crash isolation.
    """

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        from onnx.reference import ReferenceEvaluator

        self.outputs = [value.name for value in model.graph.output]
        try:
            self._evaluator = ReferenceEvaluator(model)
        except Exception as error:
            raise BadFile(
                f"onnx's reference evaluator cannot load {name}: {one_line(str(error))}"
            ) from error

    def run(
        self, names: list[str] | None, feed: Mapping[str, np.ndarray], options: Any = None
    ) -> list[Any]:
        results = self._evaluator.run(names, dict(feed))
        return list(results)
