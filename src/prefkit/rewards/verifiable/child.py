"""A checker's killable child process: the way a time limit works in every caller.

math-verify's own time limit uses ``signal.alarm``, which only works in the main thread of
the main interpreter (huggingface/Math-Verify #50, #55): called from a thread pool or an
asyncio executor it raises. Here the comparison runs in a child process instead; the caller
waits on the child's pipe with a deadline and, when it passes, kills the child's whole
process group and starts a fresh child for the next call. Nothing in the caller is
interrupted, so it behaves the same in the main thread, other threads, worker processes and
asyncio.

Protocol: one JSON object a line. The child prints ``{"ready": true}`` once its modules are
imported (the import time never counts against a call's limit), then answers each request
``{"fn": "prefkit.rewards.verifiable.MODULE:FUNCTION", "args": [...]}`` with the function's
:class:`~prefkit.rewards.verifiable.result.CheckResult` as a dict. Only functions of this
package can be named. The child exits when its stdin closes (the caller died or closed it).

Each thread of each process owns its own child, so concurrent callers never queue behind one
another's deadline; a forked process never reuses its parent's child; the children of threads
that have ended are killed at the next call, and all of them at exit
(:func:`close_children`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

from .result import CheckResult

__all__ = ["ChildTimeout", "call_in_child", "close_children"]

_PACKAGE = __name__.rsplit(".", 1)[0]
# the prefkit this module was imported from (src/ or site-packages), for the child's sys.path
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
# prefkit.rewards imports its names lazily, so the child loads no torch on the way here
_BOOT = ("import sys\n"
         "from prefkit.rewards.verifiable.child import _serve\n"
         "_serve(sys.argv[1:])\n")
#: the child's address-space limit (bytes): a pathological expression that would eat the
#: machine's memory fails inside the child (``error``) instead.
CHILD_MEMORY = 4 << 30
#: seconds a fresh child may take to import its modules (not part of any call's limit)
STARTUP_TIMEOUT = 120.0


class ChildTimeout(Exception):
    """The child did not answer before the deadline (it has been killed)."""


class _Child:
    def __init__(self, preload: tuple[str, ...]) -> None:
        self.preload = preload
        self.owner = os.getpid()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, *preload], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        self.buffer = b""
        ready = self._read_line(time.monotonic() + STARTUP_TIMEOUT)
        if not json.loads(ready).get("ready"):
            raise RuntimeError(f"checker child failed to start: {ready!r}")

    def _read_line(self, deadline: float) -> str:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise ChildTimeout
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.wait()
                    raise RuntimeError(f"checker child exited (code {code})")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def call(self, fn: str, args: list, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps({"fn": fn, "args": args}) + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(self._read_line(deadline))

    def alive(self) -> bool:
        return self.proc.poll() is None and self.owner == os.getpid()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()


_children: dict[tuple[int, int, tuple[str, ...]], tuple[_Child, weakref.ref]] = {}
_lock = threading.Lock()


def _sweep() -> None:
    """Kill the children of threads that have ended (a thread pool's finished workers)."""
    dead = [key for key, (_, thread) in _children.items()
            if key[0] == os.getpid() and (thread() is None or not thread().is_alive())]
    for key in dead:
        _children.pop(key)[0].kill()


def _child_for(preload: tuple[str, ...]) -> _Child:
    key = (os.getpid(), threading.get_ident(), preload)  # a forked process starts its own
    with _lock:
        _sweep()
        entry = _children.get(key)
    if entry is not None and entry[0].alive():
        return entry[0]
    child = _Child(preload)
    with _lock:
        _children[key] = (child, weakref.ref(threading.current_thread()))
    return child


def call_in_child(fn: str, args: list, *, timeout: float, preload: tuple[str, ...] = ()
                  ) -> CheckResult:
    """``fn(*args)`` (``"MODULE:FUNCTION"`` inside this package, returning a
    :class:`CheckResult`) in this thread's child, with a deadline of ``timeout`` seconds from
    the moment the request is sent: past it the child is killed and the result is
    ``timeout``; a child that dies or answers garbage gives ``error``."""
    try:
        child = _child_for(preload)
    except Exception as exc:  # noqa: BLE001 -- no child: the check cannot run
        return CheckResult.error(f"could not start the checker process: {exc}")
    try:
        answer = child.call(fn, args, timeout)
    except ChildTimeout:
        return CheckResult.timeout(f"no answer within {timeout:g} s (checker process killed)")
    except (RuntimeError, OSError, ValueError) as exc:
        child.kill()
        return CheckResult.error(f"checker process failed: {exc}")
    return CheckResult(float(answer["value"]), answer["status"], answer.get("detail", ""))


def close_children() -> None:
    """Kill every checker child this process started (also run at exit)."""
    with _lock:
        keys = [key for key in _children if key[0] == os.getpid()]
        children = [_children.pop(key)[0] for key in keys]
    for child in children:
        child.kill()


def _after_fork_in_child() -> None:
    """A forked process forgets its parent's children (their pipes close in it, never in the
    parent) and gets a fresh lock (another thread may have held it at the fork)."""
    global _lock
    _lock = threading.Lock()
    _children.clear()


atexit.register(close_children)
os.register_at_fork(after_in_child=_after_fork_in_child)


# ----------------------------------------------------------------------------- the child


def _serve(preload: list[str]) -> None:
    import importlib
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    for name in preload:
        importlib.import_module(name)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            module, _, function = request["fn"].partition(":")
            if not module.startswith(_PACKAGE + "."):
                raise ValueError(f"{module} is not a checker module of {_PACKAGE}")
            result: Any = getattr(importlib.import_module(module), function)(*request["args"])
            answer = result.to_dict()
        except Exception as exc:  # noqa: BLE001 -- the checker failed: report, keep serving
            answer = CheckResult.error(f"{type(exc).__name__}: {exc}"[:500]).to_dict()
        out.write(json.dumps(answer) + "\n")
        out.flush()


