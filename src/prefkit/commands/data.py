"""`prefkit data ...`: validate, summarize and convert feedback files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..data.formats import FORMATS, get_format
from ..data.io import check_source_exists
from .common import EXIT_BAD_INPUT, bad_input, cli_errors, print_json, stderr, stdout

app = typer.Typer(help="Validate, summarize and convert feedback files.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", help="Input format (default: detected from the columns)."),
]
SplitOpt = Annotated[
    str | None, typer.Option("--split", help="Split of a DatasetDict folder (or FOLDER::split).")
]


def _check_side_files(source: str, outputs: dict[str, Path]) -> None:
    """Side files must be writable, distinct, and never the input itself (opening one for
    writing would empty the input before it is read)."""
    from ..data.errors import OutputPathError
    from ..data.io import check_output_path

    local = Path(source.split("::", 1)[0]).resolve()
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        check_output_path(path)
        resolved = Path(path).resolve()
        if resolved == local:
            raise OutputPathError(path, f"{option} is the input file")
        if resolved in seen:
            raise OutputPathError(path, f"{option} is also {seen[resolved]}")
        seen[resolved] = option


def _side_path(source: str, tag: str) -> Path:
    path = Path(source.split("::", 1)[0])
    suffix = path.suffix if path.suffix in (".jsonl", ".ndjson") else ".jsonl"
    return path.with_name(f"{path.stem}.{tag}{suffix}")


@app.command()
@cli_errors
def validate(
    file: Annotated[str, typer.Argument(help="JSONL / JSON / Parquet file or dataset folder.")],
    format: FormatOpt = None,
    split: SplitOpt = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid",
        help="Keep going: write valid rows to --output and the rejected rows, byte for byte, "
             "to --rejected; exit 0.")] = False,
    output: Annotated[Path | None, typer.Option(
        help="With --skip-invalid: where the valid rows go (default FILE.valid.jsonl).")] = None,
    rejected: Annotated[Path | None, typer.Option(
        help="With --skip-invalid: where the rejected rows go (default FILE.rejected.jsonl).")
    ] = None,
    max_errors: Annotated[int, typer.Option(help="Errors listed (all are counted).")] = 100,
    duplicates: Annotated[bool, typer.Option(
        "--duplicates/--no-duplicates", help="Report duplicate records.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Check every record: malformed JSON, non-UTF-8 bytes, missing/empty fields, identical
    chosen and rejected, unknown outcomes, bad ranking indices, duplicates. Exit code 2 when any
    record is invalid (unless --skip-invalid)."""
    from ..data.validate import validate_file

    check_source_exists(file)
    if format is not None:
        get_format(format)
    if skip_invalid:
        output = output or _side_path(file, "valid")
        rejected = rejected or _side_path(file, "rejected")
        _check_side_files(file, {"--output": output, "--rejected": rejected})
    report = validate_file(
        file, format, split=split, skip_invalid=skip_invalid, output_path=output,
        rejected_path=rejected, check_duplicates=duplicates, max_errors=max_errors,
    )
    if as_json:
        print_json(report.to_dict())
    else:
        for error in sorted(report.errors, key=lambda e: e.line or 0):
            stderr.print(f"[red]invalid[/red] {escape(str(error))}")
        if report.invalid > len(report.errors):
            stderr.print(f"... and {report.invalid - len(report.errors)} more")
        status = "[green]ok[/green]" if report.ok else "[red]invalid records found[/red]"
        kinds = ", ".join(f"{n} {k}" for k, n in report.kinds.items()) or "no records"
        stdout.print(f"{file}: {status} - format {report.format}; {report.rows} rows, "
                     f"{report.valid} valid ({kinds}), {report.invalid} invalid")
        if report.error_counts:
            stdout.print("errors by class: " + ", ".join(
                f"{code} {n}" for code, n in report.error_counts.most_common()))
        if skip_invalid:
            stdout.print(f"valid rows -> {output}; rejected rows -> {rejected}")
    if not report.ok and not skip_invalid:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
