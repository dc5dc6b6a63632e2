"""`prefkit rm ...`: train, score and evaluate reward models.

Input rows for ``score`` and ``eval`` come through prefkit's readers (JSONL / JSON / Parquet /
HF dataset folders, ``FOLDER::split``) and are checked field by field
(:mod:`prefkit.rewards.inputs`; a bad row is exit 2 naming file, row and field):

- pairs: ``prompt, chosen, rejected`` (TRL / RewardBench, optional ``subset``; any comparison
  format with a winner);
- K-response sets: ``prompt, responses`` (+ ``ranking`` best first for ``eval``);
- single responses: ``prompt, response`` (or ``completion``) -- ``score`` only.

Conversational prompts/responses (lists of ``{role, content}``) go through the chat template.
Every sequence scored is at most ``--max-length`` tokens (prompts keep their last tokens,
responses their first; :mod:`prefkit.rewards.scoring`), whatever the size of the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..train.reward import RewardConfig
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

app = typer.Typer(no_args_is_help=True, help="Reward models: train, score, evaluate.")


MaxLengthOpt = Annotated[int | None, typer.Option(
    help="Max tokens of prompt + one response (default: the model's max_position_embeddings, "
         "at most 4096). Longer prompts keep their last tokens, responses their first; cuts "
         "are counted in the output.")]
MaxPromptLengthOpt = Annotated[int | None, typer.Option(
    help="Max prompt tokens (default: as many as leave room for the longest response of the "
         "group, and at least half of --max-length).")]
ImplicitOpt = Annotated[bool, typer.Option(
    help="Score with a DPO policy's implicit reward beta * (log pi - log pi_ref). Without "
         "--reference it is REFERENCE-FREE, beta * log pi(y|x), which ranks responses "
         "differently (a warning says so).")]
ReferenceOpt = Annotated[str | None, typer.Option(
    help="Reference model of --implicit (usually the SFT model the policy started from).")]
REFERENCE_FREE_NOTE = ("--implicit without --reference: rewards are reference-free, "
                       "beta * log pi(y|x), not DPO's beta * log(pi / pi_ref); pass "
                       "--reference SFT_MODEL for the implicit reward the policy was trained "
                       "with")


def _load_scorer(model: str, implicit_reference: str | None, beta: float, implicit: bool
                 ) -> tuple[Any, dict[str, Any]]:
    """A saved reward model, or a DPO policy's implicit reward (--implicit); and what the output
    should say about the reference (``{}`` for a reward model)."""
    if implicit or implicit_reference:
        from ..rewards.implicit import ImplicitReward

        info: dict[str, Any] = {"reference": implicit_reference}
        if implicit_reference is None:
            info["note"] = REFERENCE_FREE_NOTE
            stderr.print(f"[yellow]warning:[/yellow] {escape(REFERENCE_FREE_NOTE)}")
        return ImplicitReward.from_paths(model, implicit_reference, beta=beta), info
    from ..rewards import RewardModel

    if not (Path(model) / "reward_config.json").exists():
        raise ValueError(f"{model}: not a prefkit reward model folder (no reward_config.json); "
                         "train one with `prefkit rm train --save-model`, or score a DPO policy "
                         "with --implicit")
    return RewardModel.from_pretrained(model), {}


def _score(scorer: Any, data: Any, batch_size: int, max_length: int | None,
           max_prompt_length: int | None) -> tuple[Any, Any, Any]:
    """(rewards [N, Kmax], completion lengths [N, Kmax], Truncation) of the groups of ``data``
    (a :class:`~prefkit.rewards.inputs.ScoreInput`) within the token budget."""
    from ..rewards.scoring import default_max_length, score_prompt_groups, tokenize_groups

    tokenizer = scorer.tokenizer
    if tokenizer is None:
        raise ValueError("the model folder has no tokenizer to score text with")
    if not getattr(tokenizer, "chat_template", None):
        for line, prompt, responses in zip(data.lines, data.prompts, data.responses,
                                           strict=True):
            if not all(isinstance(t, str) for t in (prompt, *responses)):
                raise ValueError(f"{data.source}: row {line} is a conversation (messages), but "
                                 "the model's tokenizer has no chat template to render it")
    if max_length is not None and max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"--max-prompt-length must be >= 1, got {max_prompt_length}")
    budget = max_length if max_length is not None else default_max_length(scorer)
    groups, truncation = tokenize_groups(tokenizer, data.prompts, data.responses,
                                         max_length=budget, max_prompt_length=max_prompt_length)
    if truncation.prompts or truncation.responses:
        stderr.print(f"note: {truncation.summary()}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rewards, lengths = score_prompt_groups(scorer, groups, pad_id=pad, batch_size=batch_size)
    return rewards, lengths, truncation


def _evaluate_genrm(model: str, rows: Any, data: str, batch_size: int, bins: int
                    ) -> dict[str, Any]:
    """`rm eval` for a generative reward model: pairs only; its calibrated preference
    ``p(chosen > rejected)`` enters the pair report as the reward margin ``logit(p)``, so
    accuracy is ``p > 1/2`` and the calibration bins are ``p`` itself."""
    import numpy as np

    from ..data.records import text_content
    from ..evaluate.rm import evaluate_pairs
    from ..rewards.generative import GenerativeRewardModel

    if rows.shape != "pairs":
        raise ValueError(f"{data}: holds ranked sets; a generative reward model compares pairs")
    genrm = GenerativeRewardModel.from_pretrained(model)
    best = [int(b) for b in rows.best]
    chosen = [text_content(r[b]) for r, b in zip(rows.responses, best, strict=True)]
    rejected = [text_content(r[1 - b]) for r, b in zip(rows.responses, best, strict=True)]
    p = genrm.preferences(rows.prompts, chosen, rejected, batch_size=batch_size).double()
    p = p.clamp(1e-12, 1 - 1e-12).numpy()
    n_tokens = [len(genrm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in
                (*chosen, *rejected)]
    report = evaluate_pairs(np.log(p) - np.log1p(-p), np.zeros(len(p)), subsets=rows.subsets,
                            chosen_lengths=np.array(n_tokens[:len(p)]),
                            rejected_lengths=np.array(n_tokens[len(p):]),
                            gold=None if rows.gold is None else np.array(rows.gold),
                            n_bins=bins)
    report.update(data=data, model_kind="generative")
    return report


#: Config fields that are flags of `prefkit rm train` (every other one: --set).
TRAIN_FLAGS = ("model", "data", "objective", "head", "lora", "output_dir", "max_steps",
               "batch_size", "learning_rate", "eval_data", "resume_from", "overwrite",
               "attention", "sharding")


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
    from ..train.preference_data import truncation_note
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
    note = truncation_note(out["truncation"])
    if note:
        stderr.print(note, markup=False)


@app.command("train-genrm")
@cli_errors
def train_genrm_command(
    config: Annotated[str | None, typer.Option(
        help="YAML file with any GenRMConfig fields (--set overrides it).")] = None,
    save_model: Annotated[str | None, typer.Option(help="Save the generative RM here (use "
                                                         "it as --judge genrm:PATH).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Any GenRMConfig field: --set model=M --set data=D (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a generative reward model: a causal LM that writes the verdict token (A / B)
    after both responses, every pair in both orders; its position-calibrated verdict
    probability is the preference (prefkit.rewards.generative)."""
    from ..train.genrm import GenRMConfig, train_genrm

    cfg = config_from_cli(GenRMConfig, config, {}, set_, as_json)
    result = train_genrm(cfg)
    fit = result.fit
    out = {"ok": True, "steps": fit.steps, "metrics": fit.metrics, "seconds": fit.seconds,
           "data": result.data, "checkpoints": fit.checkpoints}
    if finish_training(out, save_model, result.genrm.save_pretrained, as_json):
        stdout.print(f"trained {fit.steps} steps: loss "
                     f"{fit.metrics.get('loss', float('nan')):.4f}, verdict accuracy "
                     f"{fit.metrics.get('accuracy', '-')}")


