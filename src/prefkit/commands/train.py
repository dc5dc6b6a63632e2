"""`prefkit train ...`: direct preference optimization (and, later, reward models and RL).

Every flag maps onto a field of :class:`prefkit.train.preference.PreferenceConfig`; a YAML file
(``--config run.yaml``) sets the same fields and ``--set key=value`` any other one. Runs
unchanged under ``accelerate launch`` / ``torchrun`` (data parallel).
"""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    JsonOpt,
    cli_errors,
    config_from_cli,
    finish_training,
    print_json,
    stderr,
    stdout,
)

app = typer.Typer(no_args_is_help=True, help="Train policies from feedback.")


@app.command("preference")
@cli_errors
def preference(
    model: Annotated[str | None, typer.Option(
        help="Checkpoint directory, or a .json/.yaml tiny-model file.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Training records (pairs, rankings or binary labels).")] = None,
    loss: Annotated[str | None, typer.Option(
        help="Loss spec, e.g. dpo, ipo, simpo, kto, lipo, 'dpo+0.2*sft', 'ipo(beta=0.5)'.")
    ] = None,
    beta: Annotated[float | None, typer.Option(help="beta for every term that takes one.")
                    ] = None,
    lora: Annotated[bool | None, typer.Option(
        "--lora/--no-lora", help="Train LoRA adapters; the reference is the base model.")
    ] = None,
    config: Annotated[str | None, typer.Option(help="YAML file with any config fields.")
                      ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Checkpoints and metrics.jsonl.")
                          ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per micro-batch.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    eval_data: Annotated[str | None, typer.Option(help="Evaluation records.")] = None,
    resume_from: Annotated[str | None, typer.Option(
        help="Checkpoint folder, or 'latest' in output_dir.")] = None,
    save_model: Annotated[str | None, typer.Option(
        help="Save the trained policy (and tokenizer) to this folder.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any other config field: --set warmup_steps=10 (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a causal LM on preference data with any direct loss (DPO, IPO, SimPO, ORPO, KTO,
    LiPO, ...): prompts computed once per group of responses, reference log-probs cached."""
    from ..train.preference import PreferenceConfig, save_policy, train_preference

    flags = {"model": model, "data": data, "loss": loss, "beta": beta, "lora": lora,
             "output_dir": output_dir, "max_steps": max_steps, "batch_size": batch_size,
             "learning_rate": learning_rate, "eval_data": eval_data,
             "resume_from": resume_from}
    cfg = config_from_cli(PreferenceConfig, config, flags, set_, as_json)
    result = train_preference(cfg)
    out = result.to_dict()
    if not finish_training(out, save_model, lambda folder: save_policy(result, folder), as_json):
        return
    metrics = out["metrics"]
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
             if k in ("loss", "rewards/accuracies", "rewards/margins", "eval/loss",
                      "eval/rewards/accuracies")}
    stdout.print(f"trained {out['steps']} steps with {out['loss']} ({out['kind']}): {shown}")
    if out["data"].get("skipped"):
        stderr.print(f"skipped records: {out['data']['skipped']}")
    if out.get("saved_model"):
        stdout.print(f"policy saved to {out['saved_model']}")


@app.command("losses")
@cli_errors
def list_losses(as_json: JsonOpt = False) -> None:
    """The registered losses: kind, whether they need a reference, inputs, hyper-parameters."""
    from .. import losses

    rows = [{"name": s.name, "kind": s.kind, "needs_reference": s.needs_reference,
             "hyperparameters": s.hyperparameters, "summary": s.summary}
            for s in losses.available().values()]
    if as_json:
        print_json({"losses": rows})
        return
    from rich.table import Table

    table = Table("loss", "kind", "reference", "hyper-parameters", "what")
    for r in rows:
        table.add_row(r["name"], r["kind"], "yes" if r["needs_reference"] else "no",
                      ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items()),
                      r["summary"])
    stdout.print(table)
