"""`prefkit lab run`: the feedback loop on the built-in simulated world (first slice), with a
self-contained HTML report; `prefkit lab report`: the report of a saved `--json` output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .common import JsonOpt, bad_input, cli_errors, print_json, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="The lab: the whole loop with known gold rewards.")


@app.command("run")
@cli_errors
def run(
    config: Annotated[str | None, typer.Argument(help="YAML file with LabConfig fields.")
                      ] = None,
    quick: Annotated[bool, typer.Option(help="The small config used by the tests.")] = False,
    task: Annotated[str | None, typer.Option(
        help="The lab task (LabConfig.task), e.g. sort, arith, sort_exact, count.")] = None,
    workdir: Annotated[str | None, typer.Option(help="Where the run writes its files.")
                       ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any LabConfig field: k=v")
                    ] = None,
    report: Annotated[str | None, typer.Option(
        "--report", help="Where to write the HTML report (default: <workdir>/report.html).")
                      ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no HTML report.")
                         ] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No stage progress on stderr (it is there with --json too).")
                     ] = False,
    as_json: JsonOpt = False,
) -> None:
    """SFT policy -> samples -> simulated annotators -> reward model -> direct alignment and
    best-of-N -> gold-judged evaluation (win rate vs SFT with CIs, LC win rate, KL, length,
    ranking accuracy), then a self-contained HTML report (its path is the JSON output's
    "report"). Stage progress goes to stderr (stdout keeps the table or the one JSON object);
    every finished stage is cached, so after Ctrl-C the same command resumes."""
    from ..lab import pipeline
    from ..lab.progress import LabProgress, to_stream

    cfg = _lab_config(config, quick, workdir, [*([f"task={task}"] if task else []), *(set_ or [])],
                      as_json)
    if report and no_report:
        raise bad_input("--report and --no-report exclude each other", as_json)
    for key in ("workdir", "cache_dir"):
        _writable_folder(key, getattr(cfg, key), as_json)
    progress = LabProgress(None if quiet else to_stream())
    try:
        result = pipeline.run_lab(cfg, progress=progress)
        if not no_report:
            path = Path(report) if report else Path(cfg.workdir) / "report.html"
            with progress.stage("report", str(path)):
                _write_report(result, path)
    except KeyboardInterrupt:
        raise _interrupted(progress, cfg.workdir, as_json) from None
    if as_json:
        print_json(result)
        return
    stdout.print(methods_table(result, title=f"lab: {cfg.task}"))
    accuracy = accuracy_table(result)
    if accuracy is not None:
        stdout.print(accuracy)
    if result.get("leaderboard"):
        stdout.print(leaderboard_table(result["leaderboard"]))
    if result.get("report"):
        stdout.print(f"report: {result['report']}", markup=False)


def _writable_folder(key: str, folder: str | None, as_json: bool) -> None:
    """Create ``folder`` (the LabConfig setting ``key``) and check that files can be written in
    it, before any work; bad input (exit 2) naming the setting and the folder otherwise."""
    import tempfile

    if folder is None:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise bad_input(f"invalid LabConfig.{key}={folder!r}: cannot create or write this "
                        f"folder ({exc.strerror or exc})", as_json) from None


def _interrupted(progress, workdir: str, as_json: bool) -> typer.Exit:
    """Ctrl-C: say where the run stopped and how to resume (exit 130, the shell's code for
    SIGINT); with --json also as the one JSON object."""
    where = progress.where()
    cached = progress.stage_dir or f"{workdir}/stages"
    message = (f"stopped {where}; the finished stages are cached in {cached}: run the same "
               "command again (same settings and --workdir) to resume from them (the "
               "interrupted stage starts over)")
    stderr.print(f"[yellow]interrupted:[/yellow] {escape(message)}")
    if as_json:
        print_json({"ok": False, "error": f"interrupted: {message}", "interrupted": where,
                    "stage_dir": progress.stage_dir, "finished": progress.finished})
    return typer.Exit(130)


def _lab_config(path: str | None, quick: bool, workdir: str | None, set_: list[str],
                as_json: bool):
    """The run's :class:`~prefkit.lab.config.LabConfig`: the quick defaults (``--quick``), then
    the YAML file, then ``--workdir`` and the ``--set`` overrides. Every setting is checked here,
    before any work; an error names the file (line and column for YAML syntax) or ``--set``."""
    from ..lab.config import QUICK, LabConfig
    from ..train.config import ConfigError, config_from_dict, parse_overrides

    data: dict[str, Any] = dict(QUICK) if quick else {}
    try:
        if path:
            data.update(read_yaml_mapping(path, "LabConfig settings"))
            config_from_dict(LabConfig, data, source=path)  # the file's own errors name it
        data.update(parse_overrides(set_))
        if workdir:
            data["workdir"] = workdir
        return config_from_dict(LabConfig, data, source="--set" if set_ else "--workdir")
    except ConfigError as exc:
        raise bad_input(str(exc), as_json) from None


def read_yaml_mapping(path: str, what: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (empty file: ``{}``); a file that cannot
    be read, invalid YAML (with its line and column) or another top-level value is a
    :class:`~prefkit.train.config.ConfigError` naming the file."""
    import yaml

    from ..train.config import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem or exc.context}"
                          ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} at the top level, got a "
                          f"{type(loaded).__name__}")
    return loaded


