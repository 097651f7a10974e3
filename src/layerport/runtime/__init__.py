"""The torch-free runtime: reading ONNX files safely and running them in onnxruntime.

Everything in this folder needs onnxruntime, onnx and numpy, never torch: a
deployment installs layerport without its ``export`` extra and still runs
``infer`` and ``inspect``. A test imports each module here and proves it. Code
in this folder imports only from this folder and from the torch-free leaf
modules ``layerport.errors`` and ``layerport.dtypes``.

- ``modelfile``: reading and validating an untrusted ``.onnx`` file;
- ``session``: an onnxruntime session on it, with checked inputs, guarded against
  onnxruntime's known crashes, or onnx's reference evaluator in its place;
- ``interface``: a file's inputs and outputs, and inputs generated for it;
  ``failures``: what crashes onnxruntime, and its errors in one line;
  ``reference``: onnx's reference evaluator behind a session's API;
- ``footprint``: what a run of a stranger's file will make, sized before it runs;
- ``int8``: numpy's model of onnxruntime's int8 arithmetic, with and without VNNI;
- ``external``: the external-data layout of a large model;
- ``runtimes``: the named runtimes of the runtime matrix (optimization levels,
  ``openvino``: the optional OpenVINO session, ``ort-cuda``), and which are missing;
- ``isolation``: checking a file with onnx and creating its session in a child
  process first, so a crash in onnx or onnxruntime becomes an error, not a signal;
- ``arrays``: what an input must look like, checking arrays, the one input generator;
- ``npy``: reading ``.npy``/``.npz`` files without unpickling;
- ``metadata``: the ``layerport.*`` record an exported file carries;
- ``inspection``: describing any ONNX file;
- ``files``: atomic writes; ``limits``: the memory limit; ``noise``: dependencies' chatter.

Importing this package imports nothing heavy (the CLI imports ``noise`` at
start-up); ``layerport.runtime.session.load_model`` opens a file.
"""

# onnxruntime's graph optimization levels, by the names the CLI accepts.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# What runs a file: onnxruntime's CPU provider, or onnx's own ReferenceEvaluator
# (numpy, slow, and independent of onnxruntime: it runs what onnxruntime's CPU
# provider has no kernel for, such as bfloat16 MatMul, and gives a second opinion).
RUNTIMES = ("onnxruntime", "onnx-reference")
