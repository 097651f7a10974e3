"""Serving exported files past one process: Triton model repositories, and verifying what is served.

- ``model_config``: a model's ``config.pbtxt``, derived from its spec and file;
- ``pbtxt``: the text format it is written in;
- ``repository``: versioned, atomic model folders;
- ``python_backend``: the model Triton's python backend runs (no torch);
- ``client``: a served model as a verification engine, through ``tritonclient``;
- ``tritonserver``: starting the tritonserver of ``nvidia-pytriton`` (tests, bench).
"""
