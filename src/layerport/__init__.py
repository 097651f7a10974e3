"""layerport: a registry of neural-network layer types, exported to ONNX and proven.

The top-level package is torch-free. It holds what a plugin author needs to
declare a layer type; building, exporting and verifying live in their own modules.
"""

__version__ = "0.1.0"

from layerport.errors import (
    BadFile,
    InvalidParameter,
    InvalidSpec,
    LayerportError,
    UnknownLayer,
    UserInputError,
    VerificationFailed,
    WorkFailed,
)
from layerport.hookspecs import hookimpl
from layerport.spec import (
    Dim,
    Dims,
    LayerSpec,
    Param,
    Params,
    ParamValue,
    Streaming,
    Tensor,
    Tolerance,
    WeightPart,
)

__all__ = [
    "BadFile",
    "Dim",
    "Dims",
    "InvalidParameter",
    "InvalidSpec",
    "LayerSpec",
    "LayerportError",
    "Param",
    "ParamValue",
    "Params",
    "Streaming",
    "Tensor",
    "Tolerance",
    "UnknownLayer",
    "UserInputError",
    "VerificationFailed",
    "WeightPart",
    "WorkFailed",
    "__version__",
    "hookimpl",
]
