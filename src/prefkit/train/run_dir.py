"""The output folder of a run: its identity, and the guard that keeps runs from mixing.

A run writes ``{output_dir}/run_config.json`` when it starts (its config class and every
config field, with the identity fields -- see :func:`prefkit.train.config.option` --
normalized: paths made absolute), and every checkpoint's ``trainer_state.json`` carries the
same identity. Before anything is written, :func:`check_run_dir` refuses

* a **fresh start** in a folder that holds another run (its ``run_config.json``, or for folders
  written before run identities existed, its newest checkpoint's config, differs in an identity
  field), or that holds checkpoints of this same run (continue it with
  ``resume_from="latest"``): the old run's higher-numbered checkpoints would count as the
  newest and prune the new run's own, and ``latest`` would later resume the wrong run. (A
  folder an older prefkit left with logs but neither ``run_config.json`` nor checkpoints holds
  nothing resumable and nothing to compare: its logs are replaced.);
* a **resume** whose checkpoint was written by a run with other maths (any identity field
  differs: loss, batch size, accumulation, learning rate, schedule, warm-up, seed, data,
  model, ...) -- the message lists each field with the checkpoint's and the new value; or a
  resume from an older checkpoint of a folder that holds newer ones (they would be pruned).

Fields that do not change the maths may differ: ``max_steps`` (extend a run), logging, saving,
progress, the output folder itself. Folders holding only files prefkit does not write are
fine (the files are kept). ``overwrite`` starts over: :func:`clear_run_dir` deletes prefkit's
own files (``checkpoint-N/`` folders, ``run_config.json``, ``metrics.jsonl``,
``rollouts.jsonl``) and nothing else.

The checks only read, so every data-parallel process runs them and fails the same way; the
main process alone clears and writes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

from .checkpoint import STATE_FILE, list_checkpoints, read_trainer_state
from .config import ConfigError, identity_fields, path_fields

__all__ = [
    "RUN_CONFIG",
    "RUN_FILES",
    "RunConflictError",
    "check_resume",
    "check_run_dir",
    "clear_run_dir",
    "run_identity",
    "write_run_config",
]

RUN_CONFIG = "run_config.json"
#: Files prefkit writes into an output folder (besides ``checkpoint-N/`` folders).
RUN_FILES = (RUN_CONFIG, "metrics.jsonl", "rollouts.jsonl")
_CHECKPOINT = re.compile(r"^checkpoint-\d+(\.tmp)?$")


class RunConflictError(ConfigError):
    """The output folder or the checkpoint to resume belongs to another run."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _normalize_path(value: Any) -> Any:
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def run_identity(config: Any) -> dict[str, Any]:
    """``{field: value}`` of the identity fields of ``config`` (a config dataclass instance),
    JSON-normalized, paths made absolute where they exist."""
    paths = set(path_fields(type(config)))
    out = {}
    for name in identity_fields(type(config)):
        value = getattr(config, name)
        out[name] = _normalize_path(value) if name in paths else value
    return _jsonable(out)


def _stored_identity(state: dict[str, Any], cls: type) -> dict[str, Any]:
    """The identity a ``run_config.json`` or ``trainer_state.json`` records (older checkpoints
    hold only the raw config: normalize it here against the current working directory)."""
    if "identity" in state:
        return state["identity"]
    raw = state.get("config", {})
    paths = set(path_fields(cls))
    return _jsonable({k: _normalize_path(v) if k in paths else v for k, v in raw.items()
                      if k in identity_fields(cls)})


