"""Shared CLI plumbing: the `--json` contract (one JSON object on stdout, logs on stderr),
exit codes (0 success, 2 bad input naming file/line/field, 1 internal error, 130 interrupted)
and training-command flags built from the config dataclasses (:func:`config_flags`)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import os
import shlex
import sys
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from ..data.errors import RecordError
from ..extras import missing_extra, missing_extra_message

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
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


USER_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM,  # permission denied, operation not permitted
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,  # full disk, quota, size, read-only
    errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST,  # path too long, symlink loop, exists
})
"""OS errors about the user's files and disks (with missing files, folders where files go and
the reverse): bad input, exit code 2. Any other OS error (a broken pipe, a bad file
descriptor, ...) is an internal error."""


def os_error_message(exc: OSError) -> str:
    """``PATH: No space left on device`` (``PATH -> OTHER: ...`` for a rename); the error's own
    text when it names no file."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    where = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {reason}"


def cli_errors(func: Callable) -> Callable:
    """Map exceptions to the exit-code contract: RecordError / ValueError / missing files, and
    OS errors about the user's paths (:data:`USER_ERRNOS`: no permission, no space left, a
    read-only file system, ...; the message names the path) are bad input (2); Ctrl-C is 130
    (with where a training run stopped and how to resume it); anything else is an internal
    error (1) with a traceback on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as exc:
            raise interrupted(exc, as_json) from None
        except RecordError as exc:
            raise bad_input(str(exc), as_json, detail=exc.to_dict()) from None
        except ModuleNotFoundError as exc:
            message = missing_extra_message(exc)
            if message is None:
                raise _internal(exc, as_json) from None
            raise bad_input(message, as_json, extra=missing_extra(exc)) from None
        except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise bad_input(str(exc), as_json) from None
        except OSError as exc:
            if exc.errno not in USER_ERRNOS:
                raise _internal(exc, as_json) from None
            raise bad_input(os_error_message(exc), as_json) from None
        except Exception as exc:  # noqa: BLE001 - the contract: exit 1 with the trace on stderr
            raise _internal(exc, as_json) from None

    return wrapper


def _internal(exc: BaseException, as_json: bool) -> typer.Exit:
    """An internal error (exit code 1): the traceback on stderr (called while ``exc`` is being
    handled), and in --json mode the error as the JSON object."""
    traceback.print_exception(exc)
    if as_json:
        print_json({"ok": False, "error": f"internal error: {exc!r}"})
    return typer.Exit(EXIT_INTERNAL)


def command_line(ctx: Any, resume: bool) -> str:
    """The command of click context ``ctx`` rebuilt from its parsed parameters (``prefkit train
    preference --model ...``), for a user to copy; with ``resume`` it continues the run
    (``--resume-from latest``, without ``--overwrite``)."""
    words = ["prefkit", *ctx.command_path.split()[1:]]
    skip = {"resume_from", "overwrite"} if resume else {"resume_from"}
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in skip or value is None or value == () or value is False:
            continue
        if param.param_type_name != "option":
            words += [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
        elif param.is_flag and param.secondary_opts:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            words.append(param.opts[0])
        elif param.multiple:
            for item in value:
                words += [param.opts[0], str(item)]
        else:
            words += [param.opts[0], str(value)]
    if resume:
        words += ["--resume-from", "latest"]
    return shlex.join(words)


def interrupted(exc: KeyboardInterrupt, as_json: bool) -> typer.Exit:
    """Ctrl-C (exit code 130). For a training run (:class:`~prefkit.train.loop.
    TrainingInterrupted`): where it stopped, its last checkpoint and, from a command built by
    :func:`config_flags`, the command that resumes it (or starts it over when no checkpoint was
    saved yet)."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun: the main process reports
        return typer.Exit(EXIT_INTERRUPTED)
    step = getattr(exc, "step", None)
    ctx = getattr(exc, "context", None)
    info: dict[str, Any] = {"ok": False, "interrupted": True}
    if step is None:
        detail = str(exc)
        message = ("interrupted before training started" if ctx is not None
                   else detail or "interrupted")
    else:
        checkpoint = exc.checkpoint
        info |= {"step": step, "total_steps": exc.total, "output_dir": exc.output_dir,
                 "checkpoint": checkpoint}
        message = f"interrupted after step {step} of {exc.total}; "
        if checkpoint:
            message += f"last checkpoint: {checkpoint}"
            if ctx is not None:
                info["resume_command"] = command_line(ctx, resume=True)
                message += f". Resume with:\n  {info['resume_command']}"
        else:
            message += f"no checkpoint was saved yet (in {exc.output_dir})"
            if ctx is not None:
                info["restart_command"] = command_line(ctx, resume=False)
                message += f", so the run starts over with:\n  {info['restart_command']}"
    stderr.print(f"[yellow]{escape(message)}[/yellow]")
    if as_json:
        print_json({**info, "error": message})
    return typer.Exit(EXIT_INTERRUPTED)


