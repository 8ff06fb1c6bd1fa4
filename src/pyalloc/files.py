"""Output files written whole or not at all.

``replacing(path)`` gives a temporary name beside ``path``; the caller writes
the whole file there, and only when that succeeded is it renamed onto
``path`` (a rename within a directory is atomic). A write that fails or is
killed leaves ``path`` as it was: the old file, or none. A temporary's name
carries its writer's pid, so the next write to ``path`` removes what a killed
writer left.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .regions import process_alive


def check_output_path(path: str | os.PathLike[str]) -> None:
    """OSError (with a message naming ``path``) if a file cannot be written there."""
    directory = _output_directory(os.fspath(path))
    if directory is not None:
        # A file made and removed: permission bits say nothing to root, nor
        # of a read-only mount or a file system like /proc.
        os.unlink(_new_file(directory, ".pyalloc-probe-", ""))


def _output_directory(target: str) -> str | None:
    """The directory a file written at ``target`` is made in; None for a
    device or a pipe, written into as it stands (``replacing``)."""
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target} is a directory; give a file name")
    if os.path.exists(target) and not os.path.isfile(target):
        return None
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such directory")
    return directory


def _new_file(directory: str, prefix: str, suffix: str) -> str:
    """The path of a new empty file in ``directory``; OSError naming the directory."""
    try:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    except OSError as e:
        raise type(e)(f"{directory}: cannot create files there ({e.strerror})") from None
    os.close(fd)
    return path


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path beside ``path``, renamed onto it if the block ends normally.

    A symbolic link is followed: its target is the file replaced. Something
    that is not a regular file (``/dev/stdout``, a named pipe) cannot be
    replaced by a rename: it is written directly, as it stands.
    """
    target = os.fspath(path)
    if os.path.exists(target) and not os.path.isfile(target) and not os.path.isdir(target):
        yield target
        return
    if os.path.islink(target):
        target = os.path.realpath(target)
    _output_directory(target)
    directory, base = os.path.split(os.path.abspath(target))
    # The target's suffix last: writers that choose a format by it (images) see it.
    suffix = ".part" + os.path.splitext(base)[1]
    _remove_abandoned(directory, base, suffix)
    temporary = _new_file(directory, f".{base}.{os.getpid()}.", suffix)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 is not what an output needs
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def _remove_abandoned(directory: str, base: str, suffix: str) -> None:
    """Remove the temporaries for ``base`` whose writer is dead (killed mid-write)."""
    prefix = f".{base}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(suffix)):
            continue
        pid, dot, _token = entry[len(prefix) : len(entry) - len(suffix)].partition(".")
        if dot and pid.isdigit() and int(pid) > 0 and not process_alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass  # gone already, or not ours to remove


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
