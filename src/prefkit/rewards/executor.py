"""Per-sample reward calls in worker processes with a per-call timeout: a reward that hangs or
crashes cannot stall training.

:class:`RewardExecutor` keeps ``workers`` worker processes, each running one call at a time,
and a dispatcher thread in the parent that hands out calls and watches them:

* a call still running ``timeout`` seconds after it started is killed with its worker (SIGKILL
  to the worker's process group, so anything it started goes too), scored status ``timeout``
  with ``timeout_value``, and the worker is replaced;
* an exception in the function, a non-numeric or non-finite value, or a dead worker (segfault,
  ``os._exit``, out-of-memory kill) is status ``error`` with ``error_value``;
* the other calls of the batch, and later batches, go on.

``timeout_value`` and ``error_value`` have NO default: a failed call must never turn silently
into a reward of 0 (or NaN, which would stop an online run), so the caller says what a failure
is worth (typically the worst reward of the task, e.g. 0 for a 0/1 correctness reward or -1).

A function may return a float (status ``ok``) or a result object with ``.value`` and
``.status`` (and optionally ``.detail``), as the verifiable checkers do; its status is kept
(``ok`` / ``wrong`` / ``unparsed`` / ``timeout`` / ``error``). Every call whose status is
``timeout`` or ``error`` scores the configured value, whether the executor or the function
itself (a checker's own time limit) found it, so one rule decides what a failure is worth.

Workers are fresh interpreters (``start_method="spawn"``): ``python executor.py`` run as a
script, so a worker imports nothing but the standard library and the reward function's own
module (this package's ``__init__`` imports torch and transformers, ~6 s and ~380 MB, which a
worker never needs), and nothing of the parent's threads, CUDA state or open files is
inherited. The function travels by pickle, i.e. by name: a top-level function of an importable
module, a picklable callable object, or a ``"module:function"`` / ``"FILE.py:function"`` string
(:func:`prefkit.importing.import_function`, resolved in the worker); a top-level function of
the parent's main script is sent as ``"SCRIPT.py:name"`` (the worker loads the script as a
module, its ``__main__`` block skipped). A lambda or a nested function is refused. The time a
fresh worker takes to start and import the function's module does not count against
``timeout`` (it has its own limit, ``start_timeout``).

Overlap with generation: :meth:`RewardExecutor.submit` returns at once with a
:class:`RewardHandle`; the dispatcher thread runs the calls while the caller goes on (e.g.
generating the next group) and ``handle.result()`` waits for them, in submission order.

No orphans: :meth:`RewardExecutor.close` (a context manager, and an ``atexit`` hook for
executors left open) kills every worker's process group and reaps it; a worker asks the kernel
to kill it if the parent dies (``PR_SET_PDEATHSIG`` on Linux) and exits when its task pipe
closes.

This module imports only the standard library (it also runs as the worker script).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["STATUSES", "RewardExecutor", "RewardHandle", "RewardResult"]

#: The statuses a reward call can end with (a function's own result object may add others).
STATUSES = ("ok", "wrong", "unparsed", "timeout", "error")
#: How the spawned worker is told to serve (``python executor.py WORKER_FLAG ...``).
WORKER_FLAG = "--prefkit-reward-worker"
#: Longest ``detail`` text a worker sends back.
MAX_DETAIL = 2000


@dataclass(frozen=True)
class RewardResult:
    """One call's reward: ``value`` (always finite), ``status`` and a short ``detail`` (the
    exception, the signal that killed the worker, the time limit ...)."""

    value: float
    status: str
    detail: str = ""


# ----------------------------------------------------------------------------- the worker side


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]


def _load_function(fn_bytes: bytes) -> Any:
    """The pickled function (a ``module:function`` string is imported), or the exception that
    loading raised (every call of that function then reports it)."""
    try:
        fn = pickle.loads(fn_bytes)
        if isinstance(fn, str):
            from prefkit.importing import import_function

            fn = import_function(fn)
        return fn
    except BaseException as exc:  # noqa: BLE001 - a user's module may even raise SystemExit
        return exc


def _call(fn: Any, args_bytes: bytes) -> tuple[float | None, str, str]:
    """``(value, status, detail)`` of one call (the parent sets the value of a ``timeout`` or
    ``error`` status to the configured one)."""
    if isinstance(fn, BaseException):
        return None, "error", "loading the reward function failed: " + _describe(fn)
    try:
        out = fn(*pickle.loads(args_bytes))
        if hasattr(out, "value") and hasattr(out, "status"):
            value, status = out.value, str(out.status)
            detail = str(getattr(out, "detail", "") or "")[:MAX_DETAIL]
        else:
            value, status, detail = out, "ok", ""
        if value is None:
            if status in ("timeout", "error"):
                return None, status, detail
            raise TypeError(f"status {status!r} with value None")
        if isinstance(value, str) or not isinstance(value, int | float) and not hasattr(
                value, "__float__"):
            raise TypeError(f"a reward must be a number, got {type(value).__name__}")
        value = float(value)
    except Exception as exc:  # noqa: BLE001 - the user's function failed: an error status
        return None, "error", _describe(exc)
    if not math.isfinite(value):
        return None, "error", f"non-finite reward {value}"
    return value, status, detail


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the thread that started it (the executor's
    dispatcher) dies; exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


def _serve(tasks: Connection, results: Connection) -> None:
    """The worker loop: the first message is the parent's ``sys.path``; then ``(task id,
    function id, pickled function or None, pickled args)`` per call, None to stop. A call whose
    message carries the function (its first use here) is announced with ``("start", id,
    monotonic time)`` after loading, so imports do not count against the call's timeout; every
    call ends with ``("done", id, value, status, detail)``."""
    sys.path[:] = tasks.recv()
    functions: dict[int, Any] = {}
    while True:
        try:
            message = tasks.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, fn_id, fn_bytes, args_bytes = message
        if fn_bytes is not None:
            functions[fn_id] = _load_function(fn_bytes)
            results.send(("start", task_id, time.monotonic()))
        results.send(("done", task_id, *_call(functions[fn_id], args_bytes)))


def _worker_main(argv: Sequence[str]) -> None:
    task_fd, result_fd, parent = (int(a) for a in argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)
    for fd in (task_fd, result_fd):
        os.set_inheritable(fd, False)
    _serve(Connection(task_fd, writable=False), Connection(result_fd, readable=False))


# ----------------------------------------------------------------------------- the parent side


class _Task:
    __slots__ = ("args", "attempts", "fn_id", "handle", "index", "task_id")

    def __init__(self, handle: RewardHandle, index: int, fn_id: int, args: bytes,
                 task_id: int) -> None:
        self.handle, self.index, self.fn_id, self.args = handle, index, fn_id, args
        self.task_id, self.attempts = task_id, 0


class _Worker:
    """One worker process: a task pipe, a result pipe, its pidfd (where Linux has them) and
    the call it is running (at most one)."""

    def __init__(self) -> None:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), WORKER_FLAG, str(task_r),
                 str(result_w), str(os.getpid())],
                pass_fds=(task_r, result_w), stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            for fd in (task_r, task_w, result_r, result_w):
                os.close(fd)
            raise
        os.close(task_r)
        os.close(result_w)
        self.tasks = Connection(task_w, readable=False)
        self.results = Connection(result_r, writable=False)
        try:
            self.pidfd: int | None = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        with contextlib.suppress(OSError):  # if it died at once, the first call's send fails
            self.tasks.send(list(sys.path))  # and replaces it
        self.functions: set[int] = set()
        self.task: _Task | None = None
        self.loading = False
        self.deadline = math.inf

    def stop(self) -> str:
        """Kill the worker's process group (anything it started too), reap it and close its
        pipes; returns how it ended ("SIGSEGV", "exit code 3")."""
        self.task = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the unreaped leader keeps the group id
        code = self.proc.wait()
        for conn in (self.tasks, self.results):
            conn.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"


_WAIT_SLICE = 0.2
"""Longest single wait of :meth:`RewardHandle.result` (seconds)."""


class RewardHandle:
    """A submitted batch: :meth:`result` waits for every call and returns the results in
    submission order; :meth:`done` tells without waiting."""

    def __init__(self, executor: RewardExecutor, n: int) -> None:
        self._executor = executor
        self._results: list[RewardResult | None] = [None] * n
        self._left = n
        self._event = threading.Event()
        self._error: str | None = None
        if n == 0:
            self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> list[RewardResult]:
        """The results, in order (blocks; ``timeout``: seconds to wait, then TimeoutError).
        Waits in slices of at most :data:`_WAIT_SLICE` seconds: a Ctrl-C that the kernel
        delivers to another thread (the dispatcher) is then still raised here at once (one long
        lock wait would sleep through it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._event.is_set():
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"reward batch not finished after {timeout} s")
            self._event.wait(min(left, _WAIT_SLICE))
        if self._error is not None:
            raise RuntimeError(self._error)
        out = list(self._results)
        self._executor._last_counts = _count(out)
        return out  # type: ignore[return-value]

    def status_counts(self) -> dict[str, int]:
        """Calls per status (every status in :data:`STATUSES`, zeros included)."""
        return _count(self.result())

    def _set(self, index: int, result: RewardResult) -> None:
        if self._results[index] is None:
            self._results[index] = result
            self._left -= 1
            if self._left == 0:
                self._event.set()

    def _fail(self, message: str) -> None:
        if not self._event.is_set():
            self._error = message
            self._event.set()


