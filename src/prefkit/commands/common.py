"""Shared CLI plumbing: the `--json` contract (one JSON object on stdout, logs on stderr) and
exit codes (0 success, 2 bad input naming file/line/field, 1 internal error)."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from ..data.errors import RecordError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def print_json(obj: Any) -> None:
    """Print ONE JSON object on stdout."""
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def bad_input(message: str, as_json: bool, **extra: Any) -> typer.Exit:
    """Report bad input (exit code 2): the message on stderr, and in --json mode as the JSON
    object on stdout."""
    stderr.print(f"[red]error:[/red] {escape(message)}")
    if as_json:
        print_json({"ok": False, "error": message, **extra})
    return typer.Exit(EXIT_BAD_INPUT)


def cli_errors(func: Callable) -> Callable:
    """Map exceptions to the exit-code contract: RecordError / ValueError / missing files are
    bad input (2); anything else is an internal error (1) with a traceback on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except RecordError as exc:
            raise bad_input(str(exc), as_json, detail=exc.to_dict()) from None
        except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise bad_input(str(exc), as_json) from None
        except Exception as exc:  # noqa: BLE001 - the contract: exit 1 with the trace on stderr
            traceback.print_exc()
            if as_json:
                print_json({"ok": False, "error": f"internal error: {exc!r}"})
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def config_from_cli(cls: type, config_path: str | None, flags: dict[str, Any],
                    set_: list[str] | None, as_json: bool,
                    required: tuple[str, ...] = ("model", "data")) -> Any:
    """A training config (``cls``, a :class:`~prefkit.train.config.LoopConfig` subclass) from a
    YAML file, then the explicit flags (``None`` = not given), then ``--set key=value`` pairs;
    bad keys or values are bad input. ``model`` and ``data`` are required; ``--json`` turns the
    progress bar off."""
    from ..train.config import ConfigError, load_config, parse_overrides

    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        overrides.update(parse_overrides(set_ or []))
        cfg = load_config(config_path, cls=cls, **overrides)
    except ConfigError as exc:
        raise bad_input(str(exc), as_json) from None
    missing = [name for name in required if not getattr(cfg, name)]
    if missing:
        raise bad_input(" and ".join(f"--{m.replace('_', '-')}" for m in required)
                        + " are required (or set them in --config)", as_json)
    if as_json:
        cfg.progress = False
    return cfg


def finish_training(out: dict[str, Any], save_model: str | None, save: Callable[[str], Any],
                    as_json: bool) -> bool:
    """The end of a training command: ``save(save_model)`` on the main process only (under data
    parallelism every process holds the same weights), the JSON object on the main process with
    ``--json``. Returns True when the caller should print its human-readable summary.

    With several processes, all wait for the save and then close the process group: a process
    that exits with the group still open can abort in the collective backend's shutdown
    ("terminate called without an active exception", seen with gloo under torchrun)."""
    from accelerate import PartialState

    state = PartialState()
    main = state.is_main_process
    if save_model:
        if main:
            save(save_model)
        out["saved_model"] = save_model
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()
    if not main:
        return False
    if as_json:
        print_json(out)
        return False
    return True