def methods_table(result: dict[str, Any], title: str | None = None):
    """The lab's per-method numbers as a rich table (the CLI's and the demo's)."""
    from rich.table import Column, Table

    methods = result["methods"]
    pairs = {m.get("ranking_pairs") for m in methods.values()} - {None}
    caption = ("ranking accuracy: the better of two held-out answers more likely under the "
               "policy" + (f", on {pairs.pop()} gold-ordered pairs" if len(pairs) == 1 else ""))
    table = Table("method", Column("gold reward", width=6),  # fits 80 columns
                  Column("win rate vs SFT (95% CI)", min_width=13),
                  Column("LC win rate", width=6), Column("KL to SFT", width=5),
                  Column("length", width=6), Column("ranking accuracy (95% CI)", min_width=13),
                  title=title, caption=caption)
    for name, m in methods.items():
        table.add_row(name, f"{m['gold_reward']:.3f}",
                      _with_ci(m["win_rate_vs_sft"], m["win_rate_ci"]),
                      f"{m['lc_win_rate_vs_sft']:.3f}",
                      "-" if m["kl_to_sft"] is None else f"{m['kl_to_sft']:.2f}",
                      f"{m['mean_length']:.1f}",
                      _with_ci(m.get("ranking_accuracy"), m.get("ranking_accuracy_ci")))
    return table


def accuracy_table(result: dict[str, Any]):
    """A verifiable task's held-out accuracy per method (pass@1 of ``eval_samples`` answers
    per prompt) and its gain over SFT, each with its 95% interval (paired for the gain); None
    when no method has an accuracy."""
    from rich.table import Table

    rows = {n: m for n, m in result["methods"].items() if m.get("accuracy") is not None}
    if not rows:
        return None
    k = next(iter(rows.values())).get("eval_samples")
    table = Table("method", "accuracy (95% CI)", "gain vs SFT (paired 95% CI)",
                  f"pass@{k}", f"maj@{k}", title="accuracy on held-out prompts (checker)",
                  caption=f"{k} sampled answers per held-out prompt")
    for name, m in rows.items():
        table.add_row(name, _with_ci(m["accuracy"], m.get("accuracy_ci")),
                      _with_ci(m.get("accuracy_gain"), m.get("accuracy_gain_ci")),
                      _with_ci(m.get(f"pass@{k}"), None), _with_ci(m.get(f"maj@{k}"), None))
    return table


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    """``value`` with its interval on a second line (the table fits 80 columns); ``-`` without
    a value (best-of-n's ranking accuracy, older results)."""
    if value is None:
        return "-"
    return f"{value:.3f}\n({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}"


def leaderboard_table(rows: list[dict[str, Any]]):
    """The gold-judged arena leaderboard of the lab's policies as a rich table."""
    from rich.table import Table

    board = Table("rank", "policy", "Elo (95% CI)", "wins-losses-ties",
                  title="leaderboard: every pair of policies judged by the gold reward")
    for row in rows:
        board.add_row(str(row["rank"]), row["model"],
                      f"{row['rating']:.0f} ({row['ci_low']:.0f}-{row['ci_high']:.0f})",
                      f"{row['wins']}-{row['losses']}-{row['ties']}")
    return board


def _write_report(result: dict[str, Any], path: Path) -> None:
    """Write the HTML report of ``result`` to ``path`` and record the path as
    ``result["report"]``. A failure is a warning (and ``result["report_error"]``): the run's
    numbers are still printed."""
    from ..report import write_lab_report

    try:
        result["report"] = str(write_lab_report(result, path))
    except Exception as exc:  # noqa: BLE001 - never lose a finished run to its report
        stderr.print(f"[yellow]warning:[/yellow] no HTML report written to "
                     f"{escape(str(path))}: {escape(repr(exc))}")
        result["report"] = None
        result["report_error"] = f"{path}: {exc!r}"


@app.command("report")
@cli_errors
def report_cmd(
    result_file: Annotated[str, typer.Argument(
        metavar="RESULT.json", help="A saved `prefkit lab run --json` output.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.")
                      ] = "report.html",
    as_json: JsonOpt = False,
) -> None:
    """Render a saved `prefkit lab run --json` output as a self-contained HTML report (inline
    CSS and figures, no external resources)."""
    from ..report import write_lab_report

    try:
        text = Path(result_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise bad_input(f"{result_file}: cannot read: {reason}", as_json) from None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_input(f"{result_file}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                        f"column {exc.colno})", as_json) from None
    except RecursionError:
        raise bad_input(f"{result_file}: not a `prefkit lab run --json` output (arrays or "
                        "objects nested too deeply to read)", as_json) from None
    if not isinstance(result, dict) or not isinstance(result.get("methods"), dict | list):
        raise bad_input(f'{result_file}: not a `prefkit lab run --json` output (no "methods" '
                        "object)", as_json)
    try:
        path = write_lab_report(result, output)
    except RecursionError:
        raise bad_input(f"{result_file}: values nested too deeply to render", as_json) from None
    if as_json:
        print_json({"ok": True, "report": str(path)})
        return
    stdout.print(f"report: {path}", markup=False)
