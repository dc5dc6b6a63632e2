"""Reward functions for tests/test_reward_executor.py, in a module of their own: worker
processes import them by name, and this module imports only the standard library (a worker
stays light)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

#: the file whose creation makes :func:`hang_once` hang (one call in a whole run)
HANG_MARKER = "PREFKIT_TEST_HANG_MARKER"
#: the file :func:`wait_for_file` waits for
GO_FILE = "PREFKIT_TEST_GO_FILE"


def mix(a: int, b: float, s: str) -> float:
    """A deterministic function of its arguments (reproduced in the test)."""
    return a * 0.5 + b ** 2 - len(s) + (ord(s[0]) if s else 0) / 7.0


def text_score(prompt: str, completion: str) -> float:
    return len(completion) - 0.25 * len(prompt) + completion.count("1")


def with_reference(prompt: str, completion: str, reference: str) -> float:
    return float(completion.strip() == reference) + 0.01 * len(prompt)


def reference_first(reference: str, completion: str) -> float:
    """A checker's argument order (reference, completion)."""
    return float(completion.strip() == reference) - 0.5 * len(reference)


def sleepy(x: int) -> float:
    """Sleeps 600 s on x == 3 (a hung reward); x otherwise."""
    if x == 3:
        time.sleep(600)
    return float(x)


def faulty(x: int) -> float:
    """1: raises; 2: segfaults; 3: os._exit(7); 4: NaN; 5: a string; otherwise x."""
    if x == 1:
        raise ValueError("bad answer format")
    if x == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    if x == 3:
        os._exit(7)
    if x == 4:
        return float("nan")
    if x == 5:
        return "0.5"  # type: ignore[return-value]
    return float(x)


@dataclass(frozen=True)
class Checked:
    """A checker-style result (as prefkit.rewards.verifiable's CheckResult)."""

    value: float | None
    status: str
    detail: str = ""


def checker(x: int) -> Checked:
    if x % 4 == 0:
        return Checked(1.0, "ok")
    if x % 4 == 1:
        return Checked(0.0, "wrong", f"{x} is wrong")
    if x % 4 == 2:
        return Checked(None, "timeout", "checker's own limit")
    return Checked(0.0, "error", "checker failed")


def pid_of_worker(_: int) -> float:
    return float(os.getpid())


def spawn_and_hang(pid_file: str) -> float:
    """Starts a grandchild (``sleep 600``), writes ``worker pid, grandchild pid`` to
    ``pid_file`` and hangs."""
    child = subprocess.Popen(["sleep", "600"])
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(600)
    return 0.0


def wait_for_file(x: int) -> float:
    """Waits (up to 60 s) until the file named by $PREFKIT_TEST_GO_FILE exists."""
    path = os.environ[GO_FILE]
    for _ in range(6000):
        if os.path.exists(path):
            return float(x)
        time.sleep(0.01)
    return -1.0


def hang_once(prompt: str, completion: str) -> float:
    """The share of positions right in a sorted answer to ``sort: 9 1 4`` (the lab sort task's
    reward without its verbosity penalty), except that the first call of a run (the one that
    creates the marker file named by $PREFKIT_TEST_HANG_MARKER) hangs for 600 s."""
    try:
        fd = os.open(os.environ[HANG_MARKER], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        time.sleep(600)
    return sort_score(prompt, completion)


def sort_score(prompt: str, completion: str) -> float:
    target = sorted(prompt.split(":", 1)[1].split(), key=int)
    return sum(a == b for a, b in zip(completion.split(), target, strict=False)) / len(target)


def sort_checked(prompt: str, completion: str) -> Checked:
    """:func:`sort_score` as a checker's result: ``ok`` when fully sorted, ``unparsed`` for an
    empty answer, ``wrong`` otherwise (tests/test_reward_overlap.py)."""
    value = sort_score(prompt, completion)
    if not completion.strip():
        return Checked(value, "unparsed")
    return Checked(value, "ok" if value == 1.0 else "wrong")
