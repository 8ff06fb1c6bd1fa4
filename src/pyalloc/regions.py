"""Where a heap's bytes live.

A region is a fixed-size, page-aligned byte range that is reserved up front
and committed by the OS as it is touched:

- ``AnonymousRegion``: a private anonymous mapping (``MAP_NORESERVE``), the
  memory of a private heap;
- ``FileRegion``: a file mapped shared: every process that maps the file
  sees the same bytes, and they stay in the file after the last one unmaps it;
- ``SharedRegion``: a named POSIX shared-memory object, which on Linux is a
  ``FileRegion`` over a file of ``/dev/shm`` (memory, not disk), that any
  process may attach to by name.

Each exposes ``buf`` (the mmap), ``words`` (the same bytes as native 8-byte
unsigned words) and ``release(start, end)``, which hands whole pages inside
``[start, end)`` back to the OS; they read as zeros when touched again.
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
import re
import secrets
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

from .units import as_int

PAGE_SIZE = mmap.PAGESIZE
# Reserve without swap accounting. Python's mmap names the flag from 3.12 on;
# before that, its value in Linux's generic headers (x86, Arm, RISC-V).
_GENERIC_LINUX = sys.platform == "linux" and platform.machine() in (
    "x86_64", "i686", "aarch64", "armv7l", "riscv64",
)  # fmt: skip
MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE", 0x4000 if _GENERIC_LINUX else 0)

_SHM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
SHM_DIR = "/dev/shm"
_SHM_DIR = SHM_DIR


class Words(Protocol):
    """Indexable 8-byte words: a region's ``words`` or a wrapper around them."""

    def __getitem__(self, index: int, /) -> int: ...

    def __setitem__(self, index: int, value: int, /) -> None: ...


def storage_report(path: str) -> str:
    """What the filesystem holding ``path`` has free, for a message."""
    directory = os.path.dirname(path) or "."
    try:
        st = os.statvfs(directory)
    except OSError:
        return f"the filesystem of {directory} is full"
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    hint = ""
    if path.startswith(_SHM_DIR):
        hint = " (in a container, --shm-size raises /dev/shm's size)"
    return f"the filesystem of {directory} has {free >> 10} KiB free of {total >> 10} KiB{hint}"


def allocate_blocks(fd: int, start: int, end: int, path: str, what: str) -> None:
    """``posix_fallocate`` over ``[start, end)`` of the file ``fd``; ENOSPC (or
    EDQUOT) becomes MemoryError("cannot WHAT: " and what the filesystem has free)."""
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise MemoryError(f"cannot {what}: {storage_report(path)}") from None


# -- build, then link ------------------------------------------------------------------
# A heap or pool file is built under a hidden temporary name beside its final
# one and linked to that name only when complete (link is atomic and refuses
# an existing name), so no process ever opens a half-made one. A creator
# killed mid-way leaves its temporary; the name records the creator's pid,
# and the next create in that directory removes those whose creator is dead.

BUILDING_SUFFIX = ".pyalloc-new"


def building_path(path: str) -> str:
    """A temporary name beside ``path`` for a file being built by this process."""
    directory, base = os.path.split(path)
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return os.path.join(directory, f".{base}.{token}{BUILDING_SUFFIX}")


def _builder_pid(entry: str) -> int:
    """The creator's pid in a temporary's name, or -1 if it is not one."""
    if not (entry.startswith(".") and entry.endswith(BUILDING_SUFFIX)):
        return -1
    parts = entry[: -len(BUILDING_SUFFIX)].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return -1
    return int(parts[1])


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def abandoned_builds(directory: str) -> list[str]:
    """The temporaries in ``directory`` whose creator is dead (a create killed mid-way)."""
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return []
    found = []
    for entry in sorted(entries):
        pid = _builder_pid(entry)
        if pid > 0 and pid != os.getpid() and not process_alive(pid):
            found.append(os.path.join(directory, entry))
    return found