@app.command("score")
@cli_errors
def score(
    model: Annotated[str, typer.Argument(help="Reward model folder (or a policy with "
                                              "--implicit).")],
    data: Annotated[str, typer.Argument(help="Rows to score (a file, a dataset folder or "
                                             "FOLDER::split).")],
    out: Annotated[str, typer.Option(help="Output JSONL: the input rows plus rewards.")
                   ] = "scores.jsonl",
    batch_size: Annotated[int, typer.Option(help="Prompt groups per forward.")] = 16,
    max_length: MaxLengthOpt = None,
    max_prompt_length: MaxPromptLengthOpt = None,
    implicit: ImplicitOpt = False,
    reference: ReferenceOpt = None,
    beta: Annotated[float, typer.Option(help="beta of the implicit reward.")] = 0.1,
    as_json: JsonOpt = False,
) -> None:
    """Add rewards to every row: ``reward`` (single), ``chosen_reward``/``rejected_reward``
    (pairs with chosen/rejected columns) or ``rewards`` (sets, and other pair formats: in
    response_a, response_b order)."""
    import orjson

    from ..data.io import check_output_path, naming_output
    from ..rewards.inputs import read_score_input

    rows = read_score_input(data)
    check_output_path(out)
    scorer, info = _load_scorer(model, reference, beta, implicit)
    rewards, _, truncation = _score(scorer, rows, batch_size, max_length, max_prompt_length)
    with naming_output(out), open(out, "wb") as fh:
        for row, group, values in zip(rows.rows, rows.responses, rewards.tolist(), strict=True):
            if rows.chosen_rejected:
                row = {**row, "chosen_reward": values[0], "rejected_reward": values[1]}
            elif rows.shape != "single":
                row = {**row, "rewards": values[: len(group)]}
            else:
                row = {**row, "reward": values[0]}
            fh.write(orjson.dumps(row) + b"\n")
    result = {"scored": len(rows.rows), "shape": rows.shape, "out": out,
              "truncation": truncation.to_dict(), **info}
    if as_json:
        print_json(result)
    else:
        stdout.print(f"scored {len(rows.rows)} {rows.shape} rows -> {out}")


