"""Checkpoint directories: naming, ``latest`` resolution, pruning and ``trainer_state.json``.

A checkpoint is ``{output_dir}/checkpoint-{step}/``: the files of ``Accelerator.save_state``
(model, optimizer, scheduler, RNG states per process) plus ``trainer_state.json`` (loop
position and logging window). With ``sharding="fsdp2"`` the model and optimizer are not
accelerate's: they are in ``fsdp2/`` (``torch.distributed.checkpoint``: one shard file per
process and ``.metadata``; :mod:`prefkit.train.sharding`). It is written to
``checkpoint-{step}.tmp`` and renamed when complete, so a crash mid-save never leaves a half
checkpoint that ``latest`` would pick.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "STATE_FILE",
    "checkpoint_dir",
    "list_checkpoints",
    "prune_checkpoints",
    "read_trainer_state",
    "resolve_resume",
    "write_trainer_state",
]

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """``{output_dir}/checkpoint-{step}``."""
    return Path(output_dir) / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with ``trainer_state.json``) in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> Path | None:
    """Turn ``resume_from`` into a checkpoint directory.

    ``None`` -> ``None``; ``"latest"`` -> the newest complete checkpoint in ``output_dir`` or
    ``None`` when there is none (a fresh start); a path -> that directory, which must hold a
    ``trainer_state.json``.
    """
    if resume_from is None:
        return None
    if resume_from == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"resume_from={resume_from!r} is not a complete checkpoint (no {STATE_FILE} there)"
        )
    return path


def prune_checkpoints(output_dir: str | Path, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``limit``; return the deleted paths."""
    if limit is None:
        return []
    ckpts = list_checkpoints(output_dir)
    doomed = ckpts[: max(0, len(ckpts) - limit)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def write_trainer_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``trainer_state.json`` into checkpoint directory ``path``."""
    (Path(path) / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read ``trainer_state.json`` from checkpoint directory ``path``."""
    return json.loads((Path(path) / STATE_FILE).read_text())
