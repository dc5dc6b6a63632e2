"""No module of prefkit imports another module's private name (``from .x import _name``): what
modules share is public, named and documented (e.g. ``data.battles.style_pairs``, the style
naming rule both battle readers use; ``rank.bt.pair_information``;
``data.io.decode_jsonl_range``)."""

import ast
from pathlib import Path

import prefkit

SRC = Path(prefkit.__file__).parent


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.relative_to(SRC)}:{node.lineno}: from {'.' * node.level}"
                          f"{node.module or ''} import {alias.name}"
                          for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert found == []
    assert len(list(SRC.rglob("*.py"))) > 50  # the scan saw the package
