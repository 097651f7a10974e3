"""Defaults that the CLI shows in --help and the library uses, in one light module.

The CLI imports this at start-up, so it must import nothing heavy.
"""

DEFAULT_OPSET = (
    18  # the oldest opset torch.onnx's dynamo exporter emits: the widest runtime support
)
SUPPORTED_OPSETS = range(18, 24)
DEFAULT_TRIALS = 3  # random input draws at each point of the verification grid
DEFAULT_BENCH_THREADS = 2
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
