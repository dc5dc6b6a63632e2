"""`prefkit train ...`: policies from feedback -- direct preference losses (DPO, IPO, SimPO,
KTO, LiPO, ...) and online RL (PPO, GRPO, RLOO, ReMax, online DPO, RAFT, ...).

Every flag is a field of the run's config dataclass (:class:`~prefkit.train.preference.
PreferenceConfig`, :class:`~prefkit.train.online.OnlineConfig`), declared once there: its type,
default and help text become the flag (:func:`~prefkit.commands.common.config_flags`). A YAML
file (``--config run.yaml``) sets the same fields and ``--set key=value`` any other one. Runs
unchanged under ``accelerate launch`` / ``torchrun`` (data parallel).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..train.online import OnlineConfig
from ..train.preference import PreferenceConfig
from ..train.preference_data import truncation_note
from .common import (
    JsonOpt,
    cli_errors,
    config_flags,
    config_from_cli,
    finish_training,
    print_json,
    stderr,
    stdout,
)

app = typer.Typer(no_args_is_help=True,
                  help="Train policies: direct preference losses and online RL.")

ConfigOpt = Annotated[str | None, typer.Option(
    help="YAML file with any config fields (flags and --set override it).")]
SaveModelOpt = Annotated[str | None, typer.Option(
    help="Save the trained policy (and tokenizer) to this folder.")]

#: Config fields that are flags of `prefkit train preference` (every other one: --set).
PREFERENCE_FLAGS = ("model", "data", "loss", "beta", "lora", "output_dir", "max_steps",
                    "batch_size", "learning_rate", "eval_data", "resume_from", "overwrite",
                    "attention", "sharding")
#: Config fields that are flags of `prefkit train online`.
ONLINE_FLAGS = ("model", "prompts", "reward", "algo", "iterations", "num_generations",
                "prompts_per_iteration", "max_prompt_length", "max_new_tokens",
                "learning_rate", "kl_coef", "lora", "output_dir", "resume_from", "overwrite",
                "sharding", "reward_workers", "reward_timeout", "reward_failure_value")


@app.command("preference")
@cli_errors
@config_flags(PreferenceConfig, PREFERENCE_FLAGS)
def preference(
    flags: dict[str, Any],
    config: ConfigOpt = None,
    save_model: SaveModelOpt = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any other PreferenceConfig field: --set warmup_steps=10 (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a causal LM on preference data with any direct loss (DPO, IPO, SimPO, ORPO, KTO,
    LiPO, ...): prompts computed once per group of responses, reference log-probs cached."""
    from ..train.preference import save_policy, train_preference

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
    note = truncation_note(out["truncation"])
    if note:
        stderr.print(note, markup=False)
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
@config_flags(OnlineConfig, ONLINE_FLAGS)
def online(
    flags: dict[str, Any],
    config: ConfigOpt = None,
    save_model: SaveModelOpt = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any other OnlineConfig field: --set max_new_tokens=64 (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Online RL from any reward: sample from the policy, score, update (--algo: any registered
    online algorithm -- PPO, RLOO, GRPO, Dr. GRPO, ReMax, REINFORCE, online DPO, online IPO,
    RAFT, DAPO, GSPO, REINFORCE++); each prompt computed once for its samples."""
    from ..models.load import save_model as save_pretrained
    from ..specs import resolve_model, resolve_prompts, reward_from_spec
    from ..train.online import train_online
    from .common import bad_input, check_run_start

    cfg = config_from_cli(OnlineConfig, config, flags, set_, as_json,
                          required=("model", "prompts", "reward"), check_output_dir=False)
    try:
        prompt_list = resolve_prompts(cfg.prompts, seed=cfg.seed)  # bad prompts: before loading
        policy, tokenizer = resolve_model(cfg)
        source = ("self" if cfg.reward == "self"
                  else reward_from_spec(cfg.reward, tokenizer=tokenizer, prompts=cfg.prompts,
                                        workers=cfg.reward_workers, timeout=cfg.reward_timeout,
                                        failure_value=cfg.reward_failure_value))
    except (ValueError, FileNotFoundError) as exc:
        raise bad_input(str(exc), as_json) from None
    check_run_start(cfg, as_json)
    result = train_online(cfg, reward=source, prompts=prompt_list, model=policy,
                          tokenizer=tokenizer)
    out = result.to_dict()

    if not finish_training(out, save_model, lambda folder: save_pretrained(policy, tokenizer,
                                                                             folder), as_json):
        return
    first, last = out["iterations"][0], out["iterations"][-1]
    stdout.print(f"{cfg.algo}: {out['steps']} steps, reward {first['reward']:.4g} -> "
                 f"{last['reward']:.4g}, KL {last['kl']}, length {last['length']}, "
                 f"truncated {last['truncated']:.1%}")
    stdout.print(f"generation: {out['generation']['backend']} ({out['generation']['why']})")
    cut = out["truncation"]
    if cut.get("prompts_truncated"):
        stdout.print(f"{cut['prompts_truncated']} sampled prompts were longer than "
                     f"max_prompt_length={cut['max_prompt_length']} tokens and kept their last "
                     "tokens")
    if out.get("saved_model"):
        stdout.print(f"policy saved to {out['saved_model']}")