def _differences(old: dict[str, Any], old_class: str | None, config: Any) -> list[str]:
    """``field: OLD there, NEW now`` for every identity field that differs (a field the old
    run did not record counts with its default)."""
    cls = type(config)
    diffs = []
    if old_class is not None and old_class != cls.__name__:
        diffs.append(f"config_class: {old_class} there, {cls.__name__} now")
        return diffs
    defaults = {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}
    new = run_identity(config)
    for name, value in new.items():
        before = old.get(name, _jsonable(defaults.get(name)))
        if before != value:
            diffs.append(f"{name}: {_show(before)} there, {_show(value)} now")
    return diffs


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _folder_run(output_dir: Path) -> tuple[dict[str, Any], str] | None:
    """``(record, where)`` of the run a folder holds -- its ``run_config.json``, else (folders
    written before run identities) its newest checkpoint's ``trainer_state.json`` -- or None
    when it holds no run; ``where`` names the file the record came from."""
    stored = _read_json(output_dir / RUN_CONFIG)
    if stored is not None and "config" in stored:
        return stored, str(output_dir / RUN_CONFIG)
    ckpts = list_checkpoints(output_dir)
    if ckpts:
        return read_trainer_state(ckpts[-1]), str(ckpts[-1] / STATE_FILE)
    return None


def check_resume(checkpoint: Path, config: Any) -> None:
    """Refuse to resume ``checkpoint`` under ``config`` when its run had other maths."""
    state = read_trainer_state(checkpoint)
    old = _stored_identity(state, type(config))
    diffs = _differences(old, state.get("config_class"), config)
    if diffs:
        raise RunConflictError(
            f"cannot resume {checkpoint}: it was written by a run with other settings "
            f"({'; '.join(diffs)}). Resume with the checkpoint's settings, or start a new run "
            f"in another output_dir (--output-dir)")


def check_run_dir(config: Any, resume: Path | None) -> None:
    """Refuse to start (``resume`` None) or continue a run in ``config.output_dir`` when that
    would mix it with another run (module docstring). Only reads. ``config.overwrite`` skips
    the folder checks (the folder is cleared instead)."""
    out = Path(config.output_dir)
    if resume is not None:
        check_resume(resume, config)
    if getattr(config, "overwrite", False):
        if resume is not None and _inside(resume, out):
            raise RunConflictError(
                f"overwrite would delete the checkpoint to resume ({resume}): resume without "
                "overwrite, or resume into another output_dir")
        return
    if not out.is_dir():
        return
    held = _folder_run(out)
    diffs: list[str] = []
    if held is not None:
        record, where = held
        diffs = _differences(_stored_identity(record, type(config)), record.get("config_class"),
                             config)
        diffs = [f"{where}: {d}" for d in diffs[:1]] + diffs[1:]
    if diffs:
        raise RunConflictError(
            f"output_dir {out} holds another run ({'; '.join(diffs)}). Choose another "
            "output_dir (--output-dir), or pass --overwrite (overwrite=True) to delete that "
            "run's checkpoints and metrics (other files are kept)")
    ckpts = list_checkpoints(out)
    if resume is None and ckpts:
        raise RunConflictError(
            f"output_dir {out} already holds checkpoints of this run (newest: {ckpts[-1].name}):"
            " continue it with --resume-from latest (resume_from='latest'), start it over with "
            "--overwrite, or choose another output_dir")
    if resume is not None:
        step = read_trainer_state(resume).get("global_step", 0)
        newer = [p.name for p in ckpts if _step(p) > step and p.resolve() != resume.resolve()]
        if newer:
            raise RunConflictError(
                f"output_dir {out} holds checkpoints newer than {resume} ({', '.join(newer)}); "
                "they would be overwritten and pruned: resume into another output_dir, resume "
                "the newest with --resume-from latest, or pass --overwrite")


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def clear_run_dir(output_dir: str | Path) -> list[Path]:
    """Delete prefkit's own files in ``output_dir`` (``checkpoint-N[.tmp]/`` folders and
    :data:`RUN_FILES`); return what was deleted. Every other file stays."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    doomed = [p for p in out.iterdir() if (p.is_dir() and _CHECKPOINT.match(p.name))
              or (p.is_file() and p.name in RUN_FILES)]
    for p in doomed:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return doomed


def run_record(config: Any) -> dict[str, Any]:
    """What ``run_config.json`` and each checkpoint record about the run's configuration."""
    return {"config_class": type(config).__name__, "identity": run_identity(config),
            "config": _jsonable(dataclasses.asdict(config))}


def write_run_config(config: Any) -> Path:
    """Write ``{output_dir}/run_config.json`` (:func:`run_record`)."""
    path = Path(config.output_dir) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_record(config), indent=2, sort_keys=True) + "\n")
    return path