@app.command("eval")
@cli_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="Reward model folder (or a policy with "
                                              "--implicit).")],
    data: Annotated[str, typer.Argument(help="Pairs (prompt, chosen, rejected[, subset]) or "
                                             "sets (prompt, responses, ranking): a file, a "
                                             "dataset folder or FOLDER::split.")],
    batch_size: Annotated[int, typer.Option(help="Prompt groups per forward.")] = 16,
    bins: Annotated[int, typer.Option(help="Calibration bins.")] = 10,
    plot: Annotated[str | None, typer.Option(
        help="Pairs: write the reliability diagram: FILE.png, or a folder (gets "
             "reliability.png).")] = None,
    gold_column: Annotated[str | None, typer.Option(
        help="Boolean column: True when the gold annotator prefers chosen.")] = None,
    max_length: MaxLengthOpt = None,
    max_prompt_length: MaxPromptLengthOpt = None,
    implicit: ImplicitOpt = False,
    reference: ReferenceOpt = None,
    beta: Annotated[float, typer.Option(help="beta of the implicit reward.")] = 0.1,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy (ties wrong and half), RewardBench sections, calibration (ECE, reliability
    diagram), reward-length correlation, the "longer wins" / "shorter wins" rules per subset,
    agreement with a gold annotator; best-of-K accuracy for ranked sets. Prints a summary;
    --json prints the full report."""
    import numpy as np

    from ..data.io import figure_path, naming_output
    from ..evaluate.calibration import plot_reliability
    from ..evaluate.rm import evaluate_pairs, evaluate_sets
    from ..rewards.inputs import read_score_input

    plot_path = None if plot is None else figure_path(plot, "reliability.png", "--plot")
    rows = read_score_input(data, need_ranking=True, gold_column=gold_column)
    if plot_path is not None and rows.shape != "pairs":
        raise ValueError(f"--plot: the reliability diagram is drawn for pairs; {data} holds "
                         f"ranked sets")
    ties = [i for i, b in enumerate(rows.best) if b is None]
    if ties:
        keep = [i for i, b in enumerate(rows.best) if b is not None]
        if not keep:
            raise ValueError(f"{data}: every pair is a tie; nothing to evaluate")
        stderr.print(f"note: {len(ties)} tied pairs skipped (rows "
                     f"{', '.join(str(rows.lines[i]) for i in ties[:5])}"
                     f"{', ...' if len(ties) > 5 else ''})")
        rows = rows.select(keep)
    from ..rewards.generative import GENRM_CONFIG

    if (Path(model) / GENRM_CONFIG).exists():
        report = _evaluate_genrm(model, rows, data, batch_size, bins)
        if ties:
            report["skipped_ties"] = len(ties)
        if as_json:
            print_json(report)
        else:
            _print_eval_summary(report, rows.shape)
        return
    scorer, info = _load_scorer(model, reference, beta, implicit)
    rewards, lengths, truncation = _score(scorer, rows, batch_size, max_length,
                                          max_prompt_length)
    if rows.shape == "pairs":
        best = np.array(rows.best)[:, None]
        chosen = np.take_along_axis(rewards.numpy(), best, 1)[:, 0]
        rejected = np.take_along_axis(rewards.numpy(), 1 - best, 1)[:, 0]
        report = evaluate_pairs(chosen, rejected, subsets=rows.subsets,
                                chosen_lengths=np.take_along_axis(lengths.numpy(), best, 1)[:, 0],
                                rejected_lengths=np.take_along_axis(lengths.numpy(), 1 - best,
                                                                    1)[:, 0],
                                gold=None if rows.gold is None else np.array(rows.gold),
                                n_bins=bins)
        if ties:
            report["skipped_ties"] = len(ties)
        if plot_path is not None:
            with naming_output(plot_path):
                plot_path.parent.mkdir(parents=True, exist_ok=True)
                report["plot"] = str(plot_reliability(report["calibration"]["bins"],
                                                      plot_path))
    else:
        mask = ~np.isnan(rewards.numpy())
        report = evaluate_sets(np.nan_to_num(rewards.numpy()), np.array(rows.best),
                               lengths=lengths.numpy(), mask=mask)
    report.update(data=data, truncation=truncation.to_dict(), **info)
    if as_json:
        print_json(report)
        return
    _print_eval_summary(report, rows.shape)


def _print_eval_summary(report: dict[str, Any], shape: str) -> None:
    """The human-readable form of an ``rm eval`` report (--json has everything)."""
    from rich.table import Table

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    source = escape(str(report["data"]))
    if shape != "pairs":
        stdout.print(f"{report['n_sets']} sets of up to {report['k']} responses ({source}): "
                     f"best-of-K accuracy {num(report['best_of_k_accuracy'])}"
                     f" (ties wrong {num(report['best_of_k_accuracy_ties_wrong'])}, chance "
                     f"{num(report['chance'])})")
        length = report.get("length")
        if length:
            flag = "  [bold]solved by a length rule[/bold]" if length["solved_by_length_rule"] \
                else ""
            stdout.print(f"length: reward-length correlation (Spearman) "
                         f"{num(length['correlation']['spearman'])}; the longest is best "
                         f"{num(length['longest_is_best'])}, the shortest "
                         f"{num(length['shortest_is_best'])}{flag}")
    else:
        stdout.print(f"{report['n']} pairs ({source}): accuracy {report['accuracy']:.3f} "
                     f"(ties as half {report['accuracy_ties_half']:.3f}; {report['n_ties']} "
                     f"ties), mean margin {report['mean_margin']:.3f}")
        cal = report["calibration"]
        stdout.print(f"calibration: ECE {cal['ece']:.3f} over {len(cal['bins'])} bins, mean "
                     f"confidence {cal['mean_confidence']:.3f}")
        _print_subsets(report, Table, num)
        if "gold" in report:
            gold = report["gold"]
            stdout.print(f"gold annotator: agreement {num(gold['agreement'])}, Cohen's kappa "
                         f"{num(gold['cohen_kappa'])} ({gold['n']} pairs)")
        if report.get("plot"):
            stdout.print(f"reliability diagram: {escape(report['plot'])}")
    if "note" in report:
        stdout.print(f"[yellow]note:[/yellow] {escape(report['note'])}")
    stdout.print("(the full report: --json)")


def _print_subsets(report: dict[str, Any], table_cls: Any, num: Any) -> None:
    """RewardBench sections and a per-subset table with the length rules' flags."""
    length = report.get("length", {})
    rules = length.get("rules", {})
    if length:
        overall = rules.get("overall", {})
        stdout.print(f"length: reward-length correlation (Spearman) "
                     f"{num(length['correlation']['spearman'])}; \"longer wins\" would score "
                     f"{num(overall.get('longer_wins'))}, \"shorter wins\" "
                     f"{num(overall.get('shorter_wins'))}")
    bench = report.get("rewardbench")
    if not bench:
        return
    sections = bench["sections"]
    if sections:
        stdout.print("RewardBench: overall " + num(bench["overall"]) + "; " + ", ".join(
            f"{name} {num(v['score'])} (n={v['n']})" for name, v in sections.items()))
    section_of = {s: name for name, v in sections.items() for s in v["subsets"]}
    table = table_cls("subset", "section", "n", "accuracy", "longer wins", "length rule")
    per_rule = rules.get("subsets", {})
    for subset, v in bench["subsets"].items():
        rule = per_rule.get(subset, {})
        table.add_row(escape(subset), section_of.get(subset, "(other)"), str(v["n"]),
                      num(v["accuracy"]), num(rule.get("longer_wins")),
                      "solves it" if rule.get("solved_by_length_rule") else "")
    stdout.print(table)
    flagged = rules.get("flagged", [])
    if flagged:
        stdout.print(f"{len(flagged)} subset(s) are solved by a length rule (>= "
                     f"{rules['flag_threshold']:.2f}): their accuracy says little beyond length "
                     "preference")
