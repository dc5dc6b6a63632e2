"""Freed memory kept in the process for CPU training (glibc ``malloc``).

Every step of a training loop on the CPU allocates and frees the same large temporaries
(activations, LM-head chunks, gradients, a rollout's caches: ~160 MB a step on the online bench,
bench/online_vs_trl.py). glibc's ``malloc`` serves a block above its *mmap threshold* (128 KiB at
start, raised as such blocks are freed, at most 32 MiB) with a mapping of its own that ``free``
unmaps, and gives the top of its heap back to the OS once more than the *trim threshold* is free
there. Either way the next step's block lands on fresh pages, and touching each 4 KiB page is a
page fault in which the kernel zeroes it: ~30,000-40,000 faults a step on the online bench, at
~1.8 us each in the VM this project measures on (setting the mmap threshold to 128 KiB made
~280,000 faults a step and the step ~0.45 s slower) -- some 50-70 ms of a ~1 s step.

:func:`keep_freed_memory` raises both thresholds through ``mallopt``: blocks up to 32 MiB (the
largest mmap threshold glibc accepts) come from the heap, and up to 1 GiB of freed heap memory
stays in the process for the next step (the faults above drop to a few hundred a step). It is
what ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` or an
allocator such as jemalloc does, without restarting the process. It changes no value the process
computes. The cost: the resident memory of the process no longer falls back between steps (its
peak stays the same: 1,011-1,027 vs 1,024-1,034 MB on the online bench), and the setting holds
for the rest of the process -- :class:`prefkit.train.config.LoopConfig`'s
``keep_freed_memory=False`` leaves ``malloc`` as it is.
"""

from __future__ import annotations

import ctypes
import functools
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size come from the heap (glibc's own ceiling for the threshold on 64-bit
systems: a larger value is refused)."""

TRIM_THRESHOLD = 1 << 30
"""Freed memory at the top of the heap is returned to the OS only beyond this much."""

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory() -> str | None:
    """Set glibc ``malloc``'s mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to
    :data:`TRIM_THRESHOLD` for this process (module docs), once: later calls return the first
    call's answer. Returns None when set, else why not (not glibc, no ``mallopt``, or
    ``mallopt`` refusing a value)."""
    return _set_thresholds()


def _set_thresholds() -> str | None:
    libc_name = platform.libc_ver()[0]
    if platform.system() != "Linux" or libc_name != "glibc":
        return f"the C library here is not glibc ({platform.system()} " \
               f"{libc_name or 'unknown libc'})"
    try:  # the process's own symbols: glibc is loaded already (no library search)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as err:
        return f"glibc's mallopt is not reachable ({err})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either fixes both (no more dynamic adjustment)
    for name, param, value in (("mmap", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                               ("trim", _M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) != 1:
            return f"mallopt refused the {name} threshold {value}"
    return None
