"""Whole models: registered layers composed by a model file into one exported, verified file.

``read_model_file`` reads a model file's TOML and checks its form
(``layerport.model.definition``); ``resolve_model_config`` composes its layers
into one layer configuration (``layerport.model.compose``), which every command
then exports, verifies, runs and serves as it does a registered layer's. The
module that runs the composition is ``layerport.model.module`` (torch).
"""

from __future__ import annotations

from layerport.model.compose import Step, model_steps, resolve_model_config
from layerport.model.definition import (
    ModelDefinition,
    ModelInput,
    ModelLayer,
    is_model_file,
    parse_model,
    read_model_file,
)

__all__ = [
    "ModelDefinition",
    "ModelInput",
    "ModelLayer",
    "Step",
    "is_model_file",
    "model_steps",
    "parse_model",
    "read_model_file",
    "resolve_model_config",
]
