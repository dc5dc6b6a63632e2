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


def _file(module: str) -> Path | None:
    """The source file of the prefkit module ``module`` (a package: its ``__init__.py``)."""
    parts = module.split(".")
    if parts[0] != "prefkit":
        return None
    base = _ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
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
    return {m for m in found if m.startswith("prefkit") and _file(m) is not None}


@functools.cache
def imported_modules(module: str) -> tuple[str, ...]:
    """``module`` and every prefkit module it imports, directly or transitively, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_imports(name, path) - seen)
    return tuple(sorted(seen))


def code_hash(module: str) -> str:
    """SHA-256 (hex, 16 characters) of the sources of :func:`imported_modules` of ``module``,
    each preceded by its name."""
    digest = hashlib.sha256()
    for name in imported_modules(module):
        path = _file(name)
        assert path is not None  # imported_modules keeps only modules with a source file
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
