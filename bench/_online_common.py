"""Helpers shared by the two children of bench/online_vs_trl.py (timing, the reward recorder,
the JSON line each child prints)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _dpo_child_common import peak_rss_mb, setup_threads  # noqa: E402, F401


class GenerateTimer:
    """Wraps ``model.generate`` (on the instance) to time every call and count what it produced:
    new tokens per row and EOS tokens among them. ``extra`` kwargs are passed to every call
    (prefkit's child passes ``min_new_tokens`` this way; TRL gets it from ``generation_kwargs``)."""

    def __init__(self, model, eos_id: int, **extra) -> None:
        self.seconds: list[float] = []
        self.new_tokens: list[int] = []
        self.rows: list[int] = []
        self.eos: list[int] = []
        self.eos_id = eos_id
        original = model.generate

        def generate(*args, **kwargs):
            width = (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[1]
            start = time.perf_counter()
            out = original(*args, **{**extra, **kwargs})
            self.seconds.append(time.perf_counter() - start)
            new = out[:, width:]
            self.new_tokens.append(int(new.shape[1]))
            self.rows.append(int(new.shape[0]))
            self.eos.append(int((new == eos_id).sum()))
            return out

        model.generate = generate


class BackendTimer:
    """Times prefkit's generation backends (``generate`` of every class in ``classes``, wrapped
    on the class; a backend that falls back to another counts once) with the same records as
    :class:`GenerateTimer`: seconds, new tokens per row (the longest row), rows, EOS count."""

    def __init__(self, classes, eos_id: int) -> None:
        self.seconds: list[float] = []
        self.new_tokens: list[int] = []
        self.rows: list[int] = []
        self.eos: list[int] = []
        depth = [0]
        timer = self

        def wrap(original):
            def generate(self, model, prompt_ids, settings, **kwargs):
                depth[0] += 1
                start = time.perf_counter()
                try:
                    out = original(self, model, prompt_ids, settings, **kwargs)
                finally:
                    depth[0] -= 1
                if depth[0] == 0:
                    timer.seconds.append(time.perf_counter() - start)
                    timer.new_tokens.append(max((len(r) for r in out.ids), default=0))
                    timer.rows.append(len(out.ids))
                    timer.eos.append(sum(r.count(eos_id) for r in out.ids))
                return out
            return generate

        for cls in classes:
            cls.generate = wrap(cls.generate)


class RewardLog:
    """Records each call's rewards (one list per rollout)."""

    def __init__(self) -> None:
        self.calls: list[list[float]] = []

    def add(self, values) -> None:
        self.calls.append([float(v) for v in values])


def rss_mb() -> float:
    """Current resident set size of this process (VmRSS), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def emit(**fields) -> None:
    print(json.dumps({**fields, "peak_rss_mb": peak_rss_mb()}))


def emit_run(*, t0: float, stamps: list[float], gen: GenerateTimer, rewards: RewardLog,
             threads: int, **fields) -> None:
    """The JSON line of a finished run: ``fields`` plus the step times from the optimizer-step
    ``stamps`` (taken after ``t0``), what ``generate`` produced and the rewards."""
    emit(**fields,
         first_step_seconds=stamps[0] - t0 if stamps else None,
         step_seconds=[b - a for a, b in zip(stamps, stamps[1:], strict=False)],
         generate_seconds=gen.seconds, generate_new_tokens=gen.new_tokens,
         generate_rows=gen.rows, generate_eos=gen.eos, rewards=rewards.calls, threads=threads)
