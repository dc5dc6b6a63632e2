"""prefkit's C++ operators (``torch.ops.prefkit_native``), built from the sources in ``csrc/``
on first use and loaded into the process.

``prefkit_native::packed_linear`` (``csrc/packed_linear.cpp``) is the decode step's linear layer
through its weight's oneDNN packed copy (:mod:`prefkit.models.packed_linear`). It exists in C++
so that a compiled decode step can run from inductor's C++ wrapper: the wrapper calls C++
operators through the dispatcher without entering Python, but a Python operator costs it more
than the Python wrapper would (:meth:`prefkit.models.decode.StaticCacheBackend._step_fn`).

``prefkit_native::shared_prefix_attention`` (``csrc/shared_prefix_attention.cpp``) is a decode
step's attention over a shared prompt prefix (:mod:`prefkit.models.prefix_attention`) in two
fused passes instead of ~10 small library calls a layer. ``prefkit_native::uniform``
(``csrc/uniform_noise.cpp``) is the sampling rule's integer hash and uniform numbers in one pass
(:func:`prefkit.models.decode._uniform`, the same bits) for the uncompiled decode loop.

Building: the C++ compiler ``torch.compile`` uses on the CPU (``$CXX``, else ``g++``, ``c++``
or ``clang++`` on PATH) compiles the source against this torch's headers and libraries into
``<cache>/native/<key>/prefkit_native.so`` (:func:`prefkit.cache_dir.cache_root`; the key
hashes the sources, the torch version and commit, the compiler and the Python version), once:
~10 s on a 2-core CPU, then each process only loads the file. On Linux, with a torch that runs
OpenMP, the build adds ``-fopenmp`` (the operators' ``at::parallel_for`` then uses torch's
threads; elsewhere they run on one thread, with the same values). Processes building at once
each write their own temporary file and rename it into place. ``$PREFKIT_NATIVE=0`` turns the
operators off.

Where they cannot be built or loaded (no compiler, a compile error, a torch without the
headers), :func:`native_unavailable` says why and callers keep their Python paths -- the same
values, a slower compiled decode step. Nothing here changes a value.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from ..cache_dir import cache_root

__all__ = ["SOURCES", "cpp_compiler", "is_loaded", "library_path", "load_for",
           "native_unavailable", "turned_off"]

_CSRC = Path(__file__).with_name("csrc")
SOURCES = tuple(_CSRC / name for name in ("prefkit_native.cpp", "packed_linear.cpp",
                                          "shared_prefix_attention.cpp", "uniform_noise.cpp",
                                          "vector_clones.h"))
"""The operators' sources (all hashed into the library's key); the build compiles the first,
which includes the others (one translation unit: torch's headers, most of the build time,
parsed once)."""
BUILD_TIMEOUT_S = 600


class NativeBuildError(RuntimeError):
    """The C++ operators could not be built here (the message says why)."""


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU: ``$CXX``, else the first of ``g++``,
    ``c++`` and ``clang++`` on PATH (its full path), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        found = name and shutil.which(name)
        if found:
            return found
    return None


def library_path(compiler: str) -> Path:
    """Where the operators built by ``compiler`` for this torch and Python live."""
    digest = hashlib.sha256()
    for part in (*(source.read_bytes() for source in SOURCES), torch.__version__.encode(),
                 str(getattr(torch.version, "git_version", "")).encode(), compiler.encode(),
                 sys.version.encode()):
        digest.update(part)
    return cache_root() / "native" / digest.hexdigest()[:16] / "prefkit_native.so"


def _build(compiler: str, out: Path) -> None:
    torch_dir = Path(torch.__file__).parent
    lib = torch_dir / "lib"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    openmp = ["-fopenmp"] if sys.platform == "linux" and torch.backends.openmp.is_available() \
        else []
    cmd = [compiler, "-O2", "-std=c++20", "-shared", "-fPIC", "-Wno-psabi", *openmp,
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           f"-I{torch_dir / 'include'}", str(SOURCES[0]), "-o", str(tmp), f"-L{lib}",
           "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        tmp.unlink(missing_ok=True)
        raise NativeBuildError(f"building prefkit's C++ operators with {compiler} failed "
                               f"({type(err).__name__}: {err})") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise NativeBuildError(f"building prefkit's C++ operators with {compiler} failed "
                               f"(exit {done.returncode}): {' | '.join(tail)}")
    os.replace(tmp, out)  # atomic: another process never loads a half-written file


def turned_off() -> bool:
    """Whether ``$PREFKIT_NATIVE=0`` turns the operators off."""
    return os.environ.get("PREFKIT_NATIVE", "1") == "0"


def load_for(model: torch.nn.Module) -> bool:
    """Build or load the operators (once per process) before a float32 CPU ``model`` decodes --
    its shared-prefix attention and the uncompiled loop's sampler hash use them; whether they
    are loaded. Models on other devices or dtypes never build them; where they cannot be built
    the decode keeps its Python versions (the same tokens up to rounding in the attention,
    slower)."""
    param = next(model.parameters(), None)
    if param is None or param.dtype != torch.float32 or param.device.type != "cpu":
        return is_loaded()
    return native_unavailable() is None


@functools.cache
def native_unavailable() -> str | None:
    """Why ``torch.ops.prefkit_native`` is not loaded in this process (None: it is, built now
    or found built). Answered once per process: the first call builds or loads; threads asking
    at once wait for one build (decode loops in a server's threads)."""
    with _BUILD_LOCK:
        return _build_or_load()


def _build_or_load() -> str | None:
    if turned_off():
        return "prefkit's C++ operators are turned off ($PREFKIT_NATIVE=0)"
    compiler = cpp_compiler()
    if compiler is None:
        return "no C++ compiler on PATH (g++, c++, clang++ or $CXX) to build prefkit's C++ " \
               "operators"
    try:
        path = library_path(compiler)
        if not path.exists():
            _build(compiler, path)
        torch.ops.load_library(str(path))
        _register_shapes()
        if str(path) not in _LOADED:
            _LOADED.append(str(path))
    except NativeBuildError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 -- any failure to load: keep the Python paths
        return f"loading prefkit's C++ operators failed ({type(err).__name__}: {err})"
    return None


_BUILD_LOCK = threading.Lock()
_LOADED: list[str] = []
"""The library loaded into this process (at most one path)."""


def is_loaded() -> bool:
    """Whether the operators are loaded (without building or loading them)."""
    return bool(_LOADED)


def _register_shapes() -> None:
    """The operators' shape functions, for ``torch.compile``'s tracing (once per process)."""
    if _LOADED:
        return

    @torch.library.register_fake("prefkit_native::packed_linear")
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("prefkit_native::uniform")
    def _(row_hashes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return row_hashes.new_empty((row_hashes.shape[0], tokens.shape[0]), dtype=torch.float64)

    @torch.library.register_fake("prefkit_native::shared_prefix_attention")
    def _(query: torch.Tensor, *operands: Any) -> torch.Tensor:
        b, heads, _, dim = query.shape
        return query.new_empty((b, 1, heads, dim))
