"""``run_code_tests``: a completion's code against unit tests in a subprocess sandbox.

Each call gets a fresh temporary directory as the working directory and a child Python
(``python -I``, :mod:`.sandbox_runner`) that limits itself before the code runs:

=================  ===========================================================================
CPU                RLIMIT_CPU = the time limit rounded up (+1 s): a busy loop gets SIGXCPU
wall clock         ``timeout`` seconds, then the child's whole process group is SIGKILLed
memory             RLIMIT_AS = ``memory_mb`` (an allocation past it raises MemoryError)
output             RLIMIT_FSIZE = ``output_mb`` for any file; stdout / stderr go to files
open files         RLIMIT_NOFILE = ``open_files``
processes          RLIMIT_NPROC = 0 (non-root users) and an audit hook refusing fork / exec /
                   spawn / subprocess / os.system (everyone, root included)
network            a network namespace of its own when the kernel permits (``unshare``), and
                   in any case the audit hook refusing sockets; the result's detail says which
files              the audit hook refuses writing, removing, renaming ... outside the directory
=================  ===========================================================================

Statuses: ``ok`` -- every test passed; ``wrong`` -- the code failed to run, a test failed, or
the code was refused something (detail: the first failure, the refusals); ``timeout`` -- the
wall clock or CPU limit ran out; ``error`` -- the sandbox itself could not run. ``value`` is
the fraction of tests passed (partial credit; ``timeout`` scores 0).

Tests are Python snippets run after the code in its namespace, one by one (``assert
f(2) == 4``), or one string of several statements (one test).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .result import CheckResult

__all__ = ["SandboxLimits", "run_code_tests"]

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")


@dataclass(frozen=True)
class SandboxLimits:
    """The limits of one sandboxed run (module docstring's table)."""

    timeout: float = 10.0
    memory_mb: int = 1024
    output_mb: int = 16
    open_files: int = 64

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.memory_mb <= 0 or self.output_mb <= 0 or \
                self.open_files <= 3:
            raise ValueError(f"sandbox limits must be positive (open_files > 3): {self}")


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_report(fd: int, proc: subprocess.Popen, deadline: float) -> tuple[bytes, bool]:
    """Everything the runner writes to its report pipe, and whether the deadline passed."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, True
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return data, False
            data += chunk
        elif proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
            return data, False


def run_code_tests(code: str, tests: str | Sequence[str], *,
                   limits: SandboxLimits | None = None, python: str | None = None
                   ) -> CheckResult:
    """Run ``code`` then each of ``tests`` in a sandboxed child (module docstring)."""
    limits = limits or SandboxLimits()
    test_list = [tests] if isinstance(tests, str) else list(tests)
    if not test_list:
        raise ValueError("run_code_tests needs at least one test")
    work = tempfile.mkdtemp(prefix="prefkit-sandbox-")
    control = tempfile.mkdtemp(prefix="prefkit-sandbox-control-")
    try:
        config = os.path.join(control, "config.json")
        with open(config, "w") as f:
            json.dump({"code": code, "tests": test_list,
                       "cpu_seconds": math.ceil(limits.timeout) + 1,
                       "memory_bytes": limits.memory_mb << 20,
                       "output_bytes": limits.output_mb << 20,
                       "open_files": limits.open_files}, f)
        read_fd, write_fd = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        with open(os.path.join(control, "stdout"), "wb") as out:
            try:
                proc = subprocess.Popen(
                    [python or sys.executable, "-I", _RUNNER, config, str(write_fd)], cwd=work,
                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    pass_fds=(write_fd,), start_new_session=True)
            except OSError as exc:
                os.close(read_fd)
                os.close(write_fd)
                return CheckResult.error(f"could not start the sandbox: {exc}")
            os.close(write_fd)
            try:
                data, late = _read_report(read_fd, proc, time.monotonic() + limits.timeout)
            finally:
                os.close(read_fd)
                _kill_group(proc)  # also reaps anything the code left behind
        with open(os.path.join(control, "stdout"), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 2000))
            tail = f.read().decode(errors="replace")
        return _result(data, late, proc.returncode, limits, tail)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(control, ignore_errors=True)


def _result(data: bytes, late: bool, code: int | None, limits: SandboxLimits, tail: str
            ) -> CheckResult:
    if late:
        return CheckResult.timeout(f"still running after {limits.timeout:g} s (process group "
                                   "killed)")
    if code == -signal.SIGXCPU:
        return CheckResult.timeout(f"CPU limit of {math.ceil(limits.timeout) + 1} s reached")
    started, _, rest = data.decode(errors="replace").partition("\n")
    if not started:  # the runner never reached the user's code: the sandbox failed
        return CheckResult.error(f"the sandbox failed to start (exit code {code}): "
                                 f"{tail.strip()[-300:]}")
    try:
        outcome = json.loads(rest)
    except ValueError:
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return CheckResult.wrong(f"the code ended the process before the tests finished "
                                 f"({how}) [{json.loads(started)['network']}]")
    where = f"[{outcome['network']}]"
    refusals = outcome["refusals"]
    refused = f"; refused: {', '.join(refusals[:3])}" if refusals else ""
    if outcome["code"] != "ok":
        return CheckResult.wrong(f"the code failed: {outcome['code']}{refused} {where}")
    tests = outcome["tests"]
    passed = sum(t == "ok" for t in tests)
    value = passed / len(tests)
    if passed == len(tests):
        return CheckResult.ok(f"{passed}/{len(tests)} tests passed{refused} {where}")
    first = next(t for t in tests if t != "ok")
    return CheckResult.wrong(f"{passed}/{len(tests)} tests passed; first failure: {first}"
                             f"{refused} {where}", value=value)