def remove_abandoned_builds(directory: str) -> None:
    for path in abandoned_builds(directory):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # another create removed it first


class _Closable(Protocol):
    def close(self) -> None: ...


_R = TypeVar("_R", bound=_Closable)


def build_then_link(
    path: str,
    size: int,
    build: Callable[[int], _R],
    taken: str,
    finish: Callable[[_R, int], None] | None = None,
) -> _R:
    """Make the file ``path`` whole under a temporary name, then give it the name.

    ``build(fd)`` maps and writes the new file (``size`` bytes, sparse) and
    returns its region; ``finish(region, fd)``, if given, runs before the
    link (a durable file syncs there). The link is atomic and refuses an
    existing name (FileExistsError: ``taken`` says what exists), so nobody
    ever opens a half-made file, and a builder killed mid-way leaves only a
    temporary, which the next build in that directory removes. On any
    failure the region is closed and nothing is left.
    """
    directory = os.path.dirname(path)
    remove_abandoned_builds(directory)
    building = building_path(path)
    fd = os.open(building, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    region: _R | None = None
    try:
        os.ftruncate(fd, size)
        region = build(fd)
        if finish is not None:
            finish(region, fd)
        try:
            os.link(building, path)
        except FileExistsError:
            raise FileExistsError(f"{taken} already exists") from None
    except BaseException:
        if region is not None:
            region.close()
        raise
    finally:
        os.close(fd)
        os.unlink(building)
    return region


def fsync_directory(directory: str) -> None:
    """Make a new name in ``directory`` durable."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def page_round_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _check_size(size: object) -> int:
    size = as_int(size, "region size")
    if size <= 0:
        raise ValueError(f"region size must be positive, got {size}")
    return page_round_up(size)


class Region:
    """A mapped byte range. Subclasses decide where the bytes come from."""

    name: str | None = None

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.words = memoryview(buf).cast("Q")
        self.closed = False

    def release(self, start: int, end: int) -> None:
        """Give the whole pages inside ``[start, end)`` back to the OS."""
        lo = page_round_up(start)
        hi = end & ~(PAGE_SIZE - 1)
        if hi > lo:
            self._discard(lo, hi - lo)

    def _discard(self, start: int, length: int) -> None:
        self.buf.madvise(mmap.MADV_DONTNEED, start, length)

    # Storage behind the pages: anonymous memory needs no reservation (it is
    # MAP_NORESERVE, committed as touched); a file's blocks must exist before
    # a page of it is written, or the write is a SIGBUS when the filesystem
    # is full.
    needs_reserve = False

    def reserve(self, start: int, end: int) -> None:
        """Make sure storage backs ``[start, end)``; MemoryError if there is none."""

    def close(self) -> None:
        """Unmap the region. Views handed out earlier must be released first."""
        if self.closed:
            return
        self.words.release()
        try:
            self.buf.close()
        except BufferError:
            # Someone still holds a view; restore our own so the region stays usable.
            self.words = memoryview(self.buf).cast("Q")
            raise
        self.closed = True


class AnonymousRegion(Region):
    """Private memory: an anonymous mapping reserved without swap accounting."""

    def __init__(self, size: int) -> None:
        size = _check_size(size)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        try:
            buf = mmap.mmap(-1, size, flags=flags)
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            raise MemoryError(f"cannot reserve {size} bytes of address space") from None
        super().__init__(buf)


def _shm_path(name: str) -> str:
    if not isinstance(name, str) or not _SHM_NAME.match(name) or name.startswith("."):
        raise ValueError(
            "shared-memory name must be 1-200 letters, digits, '_', '-' or '.',"
            f" not starting with '.', got {name!r}"
        )
    return os.path.join(_SHM_DIR, name)


class FileRegion(Region):
    """A file mapped shared (``MAP_SHARED``), made from the mapping of an open file.

    Stores reach the file through the page cache: other processes that map
    it see them at once, and the kernel writes them to the disk later, or
    when ``flush()`` asks.
    """

    def __init__(self, path: str, buf: mmap.mmap, name: str | None = None) -> None:
        super().__init__(buf)
        self.path = path
        self.name = path if name is None else name
        self._punch = getattr(mmap, "MADV_REMOVE", None)

    def _discard(self, start: int, length: int) -> None:
        # MADV_REMOVE frees the file's blocks (DONTNEED would only unmap them
        # from this process). A filesystem that cannot punch holes keeps them:
        # nothing relies on released pages reading as zeros.
        if self._punch is not None:
            try:
                self.buf.madvise(self._punch, start, length)
            except OSError:
                self._punch = None

    def flush(self) -> None:
        """Write the mapping's dirty pages to the file and wait (``msync(MS_SYNC)``)."""
        self.buf.flush()

    needs_reserve = True
    reserve_fd = -1  # an open file of the region's file, set by whoever opened it

    def reserve(self, start: int, end: int) -> None:
        """Allocate the file's blocks for ``[start, end)`` (``posix_fallocate``).

        ENOSPC (or EDQUOT) becomes MemoryError naming the filesystem and what
        it has free; nothing is written to the mapping either way.
        """
        allocate_blocks(self.reserve_fd, start, end, self.path, f"grow the heap to {end} bytes")


class SharedRegion(FileRegion):
    """A named POSIX shared-memory object mapped shared.

    On Linux, POSIX shared-memory objects are the files of ``/dev/shm``; this
    class opens them there so that no resource tracker unlinks a segment
    behind the program's back when one of its users exits.
    """

    def __init__(self, name: str, buf: mmap.mmap) -> None:
        super().__init__(_shm_path(name), buf, name)

    @classmethod
    def create(
        cls,
        name: str,
        size: int,
        fill: Callable[[SharedRegion], None] | None = None,
        *,
        reserve_all: bool = False,
    ) -> SharedRegion:
        """A new segment ``name`` of ``size`` bytes, written by ``fill`` before it
        gets its name: built under a temporary name and linked when complete,
        so a process never attaches to a half-made segment, and a creator
        killed mid-way leaves only a temporary that the next create removes.
        FileExistsError if the name is taken.

        ``reserve_all`` allocates every block of the segment first, for a
        segment that never grows: MemoryError, leaving nothing behind, when
        the filesystem cannot hold it (its pages would otherwise be SIGBUS
        the first time one is written)."""
        path = _shm_path(name)
        size = _check_size(size)

        def build(fd: int) -> SharedRegion:
            if reserve_all:
                allocate_blocks(fd, 0, size, path, f"make a segment of {size} bytes")
            region = cls(name, mmap.mmap(fd, size, flags=mmap.MAP_SHARED))
            if fill is not None:
                try:
                    fill(region)
                except BaseException:
                    region.close()
                    raise
            return region

        return build_then_link(path, size, build, f"shared-memory segment {name!r}")

    @classmethod
    def attach(cls, name: str) -> SharedRegion:
        path = _shm_path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise FileNotFoundError(f"no shared-memory segment named {name!r}") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"shared-memory segment {name!r} is empty")
            if size % 8:  # every region is words; this one is not ours
                raise ValueError(
                    f"shared-memory segment {name!r} is not a pyalloc segment "
                    f"({size} bytes, not a multiple of 8)"
                )
            buf = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        return cls(name, buf)

    def unlink(self) -> None:
        """Remove the name; the memory goes away when the last user unmaps it."""
        unlink_shared(self.name or "")

    @staticmethod
    def exists(name: str) -> bool:
        return os.path.exists(_shm_path(name))


def unlink_shared(name: str) -> None:
    try:
        os.unlink(_shm_path(name))
    except FileNotFoundError:
        raise FileNotFoundError(f"no shared-memory segment named {name!r}") from None


def list_shared() -> list[str]:
    """Names of the POSIX shared-memory objects on this machine."""
    try:
        return sorted(os.listdir(_SHM_DIR))
    except FileNotFoundError:
        return []
