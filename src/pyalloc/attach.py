"""The attach table: which processes have a shared segment or heap file open.

A segment outlives the processes that use it, and a process killed with
SIGKILL runs no code on its way out. Whatever a process keeps in a segment on
its own behalf (a lock it holds, a cache of blocks) must therefore be found
and taken back by someone else. The attach table is where a process says "I
am here": one slot per attached process, claimed when it attaches and freed
when it closes. A slot whose process is gone is *dead*; whoever notices
recovers what the slot held, then frees it.

Layout (8-byte words from ``first``)::

    first + 0               MAGIC
    first + 1               boot: the boot id of the machine that formatted
                            or last claimed in the table (see below)
    first + 2               slots
    first + 3               slot_words: payload words per slot
    first + 4 + s * stride  slot s: pid, start, payload[slot_words]
                            (stride = 2 + slot_words)

``pid`` is 0 in a free slot. ``start`` is the process's start time in clock
ticks after boot (field 22 of ``/proc/PID/stat``), so that a pid the kernel
has given to a new process is not taken for the one that died. A process is
dead when ``/proc/PID/stat`` is gone, says it is a zombie (a killed child its
parent has not yet waited for: its mappings are already gone), or gives
another start time.

A pid and a start time mean nothing on another boot: a heap file reopened
after the machine restarted, or a segment copied from elsewhere, may name a
process that happens to be alive now. So the table records the boot id
(``/proc/sys/kernel/random/boot_id``), and when it is not this boot's, every
slot is dead.

Every write of a slot's ``pid`` is made holding the table's own lock: an
open-file-description lock (``F_OFD_SETLKW``) on the table's first word in
the segment's file. Attaching and closing are rare, so a system call there
costs nothing that matters, and the kernel drops a dead holder's lock by
itself. A record lock of that kind is independent of ``flock`` and is owned by
the open file, not the process (a classic POSIX record lock would be dropped
when the process closed *any* descriptor of the file). The table's lock is
innermost: nothing else is taken while it is held, and the ``recover``
callbacks run under it.

A slot is claimed by writing ``start`` before ``pid`` and freed by writing
``pid`` = 0 after its owner has emptied its payload: a reader that sees a
pid sees its start time, and a payload is never reachable through a free
slot.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections.abc import Callable
from typing import Final

from .errors import HeapCorruptionError, HeapError
from .regions import Words

MAGIC: Final = 0x7461_7474_6163_6831  # "attach1", big-endian, in the table's first word
HEADER_WORDS: Final = 4
SLOT_HEADER_WORDS: Final = 2  # pid, start time

__all__ = ["AttachTable", "AttachTableFullError", "boot_id", "process_start", "table_words"]


class AttachTableFullError(HeapError):
    """Every slot of the attach table belongs to a live process."""


def table_words(slots: int, slot_words: int) -> int:
    """How many 8-byte words a table of ``slots`` slots of ``slot_words`` payload words takes."""
    return HEADER_WORDS + slots * (SLOT_HEADER_WORDS + slot_words)


def process_start(pid: int) -> int:
    """Start time of process ``pid`` in clock ticks after boot; 0 if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: fields are
    # counted from the last ')'. After it come state (field 3) ... starttime (22).
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return 0
    return int(fields[19])


_boot_id: int | None = None


def boot_id() -> int:
    """This boot's id as a 64-bit number (never 0)."""
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                text = f.read().strip().replace("-", "")
            _boot_id = int(text[:16], 16) or 1
        except (OSError, ValueError):
            _boot_id = 1  # no boot id to read: every boot looks the same
    return _boot_id


# The record lock excludes open files, not threads: two threads of one process using
# the same descriptor would both get it. This lock keeps them apart.
_threads = threading.Lock()


