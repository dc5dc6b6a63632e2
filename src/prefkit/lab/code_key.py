"""Cache keys that change with the code: a hash of the source of a prefkit module and of every
prefkit module it imports, directly or through other prefkit modules.

A cached artifact (the lab's SFT base model) stays valid only while the code that computed it is
the same: :func:`code_hash` reads the module's source, follows its ``import`` / ``from ...
import`` statements (module level and inside functions, relative or absolute) to the other
``prefkit`` modules, and hashes all of their sources in a fixed order. Editing any of them -- a
numerics change in the training loop, the packing or the log-probs -- gives a new hash; editing
a module it does not import does not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

__all__ = ["code_hash", "imported_modules"]

_ROOT = Path(__file__).resolve().parent.parent  # the prefkit package folder


def _file(module: str, root: Path) -> Path | None:
    """The source file of the prefkit module ``module`` (a package: its ``__init__.py``) in the
    package folder ``root``."""
    parts = module.split(".")
    if parts[0] != "prefkit":
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path, root: Path) -> set[str]:
    """The prefkit modules that ``module`` (source at ``path``) names in its import statements
    (``from X import name``: X, and X.name where that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("prefkit") and _file(m, root) is not None}


def imported_modules(module: str) -> tuple[str, ...]:
    """``module`` and every prefkit module it imports, directly or transitively, sorted."""
    return _closure(module, _ROOT)


def _closure(module: str, root: Path) -> tuple[str, ...]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _file(name, root)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_imports(name, path, root) - seen)
    return tuple(sorted(seen))


def code_hash(module: str) -> str:
    """SHA-256 (hex, 16 characters) of the sources of :func:`imported_modules` of ``module``,
    each preceded by its name.

    Computed once per process (and package folder): the code a running process executes is what
    it imported, so files edited on disk afterwards do not change the key of its artifacts
    mid-run. ``code_hash.cache_clear()`` forgets the hashes."""
    return _hash(module, _ROOT)


@functools.cache
def _hash(module: str, root: Path) -> str:
    digest = hashlib.sha256()
    for name in _closure(module, root):
        path = _file(name, root)
        assert path is not None  # the closure keeps only modules with a source file
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


code_hash.cache_clear = _hash.cache_clear  # type: ignore[attr-defined]
