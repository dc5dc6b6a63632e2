"""`prefkit rm ...`: train, score and evaluate reward models.

Input rows for ``score`` and ``eval`` (JSONL / JSON / Parquet / HF datasets):

- pairs: ``prompt, chosen, rejected`` (TRL / RewardBench, optional ``subset``);
- K-response sets: ``prompt, responses`` (+ ``ranking`` best first for ``eval``);
- single responses: ``prompt, response`` (or ``completion``) -- ``score`` only.

Conversational prompts/responses (lists of ``{role, content}``) go through the chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..train.reward import RewardConfig
from .common import (
    JsonOpt,
    bad_input,
    cli_errors,
    config_flags,
    config_from_cli,
    finish_training,
    print_json,
    stdout,
)

app = typer.Typer(no_args_is_help=True, help="Reward models: train, score, evaluate.")


def _load_scorer(model: str, implicit_reference: str | None, beta: float, implicit: bool):
    """A saved reward model, or a DPO policy's implicit reward (--implicit)."""
    if implicit or implicit_reference:
        from ..rewards.implicit import ImplicitReward

        return ImplicitReward.from_paths(model, implicit_reference, beta=beta)
    from ..rewards import RewardModel

    if not (Path(model) / "reward_config.json").exists():
        raise ValueError(f"{model}: not a prefkit reward model folder (no reward_config.json); "
                         "train one with `prefkit rm train --save-model`, or score a DPO policy "
                         "with --implicit")
    return RewardModel.from_pretrained(model)


def _rows(path: str) -> list[dict[str, Any]]:
    from ..data.io import iter_rows

    if not Path(path).exists():
        raise FileNotFoundError(f"no such file: {path}")
    rows = []
    for row in iter_rows(path):
        if row.error is not None:
            raise row.error
        rows.append(row.data)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _shape(rows: list[dict], path: str) -> str:
    first = rows[0]
    for shape, keys in (("pairs", ("prompt", "chosen", "rejected")),
                        ("sets", ("prompt", "responses"))):
        if all(k in first for k in keys):
            missing = [(i, k) for i, r in enumerate(rows) for k in keys if k not in r]
            if missing:
                i, k = missing[0]
                raise ValueError(f"{path}: record {i + 1}: missing field {k!r} (expected the "
                                 f"{shape} columns {', '.join(keys)})")
            return shape
    if "prompt" in first and ("response" in first or "completion" in first):
        return "single"
    raise ValueError(f"{path}: record 1: expected prompt+chosen+rejected, prompt+responses or "
                     f"prompt+response fields, got {sorted(first)}")


#: Config fields that are flags of `prefkit rm train` (every other one: --set).
TRAIN_FLAGS = ("model", "data", "objective", "head", "lora", "output_dir", "max_steps",
               "batch_size", "learning_rate", "eval_data", "resume_from", "overwrite")


