"""Keeping dependencies quiet: their warnings and progress lines are not the user's business.

torch.onnx prints progress to stdout and warnings to stderr; onnxruntime logs
from C++. By default layerport captures all of it; ``--verbose`` lets it through.
"""

from __future__ import annotations

import contextlib
import io
import logging
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
    """onnxruntime's severity threshold: 0 is verbose, 3 is errors only."""
    return 1 if _verbose else 3


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