def _count(results: Sequence[RewardResult | None]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    counts.update(Counter(r.status for r in results if r is not None))
    return counts


_OPEN: weakref.WeakSet[RewardExecutor] = weakref.WeakSet()


@atexit.register
def _close_open_executors() -> None:
    for executor in list(_OPEN):
        executor.close()


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (the reward a failed call gets), "
                         f"got {value!r}")
    return float(value)


class RewardExecutor:
    """A pool of ``workers`` processes running reward calls with a per-call ``timeout`` (module
    docstring). ``timeout_value`` / ``error_value``: the reward of a call that timed out /
    failed (required, finite). ``start_timeout``: seconds a fresh worker may take to start and
    load the function before its call is scored ``error``.

    ``map(fn, calls)`` runs ``fn(*args)`` for every ``args`` tuple of ``calls`` and returns
    :class:`RewardResult` s in order; ``submit`` does the same without waiting.
    ``status_counts()``: the counts of the last batch whose results were collected.
    """

    def __init__(self, workers: int = 2, timeout: float = 10.0, *, timeout_value: float,
                 error_value: float, start_method: str = "spawn",
                 start_timeout: float = 120.0) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        for name, seconds in (("timeout", timeout), ("start_timeout", start_timeout)):
            if not isinstance(seconds, int | float) or not seconds > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
        if start_method != "spawn":
            raise ValueError(f"start_method must be 'spawn' (a fresh interpreter per worker), "
                             f"got {start_method!r}; fork is not offered: a fork of a trainer "
                             "inherits its threads, locks and CUDA state")
        self.workers, self.timeout, self.start_timeout = workers, float(timeout), start_timeout
        self.timeout_value = _finite("timeout_value", timeout_value)
        self.error_value = _finite("error_value", error_value)
        self.start_method = start_method
        self._lock = threading.Lock()
        self._pending: deque[_Task] = deque()
        self._functions: dict[bytes, int] = {}
        self._function_bytes: list[bytes] = []
        self._task_ids = 0
        self._pool: list[_Worker] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._closed = False
        self._ready = threading.Event()
        self._crash: str | None = None
        self._last_counts: dict[str, int] = dict.fromkeys(STATUSES, 0)

    # -- public API

    def start(self) -> RewardExecutor:
        """Start the workers now (they otherwise start with the first batch), e.g. so their
        start-up overlaps loading a model."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the reward executor is closed")
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_r, False)
                os.set_blocking(self._wake_w, False)
                self._thread = threading.Thread(target=self._dispatch, daemon=True,
                                                name="prefkit-reward-executor")
                _OPEN.add(self)
                self._thread.start()
        self._ready.wait()  # the workers exist (they are still starting up)
        return self

    def submit(self, fn: Callable | str, calls: Sequence[Sequence[Any]]) -> RewardHandle:
        """Queue ``fn(*args)`` for every ``args`` of ``calls``; returns at once."""
        fn_bytes = _pickled(fn, "the reward function", hint=True)
        payloads = [_pickled(tuple(args), f"the arguments of call {i}")
                    for i, args in enumerate(calls)]
        self.start()
        handle = RewardHandle(self, len(payloads))
        with self._lock:
            if self._crash is not None:
                raise RuntimeError(self._crash)
            fn_id = self._functions.get(fn_bytes)
            if fn_id is None:
                fn_id = self._functions[fn_bytes] = len(self._function_bytes)
                self._function_bytes.append(fn_bytes)
            for i, args in enumerate(payloads):
                self._task_ids += 1
                self._pending.append(_Task(handle, i, fn_id, args, self._task_ids))
        self._wake()
        return handle

    def map(self, fn: Callable | str, calls: Sequence[Sequence[Any]]) -> list[RewardResult]:
        """``submit(fn, calls).result()``."""
        return self.submit(fn, calls).result()

    def status_counts(self) -> dict[str, int]:
        """Calls per status of the last batch collected (zeros included)."""
        return dict(self._last_counts)

    def worker_pids(self) -> list[int]:
        """The process ids of the current workers (for monitoring and tests)."""
        return [w.proc.pid for w in list(self._pool)]

    def close(self) -> None:
        """Kill and reap every worker; unfinished batches raise RuntimeError from ``result()``.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            self._wake()
            self._thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
        _OPEN.discard(self)

    def __enter__(self) -> RewardExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the dispatcher thread

    def _wake(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(OSError):  # a full pipe already wakes it
                os.write(self._wake_w, b"x")

    def _dispatch(self) -> None:
        try:
            try:
                self._pool = [_Worker() for _ in range(self.workers)]
            finally:
                self._ready.set()
            while not self._closed:
                self._step()
            message = "the reward executor was closed before the batch finished"
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting caller
            message = f"the reward executor failed: {_describe(exc)}"
            with self._lock:
                self._crash = message
        for w in self._pool:
            if w.task is not None:
                w.task.handle._fail(message)
            w.stop()
        with self._lock:
            for task in self._pending:
                task.handle._fail(message)
            self._pending.clear()

    def _step(self) -> None:
        """Hand out calls to idle workers, wait for a message, a death, a deadline or a
        wake-up, and act on it."""
        for i, w in enumerate(self._pool):
            while w.task is None:
                with self._lock:
                    if not self._pending:
                        break
                    task = self._pending.popleft()
                w = self._send(i, task)
        busy = [w for w in self._pool if w.task is not None]
        now = time.monotonic()
        timeout = max(0.0, min(w.deadline for w in busy) - now) if busy else None
        watched: list[Any] = [self._wake_r]
        for w in busy:
            watched.append(w.results)
            if w.pidfd is not None:
                watched.append(w.pidfd)
        ready = set(wait(watched, timeout))
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        for w in busy:
            if w.results in ready or (w.pidfd is not None and w.pidfd in ready):
                self._receive(w, died=w.pidfd is not None and w.pidfd in ready)
        now = time.monotonic()
        for w in busy:
            if w.task is not None and now >= w.deadline:
                task = w.task
                if w.loading:
                    self._replace(w, task, "error", f"the worker did not start the call within "
                                                    f"start_timeout={self.start_timeout} s "
                                                    "(starting up / importing the function)")
                else:
                    self._replace(w, task, "timeout",
                                  f"no result within {self.timeout} s: worker killed")

    def _send(self, i: int, task: _Task) -> _Worker:
        """Give ``task`` to worker ``i`` (replaced first if its pipe is broken)."""
        w = self._pool[i]
        first = task.fn_id not in w.functions
        message = (task.task_id, task.fn_id,
                   self._function_bytes[task.fn_id] if first else None, task.args)
        try:
            w.tasks.send(message)
        except OSError:
            task.attempts += 1
            how = w.stop()
            self._pool[i] = _Worker()
            if task.attempts >= 3:
                self._finish(task, None, "error", f"no worker would take the call ({how})")
            else:
                with self._lock:
                    self._pending.appendleft(task)
            return self._pool[i]
        w.functions.add(task.fn_id)
        w.task, w.loading = task, first
        w.deadline = time.monotonic() + (self.start_timeout if first else self.timeout)
        return w

    def _receive(self, w: _Worker, died: bool) -> None:
        try:
            while w.task is not None and w.results.poll():
                message = w.results.recv()
                if message[1] != w.task.task_id:
                    raise RuntimeError(f"worker answered call {message[1]}, expected "
                                       f"{w.task.task_id}")
                if message[0] == "start":
                    w.loading, w.deadline = False, message[2] + self.timeout
                else:
                    task, w.task = w.task, None
                    self._finish(task, *message[2:])
        except (EOFError, OSError):
            died = True
        if died:
            self._replace(w, w.task, "error", "the worker process died")

    def _replace(self, w: _Worker, task: _Task | None, status: str, detail: str) -> None:
        how = w.stop()
        self._pool[self._pool.index(w)] = _Worker()
        if task is not None:
            suffix = f" ({how})" if status == "error" else ""
            self._finish(task, None, status, detail + suffix)

    def _finish(self, task: _Task, value: float | None, status: str, detail: str) -> None:
        if status == "timeout":  # whoever detected it: the executor or the function's own limit
            value = self.timeout_value
        elif status == "error":
            value = self.error_value
        task.handle._set(task.index, RewardResult(value, status, detail))


def _main_script_function(fn: Any) -> Any:
    """A top-level function of the main script as ``"SCRIPT.py:name"``: a worker does not run
    the parent's main script, so it loads the file as a module instead (its ``if __name__ ==
    "__main__":`` block is skipped, as under multiprocessing's spawn). Anything else as is."""
    if getattr(fn, "__module__", None) != "__main__" or not hasattr(fn, "__qualname__"):
        return fn
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py") or "." in fn.__qualname__ or "<" in fn.__qualname__:
        raise TypeError(f"the reward function {fn.__qualname__!r} is defined in the main program, "
                        "which worker processes cannot load: move it to a module, or pass "
                        "'FILE.py:function'")
    return f"{os.path.abspath(path)}:{fn.__qualname__}"


def _pickled(obj: Any, what: str, hint: bool = False) -> bytes:
    """``pickle.dumps(obj)``, or a TypeError naming ``what`` (worker processes receive
    functions by name: a lambda or a nested function cannot be loaded there)."""
    if hint:
        obj = _main_script_function(obj)
    try:
        return pickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        extra = (" (a top-level function of an importable module, a picklable object or "
                 "'module:function')") if hint else ""
        raise TypeError(f"{what} cannot be sent to a worker process{extra}: "
                        f"{_describe(exc)}") from None


if __name__ == "__main__" and sys.argv[1:2] == [WORKER_FLAG]:
    _worker_main(sys.argv[2:])
