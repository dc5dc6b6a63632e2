"""`prefkit models ...`: make a model to start with (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOpt, bad_input, cli_errors, print_json, stdout

app = typer.Typer(no_args_is_help=True,
                  help="Models: make a small starter model + tokenizer to try every command.")


@app.command("init")
@cli_errors
def init(
    folder: Annotated[str, typer.Argument(help="Folder to create (e.g. ./my-model).")],
    data: Annotated[list[str] | None, typer.Option(
        help="Feedback file(s) whose text trains the tokenizer (repeatable; default: the "
             "bundled example files).")] = None,
    size: Annotated[str, typer.Option(
        help="tiny (2 layers, hidden 64, vocabulary <= 1024) or small (4 layers, hidden 256, "
             "vocabulary <= 4096).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random initial weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the model files of a folder that already holds a model.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a small Llama with random weights and a byte-level BPE tokenizer (with a chat
    template) trained locally on your data: a checkpoint folder for --model in every command.
    Train it (`prefkit train preference --model FOLDER ...`) before expecting sensible text."""
    from ..models.starter import SIZES, build_starter_model

    if size not in SIZES:
        raise bad_input(f"--size {size!r}: expected one of {', '.join(SIZES)}", as_json)
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise bad_input(f"{folder}: exists and is not a folder", as_json)
    if (target / "config.json").exists() and not overwrite:
        raise bad_input(f"{folder} already holds a model (config.json); choose another folder "
                        "or pass --overwrite", as_json)
    info = build_starter_model(target, data=data or (), size=size, seed=seed)
    if as_json:
        print_json(info)
        return
    stdout.print(f"created {folder}: a {size} Llama ({info['layers']} layers, hidden "
                 f"{info['hidden_size']}, {info['parameters'] / 1e6:.2f}M parameters, random "
                 f"weights), BPE tokenizer of {info['vocab_size']} tokens trained on "
                 f"{info['tokenizer_texts']} texts of {', '.join(info['tokenizer_data'])}. "
                 f"Use it as --model {folder}")
