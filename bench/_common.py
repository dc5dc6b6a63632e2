"""Shared helpers for the side-by-side benchmarks (see bench/README.md for the contract)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time


def matmul_gflops(n: int = 1024, repeats: int = 5) -> dict:
    """Measured float32 matmul throughput on this machine, in GFLOP/s (best of ``repeats``)."""
    try:
        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
        lib = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        import numpy as np

        a = np.random.rand(n, n).astype(np.float32)
        b = np.random.rand(n, n).astype(np.float32)
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        lib = f"numpy {np.__version__}"
    return {"matmul_float32_gflops": round(2 * n**3 / best / 1e9, 1), "matmul_lib": lib}


def matmul_peak(dtype_name: str = "float32", threads: int = 2, n: int = 2048,
                repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n``-cube torch matmul in ``dtype_name`` on
    ``threads`` threads (the peak training throughput is reported against)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **matmul_gflops(),
    }


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh Python process (so peak RSS is that run's own) and return the JSON
    object it prints last on stdout."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Peak RSS of the child itself: VmHWM (ru_maxrss would carry over the parent's peak through
# fork + exec on Linux).
PEAK_RSS = (
    "def peak_rss_mb():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1]) / 1024\n"
    "    import resource\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
)
