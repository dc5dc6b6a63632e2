"""Loading a user's function by name (``module:function`` or ``FILE.py:function``): how the CLI
takes Python rewards (``python:...`` in :func:`prefkit.specs.reward_from_spec`) and
Python judges (:func:`prefkit.specs.judge_from_spec`). No heavy imports here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["import_function", "lazy_exports"]


def import_function(path: str, kind: str = "reward") -> Callable:
    """``function`` of ``module:function`` (or ``module.function``), or of ``FILE.py:function``.

    The current working folder is searched too (after the installed packages, so a local file
    cannot shadow one), so ``python:my_rewards:fn`` finds ``./my_rewards.py`` without
    ``PYTHONPATH=.``. A missing module, a missing function or an error while importing the
    module raises ``ValueError`` naming it (as a ``kind``: reward, judge)."""
    import importlib
    import importlib.util
    import os
    import sys

    spec = f"python:{path}"
    module_name, _, attr = path.rpartition(":")
    if not module_name:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{kind} {spec!r}: expected python:module:function")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ValueError(f"{kind} {spec!r}: no such file {file}")
            loader_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.split(".")[0] == exc.name.split(".")[0]:
            raise ValueError(f"{kind} {spec!r}: no module named {exc.name!r} in the current "
                             f"folder ({cwd}) or the installed packages") from None
        raise ValueError(f"{kind} {spec!r}: importing {module_name!r} failed: {exc}") from None
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import: bad input
        raise ValueError(f"{kind} {spec!r}: importing {module_name!r} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"{kind} {spec!r}: module {module_name!r} has no function {attr!r}")
    if not callable(fn):
        raise ValueError(f"{kind} {spec!r}: {module_name}.{attr} is not callable")
    return fn


def lazy_exports(package: str, where: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``'s ``__init__`` (PEP 562): each public name of
    ``where`` (``{name: submodule}``) is imported from ``package.submodule`` on first use and
    kept in the package, so importing the package stays light (``prefkit.evaluate`` without
    scipy.stats and matplotlib, ``prefkit.rewards`` without torch)."""
    import importlib
    import sys

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
