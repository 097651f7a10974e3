"""The export stage: a configured layer through ``torch.onnx`` to a clean ``ModelProto``.

``layerport.export.torch_onnx.export_onnx`` does that and nothing else: it
neither verifies the model nor writes its metadata, which ``layerport.pipeline``
does. Importing this package imports no torch (the CLI reads the opsets below
for its ``--help``); ``torch_onnx`` does.
"""

# The oldest opset torch.onnx's dynamo exporter emits: the widest runtime support.
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)
