"""The race both arena benches run: prefkit's CLI and LMArena's ``arena-rank`` end to end on the
same Parquet file, each in a fresh process (start, read, aggregate, fit, intervals), for both
interval methods; then the agreement checks (not timed).

Agreement, per interval method:

- ratings: prefkit's against arena-rank's converged optimum (its own L-BFGS with tight
  tolerances; its default tolerances stop up to ~0.01 Elo short, reported alongside);
- sandwich intervals: deterministic, so the widths are compared model by model;
- bootstrap intervals: arena-rank's resamples (same JAX draws and seed) refitted by prefkit give
  arena-rank's bounds (``_arena_same_draws.py``); the end-to-end runs use different random
  streams, so their widths agree only within resampling noise (median ratio reported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
GOAL = {"elo_diff_max": 0.01, "ci_width_rel_diff_max": 0.02, "ratio_min": 10}


def _run(cmd: list[str]) -> tuple[float, dict]:
    """Wall seconds of a fresh process (start to exit) and the JSON object it printed last."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def _prefkit_cmd() -> list[str]:
    script = Path(sys.executable).parent / "prefkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefkit.cli"]


def _prefkit_board(out: dict, style: bool) -> dict[str, tuple[float, float, float]]:
    rows = out["style_control"]["leaderboard"] if style else out["leaderboard"]
    return {r["model"]: (r["rating"], r["ci_low"], r["ci_high"]) for r in rows}


def _peer_board(out: dict) -> dict[str, tuple[float, float, float]]:
    return {m: (r, lo, hi) for m, r, lo, hi in zip(out["models"], out["rating"], out["lower"],
                                                   out["upper"], strict=True)}


def _width_rel_diff(ours: dict, theirs: dict) -> float:
    return max(abs((ours[m][2] - ours[m][1]) / (theirs[m][2] - theirs[m][1]) - 1)
               for m in theirs)


REPEATS = {"sandwich": 5, "bootstrap": 1}
"""Timed runs per side: the median counts. Runs alternate prefkit, arena-rank, prefkit, ...
On this kind of machine (a VM whose host reclaims freed memory) the first process after a
pause pays ~1 s of extra page faults whatever it runs, more than prefkit's whole sandwich run
takes; alternating repeated runs gives both sides the same conditions. The bootstrap runs
(tens of seconds to minutes) run once each."""


def race(path: Path, *, rounds: int, style: bool, repeats: dict[str, int] | None = None
         ) -> dict:
    """Both interval methods, prefkit and arena-rank alternating (:data:`REPEATS` runs each,
    the median time counts); then the checks."""
    runs = {}
    flag = ["--style"] if style else []
    same_draws = None
    for ci in ("sandwich", "bootstrap"):
        cmd = [*_prefkit_cmd(), "arena", "rank", str(path), "--ci", ci, "--bootstrap",
               str(rounds), "--json"] + (["--style-control"] if style else [])
        peer_cmd = [sys.executable, str(HERE / "_arena_rank_child.py"), str(path), "--ci", ci,
                    "--rounds", str(rounds), *flag]
        times_ours, times_peer = [], []
        for _ in range((repeats or REPEATS)[ci]):
            t_ours, ours = _run(cmd)
            t_peer, peer = _run(peer_cmd)
            times_ours.append(t_ours)
            times_peer.append(t_peer)
        runs[ci] = {"ours": (float(np.median(times_ours)), _prefkit_board(ours, style), ours),
                    "peer": (float(np.median(times_peer)), _peer_board(peer), peer),
                    "times": {"prefkit": [round(t, 3) for t in times_ours],
                              "peer": [round(t, 3) for t in times_peer]}}
    _, same_draws = _run([sys.executable, str(HERE / "_arena_same_draws.py"), str(path),
                          "--rounds", str(rounds), *flag])
    converged = dict(zip(same_draws["models"], same_draws["converged_rating"], strict=True))
    out = {}
    for ci, run in runs.items():
        t_ours, ours, ours_raw = run["ours"]
        t_peer, peer, peer_raw = run["peer"]
        entry = {
            "prefkit_seconds": round(t_ours, 3),
            "peer_seconds": round(t_peer, 3),
            "runs_seconds": run["times"],
            "peer_stage_seconds": peer_raw["stages"],
            "ratio": round(t_peer / t_ours, 2),
            "max_abs_elo_diff_vs_converged_peer": round(
                max(abs(ours[m][0] - converged[m]) for m in converged), 4),
            "max_abs_elo_diff_vs_peer_default_tolerance": round(
                max(abs(ours[m][0] - peer[m][0]) for m in peer), 4),
            "ci_width_median_elo": {
                "prefkit": round(float(np.median([v[2] - v[1] for v in ours.values()])), 2),
                "peer": round(float(np.median([v[2] - v[1] for v in peer.values()])), 2)},
        }
        if ci == "sandwich":
            entry["ci_width_max_rel_diff"] = round(_width_rel_diff(ours, peer), 5)
            ci_ok = entry["ci_width_max_rel_diff"] <= GOAL["ci_width_rel_diff_max"]
        else:
            same = _peer_board({**same_draws, "rating": same_draws["converged_rating"]})
            entry["same_draws_ci_width_max_rel_diff"] = round(_width_rel_diff(same, peer), 5)
            entry["same_draws_max_abs_bound_diff_elo"] = round(max(
                max(abs(same[m][1] - peer[m][1]), abs(same[m][2] - peer[m][2])) for m in peer), 4)
            entry["end_to_end_ci_width_median_ratio"] = round(float(np.median(
                [(ours[m][2] - ours[m][1]) / (peer[m][2] - peer[m][1]) for m in peer])), 4)
            ci_ok = (entry["same_draws_ci_width_max_rel_diff"]
                     <= GOAL["ci_width_rel_diff_max"])
        entry["agree"] = bool(ci_ok and entry["max_abs_elo_diff_vs_converged_peer"]
                              <= GOAL["elo_diff_max"])
        if style:
            entry["coefficients"] = {
                "prefkit": list(ours_raw["style_control"]["coefficients"].values()),
                "peer": [round(c, 4) for c in peer_raw["coefficients"]]}
        out[ci] = entry
    return out


def summary(runs: dict) -> dict:
    """The bench contract's top-level fields from the per-interval-method runs."""
    return {
        "prefkit": {f"seconds_{ci}": r["prefkit_seconds"] for ci, r in runs.items()},
        "peer": {"name": "arena-rank " + _version("arena-rank"),
                 **{f"seconds_{ci}": r["peer_seconds"] for ci, r in runs.items()}},
        "ratio": min(r["ratio"] for r in runs.values()),
        "agree": all(r["agree"] for r in runs.values()),
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"
