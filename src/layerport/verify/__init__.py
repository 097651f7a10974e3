"""The verification stage: proving that an export computes what eager PyTorch computes.

- ``engines``: what runs a layer or a file on given inputs (eager PyTorch, the
  layer's torch reference, onnxruntime), so any two can be compared;
- ``structure``: the file's names, dtypes and dims against the spec;
- ``grid``: the sizes verification runs at, and the chunks of a streamed sequence;
- ``compare``: one output against another, element by element;
- ``report``: what a verification found, as data;
- ``verification``: ``verify_engines``, which runs the grid through two engines.

Importing this package imports no torch; only the eager engines need it.
"""

DEFAULT_TRIALS = 3  # random input draws at each point of the verification grid
