"""Doing work that may crash the process in a forked child first, so a crash becomes an error.

onnxruntime is C++: a bug in it ends the process with a signal, and no ``try``
catches that (issue 10: a float16 rnn made ``infer`` segfault while onnxruntime
optimized its graph). ``crash_in_child`` runs the work in a child made by
``os.fork``. The child shares the parent's memory copy-on-write, onnxruntime
already imported, so it costs the work itself and no start-up. It says nothing:
its stdout and stderr point at the null device, faulthandler is off and it
dumps no core, since the parent reports the crash. It ends with ``os._exit``,
so it never runs the parent's atexit handlers or ``finally`` blocks (atomic
writes' clean-up) and never flushes the parent's buffered output.

Where Python has no ``os.fork`` (Windows), the work is not tried and
``crash_in_child`` returns ``None``: the caller goes on in-process, unisolated.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass

# The child's exit status when the work raised: the caller repeats the work
# in-process, where the exception is its own to handle.
WORK_RAISED = 70


@dataclass(frozen=True)
class ChildCrash:
    """How a child that did not finish its work ended: by a signal, or an odd exit status."""

    signal_number: int | None = None
    exit_status: int | None = None

    @property
    def signal_name(self) -> str | None:
        if self.signal_number is None:
            return None
        try:
            return signal.Signals(self.signal_number).name
        except ValueError:
            return f"signal {self.signal_number}"

    def words(self) -> str:
        """``crashed (SIGSEGV)``, as an error message says it."""
        if self.signal_number == getattr(signal, "SIGKILL", None):
            # Nothing in onnxruntime sends SIGKILL; the kernel's out-of-memory killer does.
            return "was killed (SIGKILL; the machine may have run out of memory)"
        if self.signal_name is not None:
            return f"crashed ({self.signal_name})"
        return f"ended the process (exit status {self.exit_status})"


def can_isolate() -> bool:
    """Whether this platform can fork, and so isolate work in a child."""
    return hasattr(os, "fork")


def crash_in_child(work: Callable[[], object]) -> ChildCrash | None:
    """Do ``work`` in a forked child, wait for it, and say how it crashed.

    ``None`` when the child finished the work, when the work raised (the caller
    does it again in-process to get the exception), and where there is no fork.
    An interrupt while waiting (Ctrl-C reaches the child too) ends and reaps the
    child, then propagates; a child ended by SIGINT alone raises
    ``KeyboardInterrupt`` here.
    """
    outcome = outcome_in_child(work)
    return outcome if isinstance(outcome, ChildCrash) else None


def outcome_in_child(work: Callable[[], object]) -> ChildCrash | bool:
    """Do ``work`` in a forked child: ``True`` if it finished, ``False`` if it raised.

    For work whose only result is whether it raises (a validity check), the
    caller need not repeat a finished check in-process; on ``False`` it repeats
    the work for the exception. ``False`` too where there is no fork. A crash
    is a ``ChildCrash``; interrupts go as in ``crash_in_child``.
    """
    if not can_isolate():
        return False
    with warnings.catch_warnings():
        # Python 3.12+ warns on fork in a process with other threads, and numpy's
        # BLAS pool starts some at import. The child gets only this thread; the
        # others are idle pools (BLAS, earlier sessions'), and the child needs
        # none of their locks: it creates a session and leaves.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        _run_in_child(work)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return False  # the embedding program reaps children itself (SIGCHLD ignored)
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        return ChildCrash(signal_number=number)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if code in (0, WORK_RAISED):
        return code == 0
    return ChildCrash(exit_status=code)


def _run_in_child(work: Callable[[], object]) -> None:
    """The child's whole life: quiet down, do the work, and leave by ``os._exit``."""
    status = WORK_RAISED
    try:
        _quiet_child()
        work()
        status = 0
    finally:
        # Never returns, and never unwinds into the parent's code.
        os._exit(status)


def _quiet_child() -> None:
    # Where the parent handles Ctrl-C or SIGTERM in Python (the CLI raises
    # KeyboardInterrupt), the child takes the default action and ends at once,
    # even inside C++; a signal the parent ignores stays ignored.
    for number in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(number)):
            signal.signal(number, signal.SIG_DFL)
    # A crash here is expected and reported by the parent: no traceback dump, no core.
    faulthandler.disable()
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
