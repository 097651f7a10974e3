"""Writing files so that a failure or an interrupt never leaves a partial one.

Every file layerport writes goes to a temporary file in the target's folder and
is moved into place with ``os.replace``, which is atomic on POSIX and Windows: a
reader sees either the old file, untouched, or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from layerport.errors import BadFile

# A file's content: bytes, or buffers written one after the other (a data file
# of several gigabytes is never copied into one bytes object).
FileContent = bytes | Sequence[memoryview]
CHUNK_BYTES = 2**26  # one write() call moves at most about 2 GiB on Linux


def _read_umask() -> int:
    # The only portable way to read the umask is to set it; done once, at import,
    # so no other thread can create a file while it is 0.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def check_writable_target(path: Path) -> None:
    """Refuse, before any work is done, a target that cannot be written.

    Writability is tested by creating (and removing) the temporary file the
    write itself would create: ``os.access`` answers yes to root for a read-only
    folder, and knows nothing of read-only mounts or immutable folders.
    """
    parent = path.parent
    if path.is_dir():
        raise BadFile(f"{path} is a folder; give a file path")
    if not parent.exists():
        raise BadFile(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise BadFile(f"cannot write {path}: {parent} is not a folder")
    if path.exists() and not path.is_file():
        # Replacing it would swap a device or a pipe (even /dev/null) for a plain file.
        raise BadFile(f"cannot write {path}: it exists and is not a regular file")
    try:
        descriptor, probe = _temporary_file(path)
    except OSError as error:
        refused = error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        reason = (
            f"folder {parent} is not writable ({error.strerror})" if refused else error.strerror
        )
        raise BadFile(f"cannot write {path}: {reason}") from error
    os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _temporary_file(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, keeping any existing file on failure."""
    check_writable_target(path)
    temporary = _written_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException as error:  # KeyboardInterrupt and SIGTERM included
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise BadFile(f"cannot write {path}: {error.strerror}") from error
        raise


def _written_temporary(path: Path, data: FileContent) -> str:
    """A temporary file beside ``path`` holding ``data``, flushed, with ``path``'s mode."""
    try:
        descriptor, temporary = _temporary_file(path)
    except OSError as error:
        raise BadFile(f"cannot write {path}: {error.strerror}") from error
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _write_content(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600: give it the mode of the file it replaces,
        # or the mode an ordinary new file would get.
        os.chmod(temporary, _mode_for(path))
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise BadFile(f"cannot write {path}: {error.strerror}") from error
        raise
    return temporary


def _write_content(handle: io.BufferedWriter, data: FileContent) -> None:
    for buffer in [data] if isinstance(data, bytes) else data:
        view = memoryview(buffer).cast("B")
        for start in range(0, len(view), CHUNK_BYTES):
            handle.write(view[start : start + CHUNK_BYTES])


def atomic_write_files(
    path: Path, files: Mapping[str, FileContent], stale: Sequence[str] = ()
) -> None:
    """Write the file ``path`` and the files beside it that it reads (its external data).

    ``files`` maps names in ``path``'s folder to contents, ``path.name`` among
    them. Every file is written to a temporary one first; then the others are
    moved into place, each one's old version set aside, and ``path`` last. A
    failure or an interrupt before ``path`` is replaced puts the old versions
    back, so the folder keeps the old pair whole or holds the new one whole.
    The ``stale`` names not in ``files`` (a data file the old model read and the
    new one does not) are set aside the same way and removed once ``path`` is
    in place: a folder never holds a data file that no model reads.
    """
    folder = path.parent
    check_writable_target(path)
    for name in files:
        check_writable_target(folder / name)
    temporaries: dict[str, str] = {}
    set_aside: dict[Path, str | None] = {}  # each companion replaced, and its old version
    try:
        for name, data in files.items():
            temporaries[name] = _written_temporary(folder / name, data)
        for name, temporary in temporaries.items():
            if name == path.name:
                continue
            target = folder / name
            old = None
            if target.exists() or target.is_symlink():
                old = f"{temporary}.old"
                os.replace(target, old)
            set_aside[target] = old
            os.replace(temporary, target)
        for name in stale:
            target = folder / name
            if name not in files and target.is_file():
                descriptor, old = _temporary_file(target)
                os.close(descriptor)
                try:
                    os.replace(target, old)
                except BaseException:
                    os.unlink(old)
                    raise
                set_aside[target] = old
        os.replace(temporaries[path.name], path)
    except BaseException as error:
        for target, old in set_aside.items():
            with contextlib.suppress(OSError):
                if old is None:
                    os.unlink(target)
                else:
                    os.replace(old, target)
        for temporary in temporaries.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        if isinstance(error, OSError):
            raise BadFile(f"cannot write {path}: {error.strerror}") from error
        raise
    for old in set_aside.values():
        if old is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)


def _mode_for(path: Path) -> int:
    """The existing target's permission bits, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def atomic_save_npz(path: Path, arrays: Mapping[str, object]) -> None:
    """Save arrays under their own names in an ``.npz`` file, atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_folder(path: Path, files: Mapping[str, FileContent]) -> None:
    """Create folder ``path`` holding ``files`` (relative path to content), all or nothing.

    The folder is built under a temporary name beside ``path`` and renamed into
    place, so a reader never sees it half-written. Never replaces anything:
    raises ``FileExistsError`` when ``path`` exists (a concurrent writer took the
    name), ``BadFile`` when the folder cannot be written.
    """
    if path.exists():
        raise FileExistsError(path)
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise BadFile(f"cannot write {path}: {error.strerror}") from error
    try:
        os.chmod(temporary, 0o777 & ~_UMASK)
        for relative, data in files.items():
            target = temporary / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                _write_content(handle, data)
                handle.flush()
                os.fsync(handle.fileno())
        try:
            os.rename(temporary, path)
        except OSError as error:
            # rename replaces an empty folder and refuses a full one: either way
            # another writer got there first.
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(path) from error
            raise
    except BaseException as error:  # KeyboardInterrupt and SIGTERM included
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, FileExistsError):
            raise BadFile(f"cannot write {path}: {error.strerror}") from error
        raise