@app.command("train")
@cli_errors
@config_flags(RewardConfig, TRAIN_FLAGS)
def train(
    flags: dict[str, Any],
    config: Annotated[str | None, typer.Option(
        help="YAML file with any config fields (flags and --set override it).")] = None,
    save_model: Annotated[str | None, typer.Option(help="Save the reward model here.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any other RewardConfig field: --set warmup_steps=10 (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a reward model (prompt computed once per pair or ranking)."""
    from ..train.reward import train_reward

    cfg = config_from_cli(RewardConfig, config, flags, set_, as_json)
    result = train_reward(cfg)
    out = result.to_dict()
    model = getattr(result.model, "module", result.model)
    if not finish_training(out, save_model,
                           lambda folder: model.save_pretrained(folder, tokenizer=result.tokenizer),
                           as_json):
        return
    m = out["metrics"]
    stdout.print(f"trained {out['steps']} steps ({out['objective']}, head {out['head']}): "
                 f"loss {m.get('loss', float('nan')):.4f}, accuracy {m.get('accuracy', '-')}")


@app.command("score")
@cli_errors
def score(
    model: Annotated[str, typer.Argument(help="Reward model folder (or a policy with "
                                              "--implicit).")],
    data: Annotated[str, typer.Argument(help="Rows to score.")],
    out: Annotated[str, typer.Option(help="Output JSONL: the input rows plus rewards.")
                   ] = "scores.jsonl",
    batch_size: Annotated[int, typer.Option()] = 16,
    implicit: Annotated[bool, typer.Option(help="Score with a DPO policy's implicit reward.")
                        ] = False,
    reference: Annotated[str | None, typer.Option(help="Reference for --implicit.")] = None,
    beta: Annotated[float, typer.Option(help="beta of the implicit reward.")] = 0.1,
    as_json: JsonOpt = False,
) -> None:
    """Add rewards to every row: ``reward`` (single), ``chosen_reward``/``rejected_reward``
    (pairs) or ``rewards`` (sets)."""
    import orjson

    from ..rewards.scoring import score_groups

    rows = _rows(data)
    shape = _shape(rows, data)
    scorer = _load_scorer(model, reference, beta, implicit)
    if shape == "pairs":
        responses = [[r["chosen"], r["rejected"]] for r in rows]
    elif shape == "sets":
        responses = [list(r["responses"]) for r in rows]
    else:
        responses = [[r.get("response", r.get("completion"))] for r in rows]
    rewards = score_groups(scorer, [r["prompt"] for r in rows], responses,
                           tokenizer=scorer.tokenizer, batch_size=batch_size)
    with open(out, "wb") as fh:
        for row, values in zip(rows, rewards.tolist(), strict=True):
            if shape == "pairs":
                row = {**row, "chosen_reward": values[0], "rejected_reward": values[1]}
            elif shape == "sets":
                row = {**row, "rewards": values[: len(row["responses"])]}
            else:
                row = {**row, "reward": values[0]}
            fh.write(orjson.dumps(row) + b"\n")
    result = {"scored": len(rows), "shape": shape, "out": out}
    if as_json:
        print_json(result)
    else:
        stdout.print(f"scored {len(rows)} {shape} rows -> {out}")


@app.command("eval")
@cli_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="Reward model folder (or a policy with "
                                              "--implicit).")],
    data: Annotated[str, typer.Argument(help="Pairs (prompt, chosen, rejected[, subset]) or "
                                             "sets (prompt, responses, ranking).")],
    batch_size: Annotated[int, typer.Option()] = 16,
    bins: Annotated[int, typer.Option(help="Calibration bins.")] = 10,
    plot: Annotated[str | None, typer.Option(help="Reliability diagram PNG.")] = None,
    gold_column: Annotated[str | None, typer.Option(
        help="Boolean column: True when the gold annotator prefers chosen.")] = None,
    implicit: Annotated[bool, typer.Option(help="Evaluate a DPO policy's implicit reward.")
                        ] = False,
    reference: Annotated[str | None, typer.Option(help="Reference for --implicit.")] = None,
    beta: Annotated[float, typer.Option(help="beta of the implicit reward.")] = 0.1,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy (ties wrong and half), RewardBench sections, calibration (ECE, reliability
    diagram), reward-length correlation, the "longer wins" / "shorter wins" rules per subset,
    agreement with a gold annotator; best-of-K accuracy for ranked sets."""
    import numpy as np

    from ..evaluate.calibration import plot_reliability
    from ..evaluate.rm import evaluate_pairs, evaluate_sets
    from ..rewards.scoring import score_groups

    rows = _rows(data)
    shape = _shape(rows, data)
    if shape == "single":
        raise bad_input(f"{data}: eval needs pairs or ranked sets, got single responses", as_json)
    scorer = _load_scorer(model, reference, beta, implicit)
    prompts = [r["prompt"] for r in rows]
    if shape == "pairs":
        rewards, lengths = score_groups(scorer, prompts, [[r["chosen"], r["rejected"]]
                                                          for r in rows],
                                        tokenizer=scorer.tokenizer, batch_size=batch_size,
                                        with_lengths=True)
        subsets = [str(r["subset"]) for r in rows] if "subset" in rows[0] else None
        gold = (np.array([bool(r[gold_column]) for r in rows]) if gold_column else None)
        report = evaluate_pairs(rewards[:, 0].numpy(), rewards[:, 1].numpy(), subsets=subsets,
                                chosen_lengths=lengths[:, 0].numpy(),
                                rejected_lengths=lengths[:, 1].numpy(), gold=gold,
                                n_bins=bins)
        if plot:
            report["plot"] = str(plot_reliability(report["calibration"]["bins"], plot))
    else:
        if "ranking" not in rows[0]:
            raise bad_input(f"{data}: sets need a 'ranking' (best first) to evaluate", as_json)
        rewards, lengths = score_groups(scorer, prompts, [list(r["responses"]) for r in rows],
                                        tokenizer=scorer.tokenizer, batch_size=batch_size,
                                        with_lengths=True)
        best = np.array([r["ranking"][0] if not isinstance(r["ranking"][0], list)
                         else r["ranking"][0][0] for r in rows])
        mask = ~np.isnan(rewards.numpy())
        report = evaluate_sets(np.nan_to_num(rewards.numpy()), best, lengths=lengths.numpy(),
                               mask=mask)
    report["data"] = data
    if as_json:
        print_json(report)
        return
    stdout.print_json(data=report)
