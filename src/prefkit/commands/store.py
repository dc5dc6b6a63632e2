"""`prefkit store ...`: import feedback files into the feedback store, export it, summarize it.

The store is an SQLite file or any SQLAlchemy URL (``--db``, env ``PREFKIT_STORE``, default
``prefkit.db`` in the current folder). Imports are idempotent: importing a file again stores
nothing new, and an import stopped by a bad record completes when the fixed file is imported
again. Only ``import`` creates a store; ``stats`` and ``export`` of a store that does not exist
exit with 2 ("no store at ...") and create nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..data.errors import RecordError
from ..data.formats import FORMATS, get_format
from ..data.io import check_source_exists
from ..data.records import KINDS
from ..data.store import DEFAULT_BATCH_SIZE, FeedbackStore, SchemaVersionError
from .common import EXIT_INTERNAL, bad_input, cli_errors, print_json, stderr, stdout

DEFAULT_DB = "prefkit.db"

app = typer.Typer(
    help="The feedback store: import feedback files (idempotently), export, stats.",
    no_args_is_help=True,
)

DbOpt = Annotated[str, typer.Option(
    "--db", envvar="PREFKIT_STORE",
    help="Store: an SQLite file path or an SQLAlchemy URL "
         "(e.g. postgresql+psycopg://user:pw@host/db).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@contextmanager
def _open_store(db: str, as_json: bool, *, create: bool = False) -> Iterator[FeedbackStore]:
    """Open (and upgrade) the store, creating it only with ``create``; a store that cannot be
    opened is bad input (2, via :func:`cli_errors`), a store newer than this prefkit exits
    with 1."""
    try:
        store = FeedbackStore(db, create=create)
    except SchemaVersionError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}")
        if as_json:
            print_json({"ok": False, "error": str(exc)})
        raise typer.Exit(EXIT_INTERNAL) from None
    try:
        yield store
    finally:
        store.close()


@app.command("import")
@cli_errors
def import_(
    file: Annotated[str, typer.Argument(help="JSONL / JSON / Parquet file or dataset folder.")],
    db: DbOpt = DEFAULT_DB,
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="Input format (default: detected from the columns).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split of a DatasetDict folder.")] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Records per transaction.")] = DEFAULT_BATCH_SIZE,
    as_json: JsonOpt = False,
) -> None:
    """Import a feedback file. Records already stored are skipped (duplicates); a record whose
    id is stored with different content is a conflict: reported, never overwritten. The first
    bad record stops the import with exit code 2; fix it and import again to complete it."""
    from ..data.io import primed, read_records

    check_source_exists(file)
    if format is not None:
        get_format(format)
    # an empty or unreadable source, an unknown split, a bad first record: exit 2 before the
    # store is created (the import reads the first record again)
    primed(read_records(file, format, split=split))
    with _open_store(db, as_json, create=True) as store:
        if not as_json:
            stderr.print(f"importing {escape(file)} into {escape(store.url)}")
        try:
            report = store.import_file(file, format, split=split, batch_size=batch_size)
        except RecordError as exc:
            exit_ = bad_input(str(exc), as_json, detail=exc.to_dict(), db=store.url)
            stderr.print("the records before it were stored in whole batches; fix the file "
                         "and import it again to complete the import")
            raise exit_ from None
        total = store.count()
    result = {"ok": True, "file": file, "db": store.url, **report.to_dict(), "records": total}
    if as_json:
        print_json(result)
        return
    _print_import(result)


def _print_import(result: dict[str, Any]) -> None:
    stdout.print(
        f"{escape(result['file'])}: {result['seen']} records, [green]{result['inserted']} new"
        f"[/green], {result['duplicates']} duplicates, {result['conflicts']} conflicts; "
        f"the store holds {result['records']} records")
    if result["conflicts"]:
        shown = ", ".join(result["conflict_ids"][:10])
        more = result["conflicts"] - min(10, len(result["conflict_ids"]))
        stdout.print(f"[yellow]conflicting ids (stored content kept):[/yellow] {escape(shown)}"
                     + (f" and {more} more" if more else ""))


@app.command()
@cli_errors
def export(
    out: Annotated[Path, typer.Argument(
        help="Output: .jsonl, .json (array), .parquet, or a folder (HF save_to_disk).")],
    db: DbOpt = DEFAULT_DB,
    to: Annotated[str, typer.Option(
        "--to", help="Output format: " + ", ".join(FORMATS))] = "prefkit",
    kind: Annotated[str | None, typer.Option(
        help="Only records of this kind: " + ", ".join(KINDS))] = None,
    annotator: Annotated[str | None, typer.Option(
        help="Only records of this annotator id.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export stored records. Records the format cannot hold are counted by reason, never
    silently dropped. Nothing to write (no record matches, or the format holds none of them)
    exits with 2 and writes no file."""
    from ..data.io import check_output_path, output_kind

    target = get_format(to)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    check_output_path(out, folder=output_kind(out) == "hf")
    with _open_store(db, as_json) as store:
        report = store.export(out, target.name, kind=kind, annotator=annotator,
                              keep_empty=False)
    result = {"ok": True, "db": store.url, **report.to_dict()}
    if not report.written:
        filters = ", ".join(f"{name} {value!r}" for name, value in
                            (("--kind", kind), ("--annotator", annotator)) if value)
        ledger = "; ".join(f"{n} {reason}" for reason, n in report.dropped.items())
        why = (f"the {target.name} format holds none of them (dropped: {ledger})" if ledger
               else f"no record matches {filters}" if filters else "the store is empty")
        raise bad_input(f"{store.url}: nothing to export: {why}; {out} was not written",
                        as_json, **{**result, "ok": False})
    if as_json:
        print_json(result)
        return
    stdout.print(f"wrote {report.written} records to {escape(str(out))} ({target.name})")
    for reason, n in report.dropped.items():
        stdout.print(f"  dropped {n}: {escape(reason)}")


@app.command()
@cli_errors
def stats(db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Counts per record kind and annotator kind, annotators, imports and schema version."""
    with _open_store(db, as_json) as store:
        result = {"ok": True, **store.stats()}
    if as_json:
        print_json(result)
        return
    stdout.print(f"store {escape(result['url'])} (schema version {result['schema_version']}): "
                 f"{result['records']} records, {result['annotators']} annotators, "
                 f"{result['imports']} imports")
    table = Table("kind", "records", box=None)
    for kind, n in result["kinds"].items():
        table.add_row(kind, str(n))
    for kind, n in result["annotator_kinds"].items():
        table.add_row(f"annotator: {kind}", str(n))
    if result["records"]:
        stdout.print(table)
