"""No prefkit module touches a private name of accelerate (they change without notice).

The check reads every module under src/prefkit as a syntax tree and reports

* imports of private names or modules: ``from accelerate.state import _x``,
  ``import accelerate._private``;
* private attributes (``._x``, dunders excepted) read from an accelerate object: a name imported
  from accelerate (``AcceleratorState._shared_state``), a call of one
  (``AcceleratorState()._x``), or a variable holding an accelerator or its state by prefkit's
  naming (``acc``, ``accelerator``, ``state``, ``gradient_state``, also as ``self.acc``);
* accelerate's own private names wherever they appear as attributes: every ``_name`` defined on
  ``Accelerator``, ``AcceleratorState``, ``PartialState`` and ``GradientState`` (read from the
  installed accelerate) -- e.g. ``._set_sync_gradients``, ``._reset_state``.

The checker itself is tested on the lines the training loop used to contain.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "prefkit"
HOLDER_NAMES = {"acc", "accelerator", "accel", "state", "partial_state", "gradient_state"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def accelerate_private_names() -> set[str]:
    """Private attribute and method names of accelerate's central classes."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState, PartialState

    names: set[str] = set()
    for cls in (accelerate.Accelerator, AcceleratorState, PartialState, GradientState):
        names.update(n for n in dir(cls) if _private(n))
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        names.update(n for n in re.findall(r"self\.(_\w+)", source) if _private(n))
    return names


def _root_name(node: ast.expr) -> str | None:
    """The innermost name of ``a.b.c`` / ``a().b`` / ``self.acc``: ``a`` or ``acc``."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return node.attr
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def private_uses(source: str, known: set[str]) -> list[str]:
    """Private accelerate uses in ``source`` (module docstring), as ``line: text``."""
    tree = ast.parse(source)
    found: list[str] = []
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "accelerate":
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
                    bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == \
                "accelerate":
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                bound.add(alias.asname or alias.name)
    holders = bound | HOLDER_NAMES
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        root = _root_name(node.value)
        if node.attr in known or root in holders:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.slow  # > 1 s: the full suite runs it (quick suite under 3 minutes)
def test_no_module_uses_a_private_accelerate_name():
    known = accelerate_private_names()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        for use in private_uses(path.read_text(encoding="utf-8"), known):
            problems.append(f"{path.relative_to(SRC.parent)}:{use}")
    assert not problems, "private accelerate APIs used:\n" + "\n".join(problems)


@pytest.mark.parametrize("line", [
    "from accelerate.state import AcceleratorState\nAcceleratorState._shared_state",
    "from accelerate.state import AcceleratorState\nAcceleratorState._reset_state()",
    "from accelerate.state import AcceleratorState\nx = AcceleratorState()._mixed_precision",
    "acc.gradient_state._set_sync_gradients(True)",
    "self.acc._models",
    "def f(accelerator):\n    return accelerator._optimizers",
    "from accelerate.utils import _private_helper",
    "import accelerate._internal",
    "from accelerate import Accelerator as A\nA._prepare_one",
    "obj._set_sync_gradients(True)",  # accelerate's own private name, whatever holds it
])
def test_the_checker_finds_private_uses(line):
    assert private_uses(line, accelerate_private_names())


@pytest.mark.parametrize("line", [
    "from accelerate import Accelerator\nacc = Accelerator()\nacc.sync_gradients = True",
    "acc.gradient_state.sync_gradients",
    "self._state()",  # prefkit's own private method on its own object
    "from accelerate.utils import gather_object\ngather_object([1])",
    "model.__class__",
])
def test_the_checker_accepts_public_uses(line):
    assert not private_uses(line, accelerate_private_names())