# ---------------------------------------------------------------------------------------------
# training commands: flags from config fields


def _flag_type(tp: Any) -> Any:
    """The type typer parses for a config field annotated ``tp`` (Optional stripped)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _flag_type(args[0])
    if tp not in (str, int, float, bool):
        raise TypeError(f"config field type {tp} cannot be a flag: keep it for --set")
    return tp


def config_flags(cls: type, names: Sequence[str]) -> Callable[[Callable], Callable]:
    """Give a typer command one ``--flag`` per config field in ``names`` of dataclass ``cls``,
    defined once: the type from the field's annotation, the help text from its
    ``metadata["help"]``, the shown default from its default, and
    the default ``None`` meaning "not given" (the YAML file or the field default applies).
    Booleans become ``--name/--no-name``. The decorated function takes the given values as a
    keyword argument ``flags`` (``{name: value or None}``), to pass to :func:`config_from_cli`;
    every other field stays reachable with ``--set name=value``. A Ctrl-C carries the command's
    click context (``exc.context``) so :func:`interrupted` can print the resume command."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)

    def option_for(name: str) -> inspect.Parameter:
        f = fields[name]
        tp = _flag_type(hints[name])
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag]
        default = f.default if f.default is not dataclasses.MISSING else None
        shown: Any = False if default in (None, "") else str(default)
        help_text = f.metadata["help"]
        opt = typer.Option(*decls, help=help_text, show_default=shown)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[tp | None, opt])

    # typer passes the click context to a parameter annotated typer.Context: kept on a Ctrl-C
    # so that the message can give the exact command that resumes the run
    context = inspect.Parameter("_typer_context", inspect.Parameter.KEYWORD_ONLY,
                                annotation=typer.Context)
    generated = [option_for(n) for n in names]

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func, eval_str=True)
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                for p in sig.parameters.values() if p.name != "flags"]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop(context.name, None)
            flags = {n: kwargs.pop(n, None) for n in names}
            try:
                return func(*args, flags=flags, **kwargs)
            except KeyboardInterrupt as exc:
                exc.context = ctx  # type: ignore[attr-defined]
                raise

        params = [context, *generated, *rest]
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def config_from_cli(cls: type, config_path: str | None, flags: dict[str, Any],
                    set_: list[str] | None, as_json: bool,
                    required: tuple[str, ...] = ("model", "data"),
                    check_output_dir: bool = True) -> Any:
    """A training config (``cls``, a :class:`~prefkit.train.config.LoopConfig` subclass) from a
    YAML file, then the explicit flags (``None`` = not given), then ``--set key=value`` pairs;
    bad keys or values are bad input. ``model`` and ``data`` are required; ``--json`` turns the
    progress bar off. With ``check_output_dir`` the output folder is checked at once (another
    run there, a resume with other settings: :mod:`prefkit.train.run_dir`), before any model is
    loaded; training checks it again."""
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
    if check_output_dir:
        check_run_start(cfg, as_json)
    return cfg


def check_run_start(cfg: Any, as_json: bool) -> None:
    """Bad input (exit 2) when ``cfg`` may not start or resume in its output folder."""
    from ..train.checkpoint import resolve_resume
    from ..train.config import ConfigError
    from ..train.run_dir import check_run_dir

    try:
        check_run_dir(cfg, resolve_resume(cfg.output_dir, cfg.resume_from))
    except (ConfigError, FileNotFoundError) as exc:
        raise bad_input(str(exc), as_json) from None


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
