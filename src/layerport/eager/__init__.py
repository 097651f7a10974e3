"""The eager side, in PyTorch: building a layer's module, its weights, the recurrence helper.

- ``build``: ``build_module`` (seeded, cast, eval mode, weights loaded) and ``run_module``;
- ``weights``: reading ``.safetensors`` and state-dict files without running their code;
- ``recurrence``: ``run_over_time``, a recurrence that exports as one ONNX ``Scan``.

Importing this package imports no torch; its modules do.
"""
