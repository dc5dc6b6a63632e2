"""Read + validate pairwise JSONL: prefkit vs `datasets.load_dataset("json", ...)`.

Both read the same file of TRL-style preference pairs, generated here. prefkit parses every
line, type-checks every field into typed records, checks identical chosen/rejected and finds
duplicates (`prefkit.data.validate.validate_file`); datasets parses the file into Arrow (its
cache is written to a fresh temporary folder, as a first load does) and checks nothing.
They agree when both count the same number of records and prefkit finds them all valid.

Each run is its own process, so peak RSS is that run's own (VmHWM); with parallel workers
(prefkit's default on files over 32 MiB: one per core) the workers' peak RSS is added, which
overstates the total since forked workers share pages with the parent. prefkit also runs with
one process (``workers=1``) for the single-core figure. Variants are interleaved and the best of
``--repeats`` is kept. Memory flatness: prefkit's peak RSS at N
and at 10 N records (``rss_growth_10x`` = ratio).

    python bench/io_read_validate.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import PEAK_RSS, machine, run_child  # noqa: E402

PREFKIT = PEAK_RSS + """
import json, os, resource, time, sys
from prefkit.data.validate import validate_file, _parallel_workers
workers = int(sys.argv[2]) or None
start = time.perf_counter()
report = validate_file(sys.argv[1], workers=workers)
elapsed = time.perf_counter() - start
used = _parallel_workers(sys.argv[1], workers, False)
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if used > 1 else 0.0
print(json.dumps({"seconds": elapsed, "valid": report.valid, "invalid": report.invalid,
                  "rows": report.rows, "workers": used,
                  "peak_rss_mb": peak_rss_mb() + used * child}))
"""

PEER = PEAK_RSS + """
import json, time, sys, tempfile
import datasets
datasets.disable_progress_bars()
with tempfile.TemporaryDirectory() as cache:
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=cache)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "rows": ds.num_rows, "peak_rss_mb": peak_rss_mb()}))
"""

WORDS = (
    "sort", "add", "the", "numbers", "list", "answer", "is", "then", "first", "second",
    "please", "explain", "why", "order", "ascending", "descending", "result", "sum", "total",
    "value", "review", "lamp", "chair", "bright", "warm",
)


def make_file(path: Path, n: int, seed: int = 0) -> None:
    """n TRL preference pairs (~300 bytes a line), unique, deterministic."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            nums = " ".join(str(rng.randrange(100)) for _ in range(rng.randrange(4, 12)))
            prompt = f"Request {i}: sort the numbers {nums} and explain briefly."
            chosen = " ".join(sorted(nums.split(), key=int)) + " " + " ".join(
                rng.choice(WORDS) for _ in range(rng.randrange(5, 25)))
            rejected = nums + " " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 25)))
            fh.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
            fh.write("\n")


def make_10x(small: Path, big: Path) -> None:
    """Ten copies of ``small`` made unique by renumbering each line's request id."""
    head = b'{"prompt": "Request '
    with open(big, "wb") as out:
        for k in range(10):
            tag = head + f"{k}-".encode()
            with open(small, "rb") as fh:
                out.writelines(tag + line[len(head):] for line in fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k records (< 1 minute)")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.records or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 2)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="prefkit-bench-") as tmp:
        small, big = Path(tmp, "pairs.jsonl"), Path(tmp, "pairs10x.jsonl")
        make_file(small, n)
        ours, one, peer = None, None, None
        for _ in range(repeats):  # interleave the variants
            o = run_child(PREFKIT, str(small), "0")
            s = run_child(PREFKIT, str(small), "1")
            p = run_child(PEER, str(small))
            ours = o if ours is None or o["seconds"] < ours["seconds"] else ours
            one = s if one is None or s["seconds"] < one["seconds"] else one
            peer = p if peer is None or p["seconds"] < peer["seconds"] else peer
        make_10x(small, big)
        ours10 = run_child(PREFKIT, str(big), "0")
        peer10 = run_child(PEER, str(big))
        size_mb = os.path.getsize(small) / 2**20
    result = {
        "bench": "io_read_validate",
        "records": n,
        "file_mb": round(size_mb, 1),
        "prefkit": {
            "records_per_s": round(n / ours["seconds"]),
            "seconds": round(ours["seconds"], 3),
            "peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "peak_rss_mb_10x": round(ours10["peak_rss_mb"], 1),
            "records_per_s_10x": round(10 * n / ours10["seconds"]),
            "rss_growth_10x": round(ours10["peak_rss_mb"] / ours["peak_rss_mb"], 2),
            "workers": ours["workers"],
            "records_per_s_1_process": round(n / one["seconds"]),
            "peak_rss_mb_1_process": round(one["peak_rss_mb"], 1),
            "checks": "JSON, UTF-8, every field typed, identical pairs, duplicates",
        },
        "peer": {
            "name": "datasets.load_dataset('json') (no validation)",
            "records_per_s": round(n / peer["seconds"]),
            "seconds": round(peer["seconds"], 3),
            "peak_rss_mb": round(peer["peak_rss_mb"], 1),
            "peak_rss_mb_10x": round(peer10["peak_rss_mb"], 1),
            "records_per_s_10x": round(10 * n / peer10["seconds"]),
            "rss_growth_10x": round(peer10["peak_rss_mb"] / peer["peak_rss_mb"], 2),
        },
        "ratio": round(peer["seconds"] / ours["seconds"], 2),
        "ratio_1_process": round(peer["seconds"] / one["seconds"], 2),
        "agree": (ours["valid"] == n and ours["invalid"] == 0 and peer["rows"] == n
                  and one["valid"] == n
                  and ours10["valid"] == 10 * n and peer10["rows"] == 10 * n),
        "goal": {"records_per_s": 200_000, "rss_growth_10x_max": 1.25},
        "machine": info,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
