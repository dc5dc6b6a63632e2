"""`prefkit eval ...`: evaluate a model's outputs -- AlpacaEval-style win rates against a
reference, judged by any prefkit judge (:mod:`prefkit.evaluate.alpaca`); pass@k and maj@k of
sampled answers (:mod:`prefkit.evaluate.passk`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonOpt, bad_input, cli_errors, print_json, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="Evaluate models: AlpacaEval-style win rates and "
                  "length-controlled win rates against a reference; pass@k and maj@k.")


def _default_cache() -> Path:
    """The judgment cache `prefkit judge` uses too."""
    return Path(os.path.expanduser("~/.cache/prefkit/judgments.sqlite"))


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


@app.command()
@cli_errors
def winrate(
    model_outputs: Annotated[str | None, typer.Option(
        "--model-outputs", help="The model's AlpacaEval outputs (JSON list of {instruction, "
                                "output, generator}).")] = None,
    reference_outputs: Annotated[str | None, typer.Option(
        "--reference-outputs", help="The reference's outputs, same format; matched by "
                                    "instruction.")] = None,
    judge: Annotated[str | None, typer.Option(
        "--judge", help="http:MODEL@URL | lab:TASK:NAME | rm:PATH | gold:TASK | python:mod:fn | "
                        "a config file (prefkit.specs.judges).")] = None,
    template: Annotated[str | None, typer.Option(
        help="Template name or .j2 file (text judges).")] = None,
    annotations: Annotated[str | None, typer.Option(
        "--annotations", help="Write the judgments as AlpacaEval annotations (JSON) here.")
    ] = None,
    from_annotations: Annotated[str | None, typer.Option(
        "--from-annotations", help="Recompute the metrics from existing AlpacaEval annotations "
                                   "(no judge).")] = None,
    both_orders: Annotated[bool, typer.Option(
        "--both-orders/--one-order",
        help="Judge each pair in both orders and average (position calibration); default: one "
             "order per instruction, swapped by AlpacaEval's seeded rule.")] = False,
    cache: Annotated[str | None, typer.Option(
        "--cache", envvar="PREFKIT_JUDGE_CACHE",
        help="Judgment cache (SQLite; default ~/.cache/prefkit/judgments.sqlite).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the "
                                                              "cache.")] = False,
    concurrency: Annotated[int, typer.Option(help="Judge requests in flight at most.", min=1)
                           ] = 8,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Refits for the LC win rate's percentile interval (0: none).",
        min=0)] = 200,
    l2: Annotated[float, typer.Option(
        "--l2", help="Ridge precision of the LC fit (AlpacaEval configured alike: C = 1/l2).",
        min=0.0)] = 1e-2,
    seed: Annotated[int, typer.Option(
        help="Seed of the one-order position swap (AlpacaEval's default: 123).")] = 123,
    as_json: JsonOpt = False,
) -> None:
    """Win rate and length-controlled (LC) win rate of a model against a reference, AlpacaEval
    style. Win rate = mean(preference - 1) in percent with its standard error and a 95% normal
    interval; LC: AlpacaEval's length_controlled_minimal GLM with a bootstrap interval.
    Unparsed and failed judgments are left out and counted, never scored as losses."""
    from ..evaluate import alpaca

    judging = [model_outputs, reference_outputs, judge]
    if from_annotations is not None:
        if any(v is not None for v in judging) or annotations is not None:
            raise bad_input("--from-annotations recomputes the metrics from existing "
                            "annotations: give it without --model-outputs, "
                            "--reference-outputs, --judge and --annotations", as_json)
        rows = alpaca.read_annotations(from_annotations)
        report = alpaca.winrate_report(rows, bootstrap=bootstrap, l2=l2,
                                       where=from_annotations)
        result: dict[str, Any] = {"ok": True, "source": "annotations",
                                  "annotations": from_annotations, **report}
    else:
        missing = [flag for flag, v in zip(("--model-outputs", "--reference-outputs",
                                            "--judge"), judging, strict=True) if v is None]
        if missing:
            raise bad_input(f"give {', '.join(missing)} (or --from-annotations FILE)", as_json)
        assert model_outputs and reference_outputs and judge
        pairs = alpaca.pair_outputs(alpaca.read_model_outputs(model_outputs),
                                    alpaca.read_model_outputs(reference_outputs),
                                    model_source=model_outputs,
                                    reference_source=reference_outputs)
        rows, calls = _judge(pairs, judge, template, both_orders, seed, cache, no_cache,
                             concurrency)
        if annotations:
            alpaca.write_annotations(rows, annotations)
        report = alpaca.winrate_report(rows, bootstrap=bootstrap, l2=l2, where=model_outputs)
        result = {"ok": True, "source": "judge", "judge": rows[0]["annotator"],
                  "orders": "both" if both_orders else "one", **calls, **report}
        if annotations:
            result["annotations"] = annotations
    if as_json:
        print_json(result)
        return
    _print(result)


def _judge(pairs: list[dict[str, Any]], spec: str, template: str | None, both_orders: bool,
           seed: int, cache_path: str | None, no_cache: bool, concurrency: int
           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from rich.progress import Progress

    from ..evaluate.alpaca import judge_pairs
    from ..judges.base import judge_label
    from ..specs import judge_from_spec

    judge = judge_from_spec(spec, template=template, task="compare")
    cache = None
    if not no_cache:
        from ..judges.cache import SQLiteCache

        cache = SQLiteCache(cache_path or _default_cache())
    n_calls = sum(p["output_1"] != p["output_2"] for p in pairs) * (2 if both_orders else 1)
    done = {"cached": 0}

    progress = Progress(transient=True, console=stderr)
    task = progress.add_task(f"judging ({judge_label(judge)})", total=n_calls)

    def advance(_: int, judgment: Any) -> None:
        done["cached"] += bool(judgment.cached)
        progress.advance(task)

    try:
        with progress:
            rows = judge_pairs(pairs, judge, both_orders=both_orders, seed=seed, cache=cache,
                               concurrency=concurrency, on_done=advance)
    finally:
        if cache is not None:
            cache.close()
    return rows, {"requests": n_calls, "cached": done["cached"],
                  "identical_outputs": sum(p["output_1"] == p["output_2"] for p in pairs)}


def _print(r: dict[str, Any]) -> None:
    level = round(100 * r["level"])
    stdout.print(f"{r['model']} vs {r['reference']} ({r['annotator']}): {r['n']} of "
                 f"{r['n_annotations']} instructions judged; left out: "
                 f"{r['not_judged']['unparsed']} unparsed, {r['not_judged']['failed']} failed")
    stdout.print(f"win rate      {_fmt(r['win_rate'])}% +- {_fmt(r['standard_error'])} (SE); "
                 f"{level}% CI [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] (normal)")
    lc_ci = (f"{level}% CI [{_fmt(r['lc_ci_low'])}, {_fmt(r['lc_ci_high'])}] "
             f"(bootstrap, {r['bootstrap']} refits)" if r["lc_ci"]
             else "no interval (--bootstrap 0)")
    stdout.print(f"LC win rate   {_fmt(r['lc_win_rate'])}%; {lc_ci}")
    stdout.print(f"discrete      {_fmt(r['discrete_win_rate'])}% (wins {r['wins']}, ties "
                 f"{r['ties']}, losses {r['losses']})")
    if r.get("annotations") and r["source"] == "judge":
        stdout.print(f"annotations: {r['annotations']}")


def _ks(text: str, as_json: bool) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise bad_input(f"--k: expected comma-separated whole numbers >= 1 (e.g. 1,4,8), got "
                        f"{text!r}", as_json)
    return ks


def _lab_checker(name: str, as_json: bool):
    from ..lab.tasks import get_task
    from ..lab.verifiable_tasks import VERIFIABLE_TASKS

    if name not in VERIFIABLE_TASKS:
        raise bad_input(f"--lab-task: expected one of {', '.join(VERIFIABLE_TASKS)}, got "
                        f"{name!r}", as_json)
    task = get_task(name)

    def check(prompt: str, sample: str) -> tuple[Any, bool]:
        verdict = task.check(prompt, sample)
        return verdict.answer, verdict.status == "ok"

    return check


@app.command()
@cli_errors
def passk(
    file: Annotated[str, typer.Argument(
        help="JSONL (or JSON array, Parquet, dataset folder), one prompt a record: {prompt, "
             "samples, reference | correct, [answers], [task]}.")],
    k: Annotated[str, typer.Option("--k", help="k values, comma-separated.")] = "1,4,8",
    lab_task: Annotated[str | None, typer.Option(
        "--lab-task", help="Score the samples with this lab task's exact checker (arith, "
                           "sort_exact, count) instead of the lines' reference/correct.")
    ] = None,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Resamples of the prompts for the percentile intervals.", min=1)
    ] = 2000,
    level: Annotated[float, typer.Option(help="Interval level.", min=0.5, max=0.999)] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """pass@k and maj@k from n >= k samples per prompt: unbiased estimates (the exact mean
    over all k-subsets of each prompt's samples), with percentile-bootstrap intervals over
    prompts, overall and per task (prefkit.evaluate.passk). Majority voting counts equal
    answers (the sample text with whitespace collapsed, or the line's 'answers'); ties are
    split; null answers do not vote."""
    from ..evaluate.passk import passk_report
    from ..evaluate.passk_data import read_samples

    ks = _ks(k, as_json)
    check = _lab_checker(lab_task, as_json) if lab_task is not None else None
    data = read_samples(file, check=check, min_samples=ks[-1])
    report = passk_report(data.correct, ks, answers=data.answers,
                          tasks=data.tasks if any(data.tasks) else None, level=level,
                          n_boot=bootstrap, seed=seed)
    result = {"ok": True, "file": file, "k": ks, "bootstrap": bootstrap, **_str_keys(report)}
    if as_json:
        print_json(result)
        return
    _print_passk(result)


def _str_keys(report: dict[str, Any]) -> dict[str, Any]:
    """JSON object keys as strings ("1", "4", ...), the same in and out of --json."""
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            value = _str_keys(value)
        out[str(key)] = value
    return out


def _pct(s: dict[str, float]) -> str:
    return f"{100 * s['mean']:5.1f}% [{100 * s['ci_low']:5.1f}, {100 * s['ci_high']:5.1f}]"


def _print_passk(r: dict[str, Any]) -> None:
    level = round(100 * r["level"])
    groups = [("all", r)] + list(r.get("tasks", {}).items())
    stdout.print(f"{r['file']}: {r['n_prompts']} prompts, {r['n_samples']} samples; "
                 f"{level}% bootstrap intervals over prompts ({r['bootstrap']} resamples)")
    for name, g in groups:
        stdout.print(f"{name}: {g['n_prompts']} prompts, accuracy {_pct(g['accuracy'])}")
        stdout.print(f"  {'k':>4}  {'pass@k':<24}{'maj@k':<24}")
        for k in r["k"]:
            stdout.print(f"  {k:>4}  {_pct(g['pass@k'][str(k)]):<24}"
                         f"{_pct(g['maj@k'][str(k)]):<24}")
