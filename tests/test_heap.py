"""prefkit.train.heap: freed memory kept in the process (glibc malloc). fit() calling it on the
CPU is tested in tests/test_train_loop.py."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Ten 8 MiB blocks allocated, written and freed, four times over, in a fresh interpreter (the
# setting holds for a whole process, so the pytest process cannot show the "before"): the page
# faults per round, first under glibc's starting thresholds (128 KiB each, fixed: every block
# is a mapping of its own, unmapped when freed; glibc's own dynamic thresholds end up there or
# partly reuse the blocks, depending on what the interpreter did before), then after
# keep_freed_memory().
_CHURN = textwrap.dedent("""
    import ctypes, json, resource, torch
    from prefkit.train.heap import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, keep_freed_memory

    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1
    assert mallopt(_M_TRIM_THRESHOLD, 128 * 1024) == 1

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def churn():
        blocks = [torch.ones(2 << 20) for _ in range(10)]
        del blocks

    def per_round():
        churn()
        start = faults()
        for _ in range(4):
            churn()
        return (faults() - start) / 4

    before = per_round()
    why_not = keep_freed_memory()
    again = keep_freed_memory()
    print(json.dumps({"before": before, "why_not": why_not, "again": again,
                      "after": per_round()}))
""")


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc malloc's")
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", _CHURN], capture_output=True, text=True,
                         check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["why_not"] is None and got["again"] is None
    pages = 10 * (8 << 20) // 4096  # 20,480 pages of 4 KiB a round
    # before: every round lands on fresh pages; after: on the same heap memory again
    assert got["before"] > 0.9 * pages, got
    assert got["after"] < pages / 10, got


def test_keep_freed_memory_answers_once(monkeypatch):
    import prefkit.train.heap as heap

    calls = []
    monkeypatch.setattr(heap, "_set_thresholds", lambda: calls.append(1) or "no glibc here")
    heap.keep_freed_memory.cache_clear()
    try:
        assert heap.keep_freed_memory() == "no glibc here"
        assert heap.keep_freed_memory() == "no glibc here"
        assert calls == [1]
    finally:  # the next caller in this process gets the real answer
        heap.keep_freed_memory.cache_clear()
