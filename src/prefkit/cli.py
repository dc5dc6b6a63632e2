"""The `prefkit` command line. Every computing command takes --json (one JSON object on
stdout); exit codes: 0 success, 2 bad input, 1 internal error."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from . import __version__
from .commands.common import bad_input, cli_errors, print_json
from .extras import missing_extra, missing_extra_message

if TYPE_CHECKING:  # typer carries its own click; the real package is not a dependency
    import click

#: Command groups: name -> the module whose ``app`` (a typer.Typer) holds its commands. A group
#: is imported only when it runs (or for --help), so `prefkit data ...` never loads torch.
GROUPS = {
    "data": "prefkit.commands.data",
    "arena": "prefkit.commands.arena",
    "store": "prefkit.commands.store",
    "models": "prefkit.commands.models",
    "train": "prefkit.commands.train",
    "rm": "prefkit.commands.rm",
    "lab": "prefkit.commands.lab",
    "serve": "prefkit.commands.serve",
    "judge": "prefkit.commands.judge",
    "eval": "prefkit.commands.eval",
}

#: Top-level commands built the same way: name -> the module whose ``app`` holds that command.
COMMANDS = {
    "serve-model": "prefkit.commands.serve_model",
}


class _LazyGroups(TyperGroup):
    """The top-level group: the :data:`GROUPS` sub-commands, each built from its module on
    first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*GROUPS, *COMMANDS, *super().list_commands(ctx)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> Any:
        module_name = GROUPS.get(cmd_name) or COMMANDS.get(cmd_name)
        if module_name is None:
            return super().get_command(ctx, cmd_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            message = missing_extra_message(exc)
            if message is None:
                raise
            command = typer.main.get_command(_needs_extra(message, missing_extra(exc)))
        else:
            build = typer.main.get_group if cmd_name in GROUPS else typer.main.get_command
            command = build(module.app)
        command.name = cmd_name
        return command


def _needs_extra(message: str, extra: str | None) -> typer.Typer:
    """A stand-in for a command group whose module needs an extra that is not installed (the
    light install has no torch): listed in ``prefkit --help`` with the extra to install; run
    (with any arguments, ``--help`` included) it says so and exits 2 (bad input: the command
    cannot run here), as the JSON object too under ``--json``."""
    stand_in = typer.Typer(add_completion=False)

    @stand_in.command(
        help=escape(f"(needs the {extra} extra: pip install 'prefkit[{extra}]')"),
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                          "help_option_names": []})
    def needs_extra(ctx: typer.Context) -> None:
        raise bad_input(message, "--json" in ctx.args, extra=extra)

    return stand_in


app = typer.Typer(
    cls=_LazyGroups,
    help="prefkit: learning from human feedback - collect, model, optimize, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
@cli_errors
def demo(
    workdir: Annotated[str | None, typer.Option(
        help="Where the tour writes its files (default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A guided tour on bundled example files (grows into the whole loop in later releases)."""
    from .demo import run_tour

    result = run_tour(workdir, quiet=as_json)
    if as_json:
        print_json(result)


@app.command()
def version() -> None:
    """Print the prefkit version."""
    print(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
