"""The `prefkit` command line. Every computing command takes --json (one JSON object on
stdout); exit codes: 0 success, 2 bad input, 1 internal error."""

from __future__ import annotations

from typing import Annotated

import typer

from . import __version__
from .commands.common import cli_errors, print_json
from .commands.data import app as data_app

app = typer.Typer(
    help="prefkit: learning from human feedback - collect, model, optimize, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")


def _add_arena() -> None:
    from .commands.arena import app as arena_app

    app.add_typer(arena_app, name="arena", help="Arena leaderboards, next matches, simulations.")


_add_arena()


def _add_store() -> None:
    from .commands.store import app as store_app

    app.add_typer(store_app, name="store", help="The feedback store: import, export, stats.")


_add_store()


def _add_train() -> None:
    from .commands.train import app as train_app

    app.add_typer(train_app, name="train", help="Train policies: direct preference losses.")


_add_train()


def _add_rm() -> None:
    from .commands.rm import app as rm_app

    app.add_typer(rm_app, name="rm", help="Reward models: train, score, evaluate.")


_add_rm()


def _add_lab() -> None:
    from .commands.lab import app as lab_app

    app.add_typer(lab_app, name="lab", help="The lab: the whole loop on simulated feedback.")


_add_lab()


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