class AttachTable:
    """The attach table at word ``first`` of ``words``, locked through ``fd``.

    ``words`` is the region as 8-byte words (anything indexable by word and
    assignable); ``fd`` an open descriptor of the segment or file, mapped at
    offset 0 (the lock is taken on the table's bytes in it).
    """

    def __init__(self, words: Words, first: int, slots: int, slot_words: int, fd: int) -> None:
        if slots <= 0 or slot_words < 0:
            raise ValueError("an attach table needs at least one slot")
        self.words = words
        self.first = first
        self.slots = slots
        self.slot_words = slot_words
        self.stride = SLOT_HEADER_WORDS + slot_words
        self.fd = fd

    # -- words of the table ----------------------------------------------------------

    def _pid_word(self, slot: int) -> int:
        return self.first + HEADER_WORDS + slot * self.stride

    def payload(self, slot: int) -> int:
        """Word index of the first payload word of ``slot``."""
        return self._pid_word(slot) + SLOT_HEADER_WORDS

    def pid(self, slot: int) -> int:
        return self.words[self._pid_word(slot)]

    def format(self) -> None:
        """Write an empty table (at create, before anyone else can see the segment)."""
        words = self.words
        for i in range(table_words(self.slots, self.slot_words)):
            words[self.first + i] = 0
        words[self.first + 1] = boot_id()
        words[self.first + 2] = self.slots
        words[self.first + 3] = self.slot_words
        words[self.first] = MAGIC

    def verify(self) -> None:
        """HeapCorruptionError unless the header describes this table."""
        words, first = self.words, self.first
        if words[first] != MAGIC:
            raise HeapCorruptionError("the attach table's magic number is wrong")
        if words[first + 2] != self.slots or words[first + 3] != self.slot_words:
            raise HeapCorruptionError(
                f"the attach table says {words[first + 2]} slots of {words[first + 3]} words; "
                f"expected {self.slots} of {self.slot_words}"
            )

    # -- who is there ----------------------------------------------------------------

    def _other_boot(self) -> bool:
        return self.words[self.first + 1] != boot_id()

    def is_dead(self, slot: int) -> bool:
        """Whether ``slot`` is claimed by a process that no longer runs."""
        word = self._pid_word(slot)
        pid = self.words[word]
        if pid == 0:
            return False
        if self._other_boot():
            return True
        return process_start(pid) != self.words[word + 1]

    def attached(self) -> list[int]:
        """The pids of the live processes attached, in slot order."""
        return [self.pid(s) for s in range(self.slots) if self.pid(s) and not self.is_dead(s)]

    # -- claiming and freeing, under the table's lock ---------------------------------

    def locked(self) -> _TableLock:
        """The table's lock, for a caller that must act while no slot can be
        claimed or freed (re-initializing what no live process may hold)."""
        return _TableLock(self.fd, self.first * 8)

    def claim(self, recover: Callable[[int], None] | None = None) -> tuple[int, bool]:
        """Claim a slot for this process: ``(slot, alone)``.

        ``alone`` is true when no other live process is attached: the caller
        may then re-initialize what the dead left behind (a lock whose owner
        died on another boot is never reported as dead by the kernel). Dead
        slots are reaped first (``recover(slot)`` for each).
        """
        self.verify()
        with self.locked():
            self._reap_locked(recover)
            words = self.words
            # The boot is recorded here, not at format only: after a reboot the
            # reap above freed every slot, and the table now belongs to this boot.
            words[self.first + 1] = boot_id()
            me = os.getpid()
            start = process_start(me)
            free = -1
            alone = True
            for slot in range(self.slots):
                if self.pid(slot) == 0:
                    if free < 0:
                        free = slot
                else:
                    alone = False
            if free < 0:
                raise AttachTableFullError(
                    f"{self.slots} processes are attached already; close one first"
                )
            word = self._pid_word(free)
            words[word + 1] = start
            words[word] = me  # last: a visible pid has its start time
            return free, alone

    def release(self, slot: int) -> None:
        """Free ``slot``, this process's; its payload must be empty already."""
        word = self._pid_word(slot)
        with self.locked():
            if self.words[word] == os.getpid():
                self.words[word] = 0

    def reap(self, recover: Callable[[int], None] | None = None) -> int:
        """Recover and free every dead slot; return how many there were."""
        with self.locked():
            return self._reap_locked(recover)

    def _reap_locked(self, recover: Callable[[int], None] | None) -> int:
        dead = [slot for slot in range(self.slots) if self.is_dead(slot)]
        for slot in dead:
            if recover is not None:
                recover(slot)
            self.words[self._pid_word(slot)] = 0
        return len(dead)


class _TableLock:
    """A record lock on the table's first word, with this process's threads kept apart.

    Each use opens the file anew: a descriptor inherited across ``fork`` shares
    its open file, hence its locks, with the parent, and would exclude nothing.
    """

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset
        self.own = -1

    def __enter__(self) -> None:
        _threads.acquire()
        try:
            self.own = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
            # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for an OFD lock)
            request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, self.offset, 8, 0)
            fcntl.fcntl(self.own, fcntl.F_OFD_SETLKW, request)
        except BaseException:
            self._close()
            raise

    def __exit__(self, *exc: object) -> None:
        self._close()  # closing the open file drops its lock

    def _close(self) -> None:
        try:
            if self.own >= 0:
                os.close(self.own)
                self.own = -1
        finally:
            _threads.release()
