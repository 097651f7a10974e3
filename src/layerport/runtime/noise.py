"""Keeping dependencies quiet: their warnings and progress lines are not the user's business.

torch.onnx prints progress to stdout and warnings to stderr; onnxruntime logs
from C++. By default layerport captures all of it; ``--verbose`` lets it through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_verbose = False
_NOISY_LOGGERS = ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxruntime")


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False, the default) dependencies' warnings and chatter."""
    global _verbose
    _verbose = verbose
    level = logging.INFO if verbose else logging.ERROR
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    warnings.resetwarnings()
    if not verbose:
        warnings.simplefilter("ignore")


def is_verbose() -> bool:
    return _verbose


def onnxruntime_log_level() -> int:
    """onnxruntime's severity threshold: 1 (info) when verbose, else 4 (fatal only).

    Not 3 (errors): onnxruntime logs each error in colour and then raises it,
    and layerport reports what it raises, in one line of its own.
    """
    return 1 if _verbose else 4


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """Point file descriptor 2 at the null device for the block, unless verbose.

    For C++ code that logs before it can be told its level (onnxruntime's import).
    Python's ``sys.stderr`` is flushed first, so nothing of layerport's is lost.
    """
    if _verbose:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (pythonw), or a closed stderr
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def captured_chatter() -> Iterator[io.StringIO]:
    """Capture what dependencies print to stdout and stderr, unless verbose.

    Yields the buffer so a failure can still show what was said.
    """
    buffer = io.StringIO()
    if _verbose:
        yield buffer
        return
    # torch.onnx's loggers hold handlers on the original sys.stderr, out of reach of
    # redirect_stderr, so they are silenced by level for the duration.
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
