"""The process's memory: how much the system can still give, and glibc's malloc told to keep what is freed.

A float64 reference of a batch of images allocates and frees tensors of tens of megabytes many times per
backward.  glibc serves each one above 32 MB with a fresh ``mmap`` and returns it with ``munmap``: every page
is faulted in again, every time.  On a conv + batch-norm tutorial at batch 256 that was two thirds of the
run's time (53 s of system time against 34 s of computing).  `keep_freed_memory` turns that off for the
duration of a run (``mallopt``: no mmap, trim only above 2 GiB), and puts glibc's default values back after:
what the script computes is unchanged, only where its memory comes from.  Elsewhere (not glibc) it does
nothing.  Any ``mallopt`` of these also ends glibc's *dynamic* mmap threshold for the rest of the process, which
nothing can restore: so only the command line (`gradcheck-sym run`, a process that ends with the run) uses it,
never `run_script` in the caller's process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import time
from typing import Iterator

from ..ops.core import set_relief

__all__ = ["memory_available", "keep_freed_memory", "held_free", "release_held", "release_if_short", "relieve",
           "as_by_default", "RELEASE_ABOVE", "PRESSURE"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults (malloc/malloc.c)
_KEEP_TRIM = (1 << 31) - 1  # (mallopt takes a C int: 2 GiB is the most it can say)
_keeping = 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "mallinfo2") else None
    except OSError:
        return None


_LIBC = _libc()
if _LIBC is not None:
    _LIBC.mallinfo2.restype = _Mallinfo2
    _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # (a value past a C int raises, never wraps to 0)


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """While in it, glibc's malloc keeps freed memory for reuse (see the module docstring)."""
    global _keeping
    if _LIBC is None:
        yield
        return
    if _keeping == 0:
        _LIBC.mallopt(_M_MMAP_MAX, 0)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM)
        set_relief(relieve)
    _keeping += 1
    try:
        yield
    finally:
        _keeping -= 1
        if _keeping == 0:
            set_relief(None)
            _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            _LIBC.malloc_trim(0)  # what was kept goes back to the system


def as_by_default() -> None:
    """In a forked copy of the process (a custom Function run again, `judge.isolated`): glibc's default malloc
    again, whose large blocks go back to the system when freed (the copy is short, and the parent's memory
    shares the system with it)."""
    global _keeping
    if _LIBC is None or _keeping == 0:
        return
    _keeping = 0
    set_relief(None)
    _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)


def held_free() -> int:
    """Bytes malloc holds freed, ready for reuse, while `keep_freed_memory` is on (else 0)."""
    if _LIBC is None or _keeping == 0:
        return 0
    try:
        return int(_LIBC.mallinfo2().fordblks)
    except Exception:  # noqa: BLE001 - unknown: counted as none
        return 0


# Above this many bytes held freed, `release_held` gives them back.
RELEASE_ABOVE = 1 << 30


def release_held(above: int = RELEASE_ABOVE) -> bool:
    """Give what malloc holds freed back to the system (``malloc_trim``, which also releases the free pages between
    chunks in use) if it holds more than `above` bytes, while `keep_freed_memory` is on; whether it did.

    Kept, it is counted as available, but it is fragmented: at a conv + batch-norm tutorial's batch of 1,024 the
    process held 7 GB freed beside 12.7 GB in use when a new 600 MB tensor found no room in it, and the system was
    near its end.  Called by the memory guard where the system's own count is short, and between the phases of a
    large backward where the system has less left than the process uses (`release_if_short`): each page given back
    is faulted in afresh, the cost `keep_freed_memory` saves, paid only where memory is at stake."""
    if _LIBC is None or _keeping == 0:
        return False
    try:
        if int(_LIBC.mallinfo2().fordblks) <= above:
            return False
        _LIBC.malloc_trim(0)
        return True
    except Exception:  # noqa: BLE001 - an optimisation: not done
        return False


# When the system has less than this left (MemAvailable, or a quarter of its memory where that is less), what
# malloc holds freed goes back to it (`relieve`).  (4 GB let a conv + batch-norm tutorial at batch 2,048 come within
# 1.4 GB of the end: a primitive allocates several of its 600 MB tensors between two looks, and the forked copy of a
# replay allocates as it likes.)
PRESSURE = 6 << 30
RELIEVE_ABOVE = 64 << 20  # (what `relieve` gives back: any amount worth a trim)
_LOOK_EVERY = 0.05  # seconds between two looks of `relieve` (a look reads /proc/meminfo: some 20 microseconds)
_next_look = 0.0
_total: list[int | None] = []


def relieve() -> bool:
    """Give what malloc holds freed back to the system if the system runs low (called before every primitive the
    reference applies while `keep_freed_memory` is on, by `ops.core.bind`; it looks at most every 50 ms).

    Kept freed memory is fragmented: at a conv + batch-norm tutorial's batch of 1,024 the bounds' sweep had 6.5 GB
    of tensors alive and 8.6 GB held freed beside them; given back only where memory is short, the run elsewhere
    keeps what `keep_freed_memory` saves."""
    global _next_look
    now = time.monotonic()
    if now < _next_look or _keeping == 0:
        return False
    _next_look = now + _LOOK_EVERY
    available = _meminfo("MemAvailable:")
    if available is None or available >= _pressure_line():
        return False
    return release_held(above=RELIEVE_ABOVE)


def release_if_short(above: int = RELEASE_ABOVE) -> bool:
    """`release_held`, only where the system has less memory left than the process has in use (or less than
    `relieve`'s pressure line): the phase after a sweep needs about as much again, and what malloc keeps is reused
    in place.  Given back where it was not short, every page is faulted in again by the next phase: at a conv +
    batch-norm tutorial's batch of 1,024, 6.3 million faults and 28 s of system time of a 118 s run."""
    if _LIBC is None or _keeping == 0:
        return False
    try:
        in_use = int(_LIBC.mallinfo2().uordblks)
    except Exception:  # noqa: BLE001 - unknown: given back, as before
        return release_held(above)
    available = _meminfo("MemAvailable:")
    if available is not None and available >= max(in_use, _pressure_line()):
        return False
    return release_held(above)


def _pressure_line() -> int:
    if not _total:
        _total.append(_meminfo("MemTotal:"))
    total = _total[0]
    return PRESSURE if total is None else min(PRESSURE, total // 4)


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_available(count_held: bool = True) -> int | None:
    """The memory the system can still give, in bytes (Linux's MemAvailable; psutil's elsewhere), plus what
    malloc holds freed for us (`count_held`: not right after `release_held`, whose pages the system has), or None."""
    held = held_free() if count_held else 0
    available = _meminfo("MemAvailable:")
    if available is not None:
        return available + held
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available) + held
    except Exception:  # noqa: BLE001 - no way to know: no guard
        return None
