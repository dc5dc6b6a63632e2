"""`prefkit judge ...`: AI feedback from LLM judges, reward models and the lab's simulated
judges, written as feedback records (annotator kind ``judge``), validated against people."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonOpt, bad_input, cli_errors, print_json, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="LLM judges: compare, grade and rank responses; "
                  "validate judges and juries against people's labels; the judgment cache.")
cache_app = typer.Typer(no_args_is_help=True, help="The persistent judgment cache.")
app.add_typer(cache_app, name="cache")

EXIT_BELOW_THRESHOLD = 3
"""`prefkit judge validate` exits with this code when a judge is below a threshold you gave."""

JudgeOpt = Annotated[str, typer.Option(
    "--judge", help="http:MODEL@URL | lab:TASK:NAME | rm:PATH | gold:TASK | python:mod:fn | a "
                    "config file (.json/.yaml/.toml; a jury too). See prefkit.specs.judges.")]
CacheOpt = Annotated[str | None, typer.Option(
    "--cache", envvar="PREFKIT_JUDGE_CACHE",
    help="Judgment cache (SQLite; default ~/.cache/prefkit/judgments.sqlite).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")]
TemplateOpt = Annotated[str | None, typer.Option(
    help="Template name or .j2 file (text judges; `prefkit judge template --list`).")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Requests in flight at most.", min=1)]
OutOpt = Annotated[str | None, typer.Option(
    "--out", help="Write the records to this file (.jsonl/.json/.parquet).")]
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N items.", min=1)]
FailuresOpt = Annotated[str | None, typer.Option(
    help="Write the items not judged (unparsed / failed, with the reason and raw text) to this "
         "JSONL file.")]
DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Add the records to this feedback store (SQLite path or URL).")]


def default_cache_path() -> Path:
    return Path(os.path.expanduser("~/.cache/prefkit/judgments.sqlite"))


def _open_cache(path: str | None, disabled: bool) -> Any:
    if disabled:
        return None
    from ..judges.cache import SQLiteCache

    return SQLiteCache(path or default_cache_path())


def _progress(total: int, label: str):
    from rich.progress import Progress

    progress = Progress(transient=True, console=stderr)
    task = progress.add_task(label, total=total)
    return progress, lambda *_: progress.advance(task)


def _items(paths: list[str], task: str, limit: int | None) -> list[dict[str, Any]]:
    from ..serve.items import read_items
    from ..serve.tasks import TaskSettings

    serve_task = {"compare": "pairwise", "rank": "ranking", "grade": "rating"}[task]
    return read_items(paths, TaskSettings(task=serve_task), limit=limit)


def _request(task: str, item: dict[str, Any]) -> Any:
    from ..data.records import text_content
    from ..judges.base import JudgeRequest

    models = item.get("models")
    return JudgeRequest(task, text_content(item["prompt"]),
                        tuple(text_content(r) for r in item["responses"]),
                        models=tuple(models) if models else None)


def _write(records: list[Any], out: str | None, db: str | None) -> dict[str, Any]:
    written: dict[str, Any] = {}
    if out:
        from ..data.io import write_records

        report = write_records(records, out)
        written["out"] = {"path": out, "written": report.written}
    if db:
        from ..data.store import FeedbackStore

        with FeedbackStore(db, create=True) as store:
            report = store.add(records)
            written["db"] = {"url": db, "added": report.added,
                             "duplicates": report.duplicates}
    return written


def _run_judge(task: str, paths: list[str], judge_spec: str, template: str | None,
               both_orders: bool, out: str | None, db: str | None, cache_path: str | None,
               no_cache: bool, concurrency: int, limit: int | None, failures: str | None,
               as_json: bool, family: str | None = None) -> None:
    from ..judges import base
    from ..judges.base import judge_label
    from ..judges.bias import ajudge_both_orders, length_report, position_report
    from ..judges.records import judged_records
    from ..specs import judge_from_spec

    if not out and not db and not as_json:
        raise bad_input("give --out FILE and/or --db URL for the records (or --json to print "
                        "only the report)", as_json)
    items = _items(paths, task, limit)
    judge = judge_from_spec(judge_spec, template=template, task=task)
    requests = [_request(task, item) for item in items]
    cache = _open_cache(cache_path, no_cache)
    n_calls = len(requests) * (2 if task == "compare" and both_orders else 1)
    progress, advance = _progress(n_calls, f"judging ({judge_label(judge)})")
    try:
        with progress:
            if task == "compare" and both_orders:
                pairs = base.run_sync(ajudge_both_orders(judge, requests, cache=cache,
                                                         concurrency=concurrency,
                                                         on_done=advance))
                judgments = [j for p in pairs for j in (p.forward, p.backward)]
            else:
                pairs = None
                judgments = base.run_sync(base.ajudge_all(judge, requests, cache=cache,
                                                          concurrency=concurrency,
                                                          on_done=advance))
    finally:
        if cache is not None:
            cache.close()
    label = judge_label(judge)
    records, failed_rows = judged_records(task, items, requests, judgments, pairs, label,
                                          judge.config())
    result: dict[str, Any] = {
        "ok": True, "task": task, "judge": label, "items": len(items),
        "judged": len(records), "requests": len(judgments),
        "status": base.status_counts(judgments),
        "not_judged": {"unparsed": sum(r["status"] == "unparsed" for r in failed_rows),
                       "failed": sum(r["status"] == "failed" for r in failed_rows)},
        "reasons": base.failure_reasons(judgments),
        "cached": sum(j.cached for j in judgments),
        "tokens": {"prompt": sum(j.prompt_tokens for j in judgments),
                   "completion": sum(j.completion_tokens for j in judgments)},
    }
    if pairs is not None:
        result["position"] = position_report(pairs)
        result["length"] = length_report(pairs)
        own = family or getattr(judge, "family", None)
        if own and any(r.models for r in requests):
            from ..judges.bias import self_preference_report

            # flagged: the judge's family wrote some of the responses it judges
            result["self_preference"] = {"family": own, **self_preference_report(
                pairs, lambda m: bool(m) and str(m).lower().startswith(own.lower()))}
    if failures:
        from ..data.io import write_jsonl_rows

        write_jsonl_rows(failed_rows, Path(failures))
        result["failures_file"] = failures
    result.update(_write(records, out, db))
    if as_json:
        print_json(result)
        return
    stdout.print(f"{label}: {result['judged']} of {len(items)} items judged; requests "
                 f"{result['status']}; {result['cached']} from the cache")
    if pairs is not None:
        pos = result["position"]
        stdout.print(f"position: P(prefer first) {_fmt(pos['p_prefer_first'])}, flip rate "
                     f"{_fmt(pos['flip_rate'])}; longer wins "
                     f"{_fmt(result['length']['longer_wins'])}")
    for key, value in result.items():
        if key in ("out", "db"):
            stdout.print(f"{key}: {value}")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@app.command()
@cli_errors
def compare(
    data: Annotated[list[str], typer.Argument(help="Pairs: comparison records in any format "
                                                   "prefkit reads, or {prompt, responses} rows, "
                                                   "or AlpacaEval outputs files.")],
    judge: JudgeOpt,
    template: TemplateOpt = None,
    both_orders: Annotated[bool, typer.Option(
        "--both-orders/--one-order",
        help="Judge each pair in both orders and average (Balanced Position Calibration).")
    ] = True,
    out: OutOpt = None,
    db: DbOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    concurrency: ConcurrencyOpt = 8,
    limit: LimitOpt = None,
    failures: FailuresOpt = None,
    family: Annotated[str | None, typer.Option(
        help="The judge's model family: with items that name their models, the report flags "
             "and measures self-preference (the share of own-family wins).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Which of two responses is better: Comparison records (annotator kind judge; soft_label
    = the calibrated P(a better)). Unparsed and failed items are counted, never guessed."""
    _run_judge("compare", data, judge, template, both_orders, out, db, cache, no_cache,
               concurrency, limit, failures, as_json, family=family)


