"""A Triton model repository on disk: ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/VERSION/...``.

Layout: https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_repository.md

A new export of a model goes into the next version folder and never replaces
one: a version folder, once there, is what some client was served. Each write
is all or nothing (``runtime.files.atomic_write_folder``): a new model appears
with its config and first version at once; a new version appears whole, and
only then is the config (same inputs and outputs, fresh metadata) replaced.
A version whose inputs or outputs differ from the model's config is refused:
clients of the model depend on them, so it needs a new model name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from layerport.errors import BadFile, Setting, UserInputError
from layerport.runtime.files import FileContent, atomic_write_bytes, atomic_write_folder
from layerport.serving import pbtxt
from layerport.serving.model_config import io_signature, signature_difference

CONFIG_FILE = "config.pbtxt"
NEW_NAME = Setting("target_options", "name=NAME")
# Triton names a model by its folder; keep to names every filesystem, URL and
# shell takes as they are.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_model_name(name: str) -> None:
    """Refuse a model name Triton or a URL would mangle (``UserInputError``)."""
    if not _MODEL_NAME.match(name) or name.endswith(".tmp"):
        raise UserInputError(
            f"model name {name!r} must be letters, digits, '_', '.' and '-', starting with "
            "a letter or digit and not ending in '.tmp' (a write's temporary folder)"
        )


def versions(model_folder: Path) -> list[int]:
    """The model's version numbers: its subfolders named by a positive integer, ascending."""
    if not model_folder.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_folder.iterdir()
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0
    )


def read_config(model_folder: Path) -> dict[str, Any]:
    """The model's parsed ``config.pbtxt``; ``BadFile`` if it is missing or unreadable."""
    path = model_folder / CONFIG_FILE
    if not path.is_file():
        raise BadFile(
            f"{model_folder} exists and is not a Triton model folder (it has no {CONFIG_FILE}); "
            "choose another model name or repository"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadFile(f"cannot read {path}: {error}") from error
    return pbtxt.parse(text, source=str(path))


def check_repository(model_folder: Path, backend: str) -> None:
    """Refuse, before any work, a model folder this export could not be written into.

    The repository (``model_folder``'s parent) must be a writable folder or
    creatable; an existing model must be a Triton model of the same backend.
    """
    repository = model_folder.parent
    if repository.exists() and not repository.is_dir():
        raise BadFile(f"{repository} is not a folder; a Triton model repository is a folder")
    if repository.is_dir():
        _check_writable(repository)
    if model_folder.exists():
        if not model_folder.is_dir():
            raise BadFile(f"{model_folder} is a file; a Triton model is a folder")
        existing = read_config(model_folder).get("backend")
        if existing != backend:
            raise UserInputError(
                f"model {model_folder.name} in {repository} is served by the {existing} "
                f"backend and this export is for the {backend} backend; give it a new model "
                "name with ",
                NEW_NAME,
            )


def _check_writable(folder: Path) -> None:
    """Create and remove a folder in ``folder``, as a write would (``os.access`` says yes to root)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".layerport-check.", dir=folder))
    except OSError as error:
        raise BadFile(f"cannot write into {folder}: {error.strerror}") from error


def write_version(
    model_folder: Path, config: Mapping[str, Any], files: Mapping[str, FileContent]
) -> Path:
    """Add ``files`` as the model's next version, with ``config``; returns the version folder.

    A model that does not exist yet is created with version 1. Raises
    ``UserInputError`` when the model exists and ``config``'s inputs, outputs,
    backend or batching differ from its ``config.pbtxt``.
    """
    check_repository(model_folder, str(config["backend"]))
    text = pbtxt.render(config).encode()
    if not model_folder.exists():
        try:
            model_folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadFile(f"cannot create {model_folder.parent}: {error.strerror}") from error
        try:
            atomic_write_folder(
                model_folder,
                {CONFIG_FILE: text, **{f"1/{name}": data for name, data in files.items()}},
            )
            return model_folder / "1"
        except FileExistsError:
            pass  # created meanwhile by another export: add a version to it instead
    difference = signature_difference(io_signature(read_config(model_folder)), io_signature(config))
    if difference is not None:
        raise UserInputError(
            f"model {model_folder.name} in {model_folder.parent} cannot take this export as a "
            f"new version: {difference}; clients depend on a model's inputs and outputs, so "
            "give it a new model name with ",
            NEW_NAME,
        )
    with _locked(model_folder):
        while True:
            version = model_folder / str(max(versions(model_folder), default=0) + 1)
            try:
                atomic_write_folder(version, dict(files))
                break
            except FileExistsError:
                continue  # another export took that number
        try:
            atomic_write_bytes(model_folder / CONFIG_FILE, text)
        except BaseException:
            # Without its config the new version would be served with the old
            # metadata: take it back, so the model is as it was.
            shutil.rmtree(version, ignore_errors=True)
            raise
    return version


@contextlib.contextmanager
def _locked(model_folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the model folder, so concurrent exports write in turn.

    Otherwise the export that took the lower version number could write its
    config last, and the config would describe an older version than the latest.
    """
    descriptor = os.open(model_folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock
