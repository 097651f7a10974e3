"""Verifying a model as a Triton server serves it, against eager PyTorch.

The policy of ``verify --server``: the layer is rebuilt from the record in the
served config, the served interface is checked for pinned dims, and the grid
runs as requests, within what the server accepts (its ``max_batch_size``, the
inputs its config requires).
"""

from __future__ import annotations

from layerport.config import LayerConfig
from layerport.dtypes import INT8_AGAINST_FLOAT
from layerport.errors import Setting, UserInputError
from layerport.registry import Registry
from layerport.verify import VerifyOptions
from layerport.verify.engines import EagerEngine, ServerEngine, float64_baseline
from layerport.verify.rebuild import rebuild_layer
from layerport.verify.report import VerificationReport, note_plugin_version, note_underflow
from layerport.verify.structure import structure_problems
from layerport.verify.verdict import judged_tolerance
from layerport.verify.verification import verify_engines


def verify_server(
    registry: Registry,
    url: str,
    name: str,
    options: VerifyOptions | None = None,
    *,
    wait: float = 0.0,
) -> tuple[LayerConfig, VerificationReport]:
    """Verify model ``name`` as the server at ``url`` serves it, against eager PyTorch.

    The layer is rebuilt from the layerport metadata in the served config's
    ``parameters`` (``options`` as for ``pipeline.verify_file``), and every grid point is
    a request to the server: the declared inputs and outputs are checked for
    pinned dims first, the first draw leaves optional inputs out, and batch and
    sequence sizes span the grid. Raises ``BadFile`` for a server or model that
    cannot be reached (after waiting up to ``wait`` seconds for the model to be
    ready), ``WorkFailed`` when the served model fails a request.
    """
    from layerport.serving.client import ServedModel, wait_until_ready

    options = options or VerifyOptions()
    if wait > 0:
        wait_until_ready(url, name, wait)
    served = ServedModel(url, name)
    try:
        record = served.record()
        config, module = rebuild_layer(registry, record, weights=options.weights, dims=options.dims)
        batch = config.spec.batch_dim
        if served.batched and batch and config.dims.get(batch, 0) > served.max_batch_size:
            raise UserInputError(
                f"{batch}={config.dims[batch]} is above the served max_batch_size "
                f"{served.max_batch_size}, which Triton refuses; give ",
                Setting("dims", f"{batch}={served.max_batch_size}"),
                " or less",
            )
        inputs, outputs = served.interface()
        # The onnxruntime backend cannot fill an optional input in: its config
        # requires h0, so every draw sends it (serving.model_config).
        declared_optional = served.optional_inputs()
        spec_optional = [tensor.name for tensor in config.spec.inputs if tensor.optional]
        report = verify_engines(
            config,
            ServerEngine(served),
            EagerEngine(module, config),
            config.dims,
            # No int8 reference here (the served file is not at hand): what int8 costs.
            tolerance=INT8_AGAINST_FLOAT
            if record.quantize and options.atol is None and options.rtol is None
            else judged_tolerance(config, options.atol, options.rtol, quantize=record.quantize),
            trials=options.trials,
            structure_problems=structure_problems(
                config, inputs, outputs, where="the served config"
            ),
            baseline=float64_baseline(config),
            # Triton refuses a request above the config's max_batch_size.
            largest={config.spec.batch_dim: served.max_batch_size}
            if served.batched and config.spec.batch_dim
            else None,
            leave_out_optional=set(spec_optional) <= declared_optional,
        )
        report.quantization = record.quantize
        required = sorted(set(spec_optional) - declared_optional)
        if required:
            report.notes.append(
                f"{', '.join(required)} never left out: the served config requires "
                f"{'them' if len(required) > 1 else 'it'}"
            )
    finally:
        served.close()
    note_underflow(report, config)
    note_plugin_version(report, config, record, "served model")
    return config, report