@cli_errors
def stats(
    file: Annotated[str, typer.Argument(help="Feedback file or dataset folder.")],
    format: FormatOpt = None,
    split: SplitOpt = None,
    tokenizer: Annotated[str | None, typer.Option(
        help="tokenizer.json file or a local tokenizer folder: adds lengths in tokens.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts per kind, length distributions (characters, and tokens with --tokenizer), tie
    rate, share of pairs where the chosen response is longer, annotator agreement."""
    from ..data.io import read_records
    from ..data.stats import feedback_stats, load_tokenizer

    check_source_exists(file)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    result = feedback_stats(read_records(file, format, split=split), tokenizer=tok)
    result = {"file": file, **result}
    if as_json:
        print_json(result)
        return
    _print_tree(result)


def _print_tree(value, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                stdout.print(f"{pad}{key}:")
                _print_tree(item, indent + 1)
            else:
                stdout.print(f"{pad}{key}: {_fmt(item)}")
    elif isinstance(value, list):
        for item in value:
            stdout.print(f"{pad}- {_fmt(item)}")
    else:
        stdout.print(f"{pad}{_fmt(value)}")


def _fmt(value) -> str:
    """A value for people: floats to 4 significant digits, a missing value (None) or an empty
    collection as '-' (``--json`` keeps null)."""
    if value is None or value == {} or value == []:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command()
@cli_errors
def convert(
    input: Annotated[str, typer.Argument(help="Input file or dataset folder.")],
    output: Annotated[Path, typer.Argument(
        help="Output: .jsonl, .json (array), .parquet, or a folder (HF save_to_disk).")],
    to: Annotated[str, typer.Option("--to", help="Target format: " + ", ".join(FORMATS))],
    format: Annotated[str | None, typer.Option(
        "--from", "--format", help="Input format (default: detected).")] = None,
    split: SplitOpt = None,
    pairs: Annotated[str, typer.Option(
        help="Rankings to pairs: 'all' implied pairs or 'adjacent' tiers.")] = "all",
    min_gap: Annotated[float, typer.Option(
        help="Ratings to pairs: smallest score gap that makes a pair.")] = 1.0,
    attribute: Annotated[str | None, typer.Option(
        help="Ratings to pairs: attribute to compare (default: the sum of all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert between formats; converts record kinds when needed (rankings/ratings/binary ->
    pairs, pairs -> binary, comparisons -> battles) and reports what was dropped and why."""
    from ..data.convert import ConversionReport, to_kind
    from ..data.io import check_output_path, output_kind, read_records, write_records

    check_source_exists(input)
    target = get_format(to)
    if pairs not in ("all", "adjacent"):
        raise bad_input(f"--pairs must be 'all' or 'adjacent', got {pairs!r}", as_json)
    check_output_path(output, folder=output_kind(output) == "hf")
    records = read_records(input, format, split=split)
    conversion = ConversionReport()
    if len(target.kinds) == 1:
        records = to_kind(records, target.kinds[0], pairs=pairs, min_gap=min_gap,
                          attribute=attribute, report=conversion)
    written = write_records(records, output, target.name, keep_empty=False)
    dropped = {**conversion.dropped, **written.dropped}
    result = {"input": input, "output": str(output), "to": target.name,
              "conversion": conversion.to_dict(), "write": written.to_dict()}
    if not written.written:
        ledger = "; ".join(f"{n} {reason}" for reason, n in dropped.items()) or "none"
        skipped = "; ".join(f"{n} {reason}" for reason, n in conversion.skipped.items())
        message = (f"{input}: no record converts to {target.name}, so {output} was not "
                   f"written; dropped: {ledger}" + (f"; skipped: {skipped}" if skipped else ""))
        raise bad_input(message, as_json, **result)
    if as_json:
        print_json(result)
        return
    stdout.print(f"wrote {written.written} records to {output} ({target.name})")
    for reason, n in dropped.items():
        stdout.print(f"  dropped {n} records: {reason}")
    for reason, n in conversion.skipped.items():
        stdout.print(f"  skipped {n}: {reason}")


@app.command("formats")
@cli_errors
def list_formats(as_json: JsonOpt = False) -> None:
    """List the formats prefkit reads and writes."""
    rows = [{"name": f.name, "kinds": list(f.kinds), "description": f.description}
            for f in FORMATS.values()]
    if as_json:
        print_json({"formats": rows})
        return
    for row in rows:
        stdout.print(f"[bold]{row['name']:<25}[/bold] {row['description']}")
