"""`prefkit serve ...`: the annotation and arena web app, and its admin commands.

    prefkit serve add-annotator admin --role admin --db feedback.db   # prints a token, once
    prefkit serve campaign create prefs --task pairwise --items pairs.jsonl --overlap 3 \\
        --db feedback.db
    prefkit serve --db feedback.db                                    # http://127.0.0.1:8000

The app needs the ``serve`` extra (``pip install 'prefkit[serve]'``): FastAPI, uvicorn,
Jinja2 and the Markdown sanitizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonOpt, cli_errors, print_json, stdout

SERVE_EXTRA = "pip install 'prefkit[serve]'"

app = typer.Typer(help="The annotation and arena web app: run it, manage people and campaigns.",
                  invoke_without_command=True)
campaign_app = typer.Typer(help="Create, list, close and export campaigns.",
                           no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")

DbOpt = Annotated[str, typer.Option(
    "--db", envvar="PREFKIT_STORE",
    help="The feedback store: an SQLite file or an SQLAlchemy URL (postgresql+psycopg://...).")]


def _need_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import nh3  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"the web app needs the serve extra ({exc.name} is missing): "
                         f"{SERVE_EXTRA}") from None


def _store(db: str, create: bool = True):
    from ..data.store import FeedbackStore

    return FeedbackStore(db, create=create)


@app.callback()
@cli_errors
def serve(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(
        "--db", envvar="PREFKIT_STORE",
        help="The feedback store the app reads and writes (SQLite file or SQLAlchemy URL).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine "
                                           "only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    max_body_kb: Annotated[int, typer.Option(
        help="Largest request body accepted (KiB; 413 above).", min=1)] = 1024,
    rate: Annotated[float, typer.Option(
        help="Requests per second allowed per token on average (429 above).", min=0.01)
    ] = 50.0,
    burst: Annotated[float, typer.Option(help="Requests a token may make in a burst.", min=1)
                     ] = 100.0,
    secure_cookies: Annotated[bool, typer.Option(
        "--secure-cookies", help="Mark the session cookie Secure (when served over HTTPS).")
    ] = False,
    workers: Annotated[int, typer.Option(
        help="Server processes sharing the port (rate limits then apply per process).", min=1)
    ] = 1,
) -> None:
    """Run the web app (annotation pages, arena, admin pages, REST API at /api with its schema
    at /openapi.json) on the feedback store; see the sub-commands to add people and
    campaigns."""
    if ctx.invoked_subcommand is not None:
        return
    if db is None:
        raise ValueError("--db is needed: the feedback store the app serves (e.g. --db "
                         "feedback.db)")
    _need_extra()
    import uvicorn

    from ..serve.app import ServeSettings, create_app

    store = _store(db)
    settings = ServeSettings(max_body_bytes=max_body_kb * 1024, rate=rate, burst=burst,
                             secure_cookies=secure_cookies)
    stdout.print(f"prefkit serve: http://{host}:{port} on {store.url} (Ctrl-C stops)"
                 + (f", {workers} processes" if workers > 1 else ""))
    if workers == 1:
        uvicorn.run(create_app(store, settings), host=host, port=port, log_level="warning",
                    access_log=False)
        return
    # several processes: each worker builds its own app on the same store (every rule is
    # enforced in the database's transactions, so they agree); uvicorn's supervisor restarts
    # a worker that dies
    import dataclasses
    import json
    import os

    from ..serve.app import WORKER_ENV

    url = store.engine.url.render_as_string(hide_password=False)
    store.close()
    os.environ[WORKER_ENV] = json.dumps({"store": url,
                                         "settings": dataclasses.asdict(settings)})
    uvicorn.run("prefkit.serve.app:app_from_env", factory=True, workers=workers, host=host,
                port=port, log_level="warning", access_log=False)


@app.command("add-annotator")
@cli_errors
def add_annotator(
    name: Annotated[str, typer.Argument(help="The person's name (unique).")],
    db: DbOpt = "prefkit.db",
    role: Annotated[str, typer.Option(help="annotator | admin")] = "annotator",
    as_json: JsonOpt = False,
) -> None:
    """Issue a token to a person: printed once, stored only as a hash."""
    from ..serve.service import add_annotator as add

    with _store(db) as store:
        token = add(store, name, role)
    if as_json:
        print_json({"name": name.strip(), "role": role, "token": token})
        return
    stdout.print(f"{role} {name.strip()}: token (shown once; sign in at /login)")
    print(token)


@app.command("revoke")
@cli_errors
def revoke(name: Annotated[str, typer.Argument(help="Whose token to revoke.")],
           db: DbOpt = "prefkit.db", as_json: JsonOpt = False) -> None:
    """Revoke a person's token at once (their labels stay)."""
    from ..serve.service import revoke_annotator

    with _store(db, create=False) as store:
        revoke_annotator(store, name)
    if as_json:
        print_json({"revoked": name})
        return
    stdout.print(f"revoked {name}")