@app.command()
@cli_errors
def grade(
    data: Annotated[list[str], typer.Argument(help="Responses to grade (records or rows).")],
    judge: JudgeOpt,
    template: TemplateOpt = None,
    out: OutOpt = None,
    db: DbOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    concurrency: ConcurrencyOpt = 8,
    limit: LimitOpt = None,
    failures: FailuresOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grade each response on the template's scale: Rating records (attribute ``score``)."""
    _run_judge("grade", data, judge, template, False, out, db, cache, no_cache, concurrency,
               limit, failures, as_json)


@app.command()
@cli_errors
def rank(
    data: Annotated[list[str], typer.Argument(help="Prompts with K responses.")],
    judge: JudgeOpt,
    template: TemplateOpt = None,
    out: OutOpt = None,
    db: DbOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    concurrency: ConcurrencyOpt = 8,
    limit: LimitOpt = None,
    failures: FailuresOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank K responses best first (ties allowed): Ranking records."""
    _run_judge("rank", data, judge, template, False, out, db, cache, no_cache, concurrency,
               limit, failures, as_json)


@app.command()
@cli_errors
def template(
    name: Annotated[str | None, typer.Argument(help="A built-in template to print.")] = None,
    list_all: Annotated[bool, typer.Option("--list", help="List the built-in templates.")
                        ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a built-in judge template (copy it, edit it, pass the file as --template)."""
    from ..judges.templates import BUILTIN_TEMPLATES, load_template

    if list_all or name is None:
        rows = [{"name": n, "task": load_template(n).task, "parser": load_template(n).parser}
                for n in BUILTIN_TEMPLATES]
        if as_json:
            print_json({"templates": rows})
        else:
            for row in rows:
                stdout.print(f"{row['name']:<20} {row['task']:<8} {row['parser']}")
        return
    if name in ("critique.txt", "revision.txt"):
        from ..judges.revise import DEFAULT_PROMPTS

        typer.echo(DEFAULT_PROMPTS[name.split(".")[0]].read_text(encoding="utf-8"), nl=False)
        return
    loaded = load_template(name)
    if as_json:
        print_json({"name": name, "task": loaded.task, "parser": loaded.parser,
                    "source": loaded.source})
    else:
        typer.echo(loaded.source, nl=False)


@cache_app.command("stats")
@cli_errors
def cache_stats(cache: CacheOpt = None, as_json: JsonOpt = False) -> None:
    """Entries in the cache, by task, status and judge."""
    path = cache or default_cache_path()
    if not Path(path).exists():
        raise bad_input(f"{path}: no judgment cache there", as_json)
    from ..judges.cache import SQLiteCache

    with SQLiteCache(path) as opened:
        stats = opened.stats()
    if as_json:
        print_json({"path": str(path), **stats})
    else:
        stdout.print(f"{path}: {stats}")


@cache_app.command("clear")
@cli_errors
def cache_clear(cache: CacheOpt = None,
                judge: Annotated[str | None, typer.Option(
                    help="Only this judge's entries (as `cache stats` names them).")] = None,
                as_json: JsonOpt = False) -> None:
    """Delete cached judgments (all, or one judge's)."""
    path = cache or default_cache_path()
    if not Path(path).exists():
        raise bad_input(f"{path}: no judgment cache there", as_json)
    from ..judges.cache import SQLiteCache

    with SQLiteCache(path) as opened:
        deleted = opened.clear(judge)
    if as_json:
        print_json({"path": str(path), "deleted": deleted})
    else:
        stdout.print(f"{path}: {deleted} entries deleted")


@app.command()
@cli_errors
def validate(
    labels: Annotated[str, typer.Option(
        "--labels", help="People's pairwise labels: comparison records in any format prefkit "
                         "reads (e.g. `prefkit serve campaign export`).")],
    judges: Annotated[list[str], typer.Option(
        "--judge", help="A judge to validate (repeat for several; see `prefkit judge "
                        "compare --help`).")],
    jury: Annotated[str | None, typer.Option(
        help="Also validate the judges as a jury: majority | mean | weighted (weights from "
             "each judge's accuracy on these labels: in-sample).")] = None,
    family: Annotated[str | None, typer.Option(
        help="Model family of the judges (self-preference on pairs whose metadata.models "
             "are known; a simulated judge's own family is used when it has one).")] = None,
    min_accuracy: Annotated[float | None, typer.Option(
        help=f"Exit {EXIT_BELOW_THRESHOLD} if a judge's accuracy is below this.")] = None,
    min_kappa: Annotated[float | None, typer.Option(
        help=f"Exit {EXIT_BELOW_THRESHOLD} if a judge's Cohen's kappa is below this.")
    ] = None,
    min_consistency: Annotated[float | None, typer.Option(
        help=f"Exit {EXIT_BELOW_THRESHOLD} if a judge's position consistency is below this.")
    ] = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    concurrency: ConcurrencyOpt = 8,
    limit: Annotated[int | None, typer.Option(help="Only the first N labels.", min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Agreement of judges (and a jury) with people's labels: accuracy (ties counted and
    excluded), Cohen's kappa, position consistency, length and self-preference. Exits 3 when a
    judge is below a threshold you pass."""
    from ..data.io import read_records
    from ..evaluate.judge_agreement import agreement_report, requests_from_labels, thresholds_failed
    from ..judges import base
    from ..judges.base import judge_label
    from ..judges.bias import ajudge_both_orders
    from ..judges.jury import Jury, accuracy_weight
    from ..specs import judge_from_spec

    records = list(read_records(labels))
    bad = next((i for i, r in enumerate(records) if r.kind != "comparison"), None)
    if bad is not None:
        raise bad_input(f"{labels}: record {bad + 1}: kind: expected comparison records "
                        f"(pairwise labels), got {records[bad].kind}", as_json)
    if not records:
        raise bad_input(f"{labels}: no labels", as_json)
    records = records[:limit] if limit else records
    if jury and len(judges) < 2:
        raise bad_input("--jury needs at least two --judge", as_json)
    loaded = [judge_from_spec(spec) for spec in judges]
    requests = requests_from_labels(records)
    opened = _open_cache(cache, no_cache)
    results: dict[str, Any] = {}

    def own_check(judge: Any) -> Any:
        fam = getattr(judge, "family", None) or family
        if not fam:
            return None
        return lambda m: bool(m) and str(m).lower().startswith(fam.lower())

    def run(judge: Any) -> dict[str, Any]:
        progress, advance = _progress(2 * len(requests), f"validating {judge_label(judge)}")
        with progress:
            pairs = base.run_sync(ajudge_both_orders(judge, requests, cache=opened,
                                                     concurrency=concurrency,
                                                     on_done=advance))
        return agreement_report(pairs, records, is_own=own_check(judge))

    try:
        for judge in loaded:
            results[judge_label(judge)] = run(judge)
        if jury:
            weights = None
            if jury == "weighted":
                weights = [accuracy_weight(results[judge_label(j)]["accuracy"] or 0.5)
                           for j in loaded]
            panel = Jury(loaded, aggregate=jury, weights=weights)
            results[judge_label(panel)] = run(panel)
    finally:
        if opened is not None:
            opened.close()
    failures = {name: thresholds_failed(r, min_accuracy=min_accuracy, min_kappa=min_kappa,
                                        min_consistency=min_consistency)
                for name, r in results.items()}
    failures = {k: v for k, v in failures.items() if v}
    out = {"ok": not failures, "labels": labels, "n_labels": len(records), "judges": results,
           "below_threshold": failures}
    if as_json:
        print_json(out)
    else:
        for name, r in results.items():
            pos = r["position"]
            stdout.print(
                f"{name}: accuracy {_fmt(r['accuracy'])} ({r['decided']} decided; ties: "
                f"people {r['human_ties']}, judge {r['judge_ties']}), kappa "
                f"{_fmt(r['cohen_kappa'])}, consistency {_fmt(pos['consistency'])}, longer "
                f"wins {_fmt(r['length']['longer_wins'])}; unparsed {r['unparsed']}, failed "
                f"{r['failed']}")
        for name, reasons in failures.items():
            stderr.print(f"[red]below threshold:[/red] {name}: {'; '.join(reasons)}")
    if failures:
        raise typer.Exit(EXIT_BELOW_THRESHOLD)


@app.command()
@cli_errors
def revise(
    data: Annotated[list[str], typer.Argument(
        help="Responses to improve: records or {prompt, responses} rows (each response is "
             "revised).")],
    judge: JudgeOpt,
    principles: Annotated[str, typer.Option(
        help="The principles (Markdown/text: '- ' bullets or one per line).")],
    out: OutOpt = None,
    db: DbOpt = None,
    critique_prompt: Annotated[str | None, typer.Option(
        help="Your critique prompt (.j2, blocks system/user; `prefkit judge template "
             "critique.txt` prints the default).")] = None,
    revision_prompt: Annotated[str | None, typer.Option(
        help="Your revision prompt (.j2).")] = None,
    seed: Annotated[int, typer.Option(help="Which principle each response gets.")] = 0,
    concurrency: ConcurrencyOpt = 8,
    limit: Annotated[int | None, typer.Option(help="Only the first N responses.", min=1)
                     ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Constitutional-AI critique -> revision: for each response, a principle, the model's
    critique, its revision; writes preference pairs (revision chosen over the original)."""
    from ..judges.base import judge_label
    from ..judges.revise import read_principles, revise_all, revision_records
    from ..specs import judge_from_spec

    if not out and not db:
        raise bad_input("give --out FILE and/or --db URL for the preference pairs", as_json)
    rules = read_principles(principles)
    items = _items(data, "grade", limit)
    pairs = [(item["prompt"], item["responses"][0]) for item in items]
    writer = judge_from_spec(judge)
    prompts = {k: Path(v) for k, v in (("critique", critique_prompt),
                                       ("revision", revision_prompt)) if v}
    for name, path in prompts.items():
        if not path.is_file():
            raise bad_input(f"--{name}-prompt {path}: no such file", as_json)
    revisions = revise_all(writer, pairs, rules, seed=seed, concurrency=concurrency,
                           prompts=prompts)
    label = judge_label(writer)
    records = revision_records(pairs, revisions, label)
    counts: dict[str, int] = {}
    for r in revisions:
        counts[r.status] = counts.get(r.status, 0) + 1
    result = {"ok": True, "judge": label, "responses": len(pairs), "pairs": len(records),
              "status": counts, "principles": len(rules),
              "reasons": sorted({r.reason for r in revisions if r.reason})[:10],
              **_write(records, out, db)}
    if as_json:
        print_json(result)
    else:
        stdout.print(f"{label}: {len(records)} preference pairs from {len(pairs)} responses "
                     f"({counts})")
