"""``prefkit ...`` under cProfile in every thread (uvicorn's event loop and the threads that run
the app's sync handlers): ``python _serve_profiled.py OUT.prof serve ...``. The merged stats are
written to OUT.prof when the process exits normally (SIGTERM makes uvicorn return); read them
with ``python -m pstats OUT.prof``.

The clock is each thread's CPU time (``time.thread_time``: where the CPU goes); with
SERVE_PROFILE_CLOCK=wall it is wall time summed over threads (waits included, e.g. for a
database lock)."""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import signal
import sys
import threading
import time

CLOCK = {"cpu": time.thread_time, "wall": time.perf_counter}[
    os.environ.get("SERVE_PROFILE_CLOCK", "cpu")]
profiles: list[cProfile.Profile] = []


def _start_thread_profile(*_: object) -> None:
    """The first profile event of a new thread hands the thread to its own cProfile."""
    sys.setprofile(None)
    profile = cProfile.Profile(CLOCK)
    profiles.append(profile)
    profile.enable()


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["prefkit", *sys.argv[2:]]
    threading.setprofile(_start_thread_profile)
    # uvicorn re-raises SIGTERM after its graceful shutdown: let that end in ``finally`` below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from prefkit.cli import main as cli

    profile = cProfile.Profile(CLOCK)
    profiles.insert(0, profile)
    profile.enable()
    try:
        cli()
    except SystemExit:
        pass
    finally:
        profile.disable()
        stats = pstats.Stats(profiles[0])
        for other in profiles[1:]:
            with contextlib.suppress(TypeError):  # a thread that recorded nothing
                stats.add(other)
        stats.dump_stats(out)
        print(f"profile of {len(profiles)} threads written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