@app.command("annotators")
@cli_errors
def annotators(db: DbOpt = "prefkit.db", as_json: JsonOpt = False) -> None:
    """List the people who may sign in (names, roles, revoked or not)."""
    from ..serve.service import list_annotators

    with _store(db, create=False) as store:
        people = list_annotators(store)
    if as_json:
        print_json({"annotators": people})
        return
    for p in people:
        stdout.print(f"{p['name']:<24} {p['role']:<10} {'revoked' if p['revoked'] else ''}")


def _scales(text: str | None) -> dict[str, tuple[float, float]]:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, span = part.partition("=")
        low, _, high = span.partition(":")
        try:
            out[name.strip()] = (float(low), float(high))
        except ValueError:
            raise ValueError(f"--scales {part!r}: expected NAME=LOW:HIGH, e.g. "
                             "helpfulness=0:4") from None
    return out


@campaign_app.command("create")
@cli_errors
def campaign_create(
    name: Annotated[str, typer.Argument(help="The campaign's name (unique).")],
    task: Annotated[str, typer.Option(
        help="pairwise | ranking | rating | binary | critique | arena")],
    items: Annotated[list[Path], typer.Option(
        "--items", help="Items file(s): feedback records to re-label (any format prefkit "
                        "reads), prompts with responses ({prompt, responses, models?}), or "
                        "one AlpacaEval outputs file per model (arena). Repeatable.")],
    db: DbOpt = "prefkit.db",
    overlap: Annotated[int, typer.Option(help="Labels per item (different annotators).",
                                         min=1, max=100)] = 1,
    guidelines: Annotated[Path | None, typer.Option(
        help="A Markdown file of guidelines shown with every item.")] = None,
    annotators: Annotated[str | None, typer.Option(
        help="Comma-separated names who may work on it (default: everyone).")] = None,
    tie: Annotated[bool, typer.Option("--tie/--no-tie", help="Offer 'tie' (pairwise).")
                   ] = True,
    both_bad: Annotated[bool, typer.Option("--both-bad/--no-both-bad",
                                           help="Offer 'both bad' (pairwise).")] = True,
    strength: Annotated[bool, typer.Option(
        "--strength", help="Ask how strong a preference is (1-3, pairwise).")] = False,
    rationale: Annotated[str, typer.Option(help="Free-text rationale: off | optional | "
                                                "required (pairwise, arena).")] = "optional",
    scales: Annotated[str | None, typer.Option(
        help="Rating attributes NAME=LOW:HIGH,... (default HelpSteer2's five on 0:4).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Responses per arena battle.", min=2)] = 2,
    matchmaking: Annotated[str, typer.Option(
        help="Arena: how the next models are chosen (order | infogain | ucb | random; order: "
             "information gain where the ranking is in doubt).")
    ] = "order",
    lease_minutes: Annotated[float, typer.Option(
        help="How long an item stays reserved for the annotator it was handed to.", min=0.1)
    ] = 15.0,
    format: Annotated[str | None, typer.Option(help="Format of the items files (default: "
                                                    "detected).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N items.", min=1)
                     ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a campaign from files of items."""
    from ..serve.items import read_items
    from ..serve.service import create_campaign
    from ..serve.tasks import TaskSettings

    settings = TaskSettings(task=task, allow_tie=tie, allow_both_bad=both_bad,
                            strength=strength, rationale=rationale, scales=_scales(scales),
                            k=k, matchmaking=matchmaking, lease_seconds=lease_minutes * 60)
    for path in items:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    found = read_items([str(p) for p in items], settings, format=format, limit=limit)
    text = guidelines.read_text(encoding="utf-8") if guidelines is not None else ""
    names = None if annotators is None else [n.strip() for n in annotators.split(",")
                                             if n.strip()]
    with _store(db) as store:
        campaign = create_campaign(store, name, settings, found, overlap=overlap,
                                   guidelines=text, annotators=names)
    out = {**campaign.summary(), "items": len(found)}
    if as_json:
        print_json(out)
        return
    what = "prompts in the pool" if task == "arena" else "items"
    stdout.print(f"campaign {campaign.name} (id {campaign.id}): {len(found)} {what}, task "
                 f"{task}, overlap {campaign.overlap}")


@campaign_app.command("list")
@cli_errors
def campaign_list(db: DbOpt = "prefkit.db", as_json: JsonOpt = False) -> None:
    """Campaigns with their progress."""
    from ..serve.service import list_campaigns, progress

    with _store(db, create=False) as store:
        rows = [{**c.summary(), "progress": progress(store, c)} for c in list_campaigns(store)]
    if as_json:
        print_json({"campaigns": rows})
        return
    for r in rows:
        p = r["progress"]
        stdout.print(f"{r['id']:>3} {r['name']:<24} {r['task']:<9} {r['status']:<7} "
                     f"{p['complete']}/{p['items']} items complete, {p['labels']} labels")


@campaign_app.command("close")
@cli_errors
def campaign_close(name: Annotated[str, typer.Argument(help="Campaign name.")],
                   db: DbOpt = "prefkit.db",
                   reopen: Annotated[bool, typer.Option("--reopen")] = False,
                   as_json: JsonOpt = False) -> None:
    """Close a campaign (no new labels) or reopen it."""
    from ..serve.service import get_campaign, set_campaign_status

    status = "open" if reopen else "closed"
    with _store(db, create=False) as store:
        set_campaign_status(store, get_campaign(store, name), status)
    if as_json:
        print_json({"campaign": name, "status": status})
        return
    stdout.print(f"campaign {name} {'reopened' if reopen else 'closed'}")


@campaign_app.command("stats")
@cli_errors
def campaign_stats(name: Annotated[str, typer.Argument(help="Campaign name.")],
                   db: DbOpt = "prefkit.db", as_json: JsonOpt = False) -> None:
    """Progress, agreement (Krippendorff's alpha, Fleiss' kappa), each annotator vs the
    others' majority, position bias and labels per hour."""
    from ..serve.service import get_campaign
    from ..serve.stats import campaign_stats as stats

    with _store(db, create=False) as store:
        out: dict[str, Any] = stats(store, get_campaign(store, name))
    if as_json:
        print_json(out)
        return
    p = out["progress"]
    stdout.print(f"{name}: {p['complete']}/{p['items']} items complete, {p['labels']} labels")
    for key, value in out["agreement"].items():
        stdout.print(f"  {key}: {value if value is None else round(value, 4)}")
    for row in out["annotators"]:
        stdout.print(f"  {row['name']}: {row['labels']} labels, majority agreement "
                     f"{row['majority_agreement']}, first-shown rate {row['first_shown_rate']}")


@campaign_app.command("export")
@cli_errors
def campaign_export(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.jsonl, .json, .parquet).")],
    db: DbOpt = "prefkit.db",
    format: Annotated[str, typer.Option(help="Any format prefkit writes that holds the "
                                             "campaign's records.")] = "prefkit",
    as_json: JsonOpt = False,
) -> None:
    """Write a campaign's labels (feedback records) to a file."""
    from ..data.io import write_records
    from ..serve.service import campaign_labels, get_campaign

    with _store(db, create=False) as store:
        records = [label.record for label in campaign_labels(store, get_campaign(store, name))]
    report = write_records(records, out, format, keep_empty=False)
    if not report.written:  # as `prefkit store export`: no empty file, the reasons named
        ledger = "; ".join(f"{n} {reason}" for reason, n in report.dropped.items())
        why = (f"the {format} format holds none of its {len(records)} labels (dropped: "
               f"{ledger})" if ledger else "the campaign has no labels yet")
        raise ValueError(f"{name}: nothing to export: {why}; {out} was not written")
    result = {"campaign": name, "out": str(out), "format": format, **report.to_dict()}
    if as_json:
        print_json(result)
        return
    stdout.print(f"wrote {report.written} labels of {name} to {out} ({format})")


@app.command("generate")
@cli_errors
def generate(
    prompts: Annotated[str, typer.Argument(
        help="Prompts: a .txt file (one a line), the prompt column of any file prefkit reads, "
             "or lab:TASK[:N].")],
    endpoint: Annotated[list[str], typer.Option(
        "--endpoint", help="MODEL@http(s)://HOST:PORT/v1, an OpenAI-compatible server (e.g. "
                           "`prefkit serve-model`); the name is sent as `model`. Repeat, at "
                           "least twice.")],
    out: Annotated[Path, typer.Option("--out", help="The arena items file to write (.jsonl): "
                                                    "{prompt, responses, models} rows.")],
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.", min=1)] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).",
                                               min=0.0)] = 0.0,
    seed: Annotated[int, typer.Option(help="Sent as `seed`; also seeds lab:TASK prompts.")
                    ] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight per endpoint.", min=1)
                           ] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds per HTTP attempt.", min=0.001)
                       ] = 60.0,
    retries: Annotated[int, typer.Option(help="Retries of a failed request (timeouts, 429, "
                                               "5xx, connection errors).", min=0)] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Arena outputs: every prompt sent to every model server; writes the rows a `campaign
    create --task arena --items` reads. A prompt fewer than two models answered is left out
    and reported; exit 1 when no prompt has two answers."""
    import orjson

    from ..serve.generate_outputs import generate_outputs, parse_endpoint
    from ..specs import resolve_prompts

    if out.suffix != ".jsonl":
        raise ValueError(f"--out {out}: expected a .jsonl file")
    endpoints = [parse_endpoint(spec) for spec in endpoint]
    if len(endpoints) < 2:
        raise ValueError(f"--endpoint: an arena needs at least 2 models, got {len(endpoints)}")
    texts = resolve_prompts(prompts, seed=seed)
    rows, failures = generate_outputs(texts, endpoints, max_tokens=max_tokens,
                                      temperature=temperature, seed=seed,
                                      concurrency=concurrency, timeout=timeout, retries=retries)
    dropped = sorted({f.prompt_index for f in failures if f.model is None})
    failed: dict[str, int] = {}
    for f in failures:
        if f.model is not None:
            failed[f.model] = failed.get(f.model, 0) + 1
    result: dict[str, Any] = {
        "ok": bool(rows), "out": str(out) if rows else None, "prompts": len(texts),
        "rows": len(rows), "dropped": len(dropped), "dropped_prompts": dropped,
        "models": [name for name, _ in endpoints], "failed_by_model": failed,
        "failures": [f.as_dict() for f in failures]}
    if rows:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
        tmp.replace(out)
    if as_json:
        print_json(result)
    else:
        for f in failures[:20]:
            who = f.model or "(left out)"
            stdout.print(f"prompt {f.prompt_index}: {who}: {f.reason}"
                         + (f" ({f.detail})" if f.detail else ""))
        if len(failures) > 20:
            stdout.print(f"... {len(failures) - 20} more failures (--json lists them all)")
        if rows:
            stdout.print(f"wrote {len(rows)} of {len(texts)} prompts with outputs of "
                         f"{len(endpoints)} models to {out} ({len(dropped)} left out)")
        else:
            stdout.print(f"no prompt got answers from 2 models; {out} was not written")
    if not rows:
        raise typer.Exit(1)
