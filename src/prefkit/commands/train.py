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


@app.command("online")
@cli_errors
def online(
    model: Annotated[str | None, typer.Option(
        help="Policy checkpoint directory, a tiny-model file, or lab:TASK (the lab's cached "
             "SFT model of that task).")] = None,
    prompts: Annotated[str | None, typer.Option(
        help="Prompts file (.txt one a line, or JSONL with 'prompt'), or lab:TASK[:N] "
             "(N prompts of a lab task).")] = None,
    reward: Annotated[str | None, typer.Option(
        help="rm:PATH, implicit:POLICY[,REF], gold:TASK, python:module:function, or self "
             "(the policy's own implicit reward).")] = None,
    algo: Annotated[str | None, typer.Option(
        help="ppo, reinforce, rloo, grpo, dr_grpo, remax, online-dpo, online-ipo or raft.")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Rollout/update iterations.")] = None,
    num_generations: Annotated[int | None, typer.Option(
        help="Completions per prompt (group size).")] = None,
    prompts_per_iteration: Annotated[int | None, typer.Option(
        help="Prompts per iteration (global).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    kl_coef: Annotated[float | None, typer.Option(help="KL coefficient.")] = None,
    lora: Annotated[bool | None, typer.Option(
        "--lora/--no-lora", help="Train LoRA adapters; the reference is the base model.")
    ] = None,
    config: Annotated[str | None, typer.Option(help="YAML file with any config fields.")
                      ] = None,
    output_dir: Annotated[str | None, typer.Option(
        help="Checkpoints, metrics.jsonl and rollouts.jsonl.")] = None,
    save_model: Annotated[str | None, typer.Option(
        help="Save the trained policy (and tokenizer) to this folder.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any other OnlineConfig field: --set max_new_tokens=64 (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Online RL from any reward: sample from the policy, score, update (PPO, RLOO, GRPO,
    ReMax, REINFORCE, online DPO, online IPO, RAFT); each prompt computed once for its
    samples."""
    from ..rewards.sources import reward_from_spec
    from ..train.online import OnlineConfig, resolve_model, resolve_prompts, train_online
    from .common import bad_input

    flags = {"model": model, "prompts": prompts, "reward": reward, "algo": algo,
             "iterations": iterations, "num_generations": num_generations,
             "prompts_per_iteration": prompts_per_iteration, "learning_rate": learning_rate,
             "kl_coef": kl_coef, "lora": lora, "output_dir": output_dir}
    cfg = config_from_cli(OnlineConfig, config, flags, set_, as_json,
                          required=("model", "prompts", "reward"))
    try:
        policy, tokenizer = resolve_model(cfg)
        prompt_list = resolve_prompts(cfg.prompts, seed=cfg.seed)
        source = ("self" if cfg.reward == "self"
                  else reward_from_spec(cfg.reward, tokenizer=tokenizer))
    except (ValueError, FileNotFoundError) as exc:
        raise bad_input(str(exc), as_json) from None
    result = train_online(cfg, reward=source, prompts=prompt_list, model=policy,
                          tokenizer=tokenizer)
    out = result.to_dict()

    def save(folder: str) -> None:
        policy.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    if not finish_training(out, save_model, save, as_json):
        return
    first, last = out["iterations"][0], out["iterations"][-1]
    stdout.print(f"{cfg.algo}: {out['steps']} steps, reward {first['reward']:.4g} -> "
                 f"{last['reward']:.4g}, KL {last['kl']}, length {last['length']}, "
                 f"truncated {last['truncated']:.1%}")
    if out.get("saved_model"):
        stdout.print(f"policy saved to {out['saved_model']}")
