"""`prefkit lab run`: the feedback loop on the built-in simulated world (first slice)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import JsonOpt, bad_input, cli_errors, print_json, stdout

app = typer.Typer(no_args_is_help=True, help="The lab: the whole loop with known gold rewards.")


@app.command("run")
@cli_errors
def run(
    config: Annotated[str | None, typer.Argument(help="YAML file with LabConfig fields.")
                      ] = None,
    quick: Annotated[bool, typer.Option(help="The small config used by the tests.")] = False,
    workdir: Annotated[str | None, typer.Option(help="Where the run writes its files.")
                       ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any LabConfig field: k=v")
                    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """SFT policy -> samples -> simulated annotators -> reward model -> direct alignment and
    best-of-N -> gold-judged evaluation (win rate vs SFT with CIs, LC win rate, KL, length)."""
    import yaml

    from ..lab.pipeline import QUICK, LabConfig, run_lab
    from ..train.config import ConfigError, config_from_dict, parse_overrides

    data: dict = dict(QUICK) if quick else {}
    try:
        if config:
            loaded = yaml.safe_load(open(config, encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config}: expected a mapping of LabConfig fields")
            data.update(loaded)
        data.update(parse_overrides(set_ or []))
        if workdir:
            data["workdir"] = workdir
        cfg = config_from_dict(LabConfig, data, source=config or "overrides")
    except ConfigError as exc:
        raise bad_input(str(exc), as_json) from None
    result = run_lab(cfg)
    if as_json:
        print_json(result)
        return
    from rich.table import Table

    table = Table("method", "gold reward", "win rate vs SFT (95% CI)", "LC win rate", "KL",
                  "length", title=f"lab: {cfg.task}")
    for name, m in result["methods"].items():
        table.add_row(name, f"{m['gold_reward']:.3f}",
                      f"{m['win_rate_vs_sft']:.3f} ({m['win_rate_ci'][0]:.3f}-"
                      f"{m['win_rate_ci'][1]:.3f})", f"{m['lc_win_rate_vs_sft']:.3f}",
                      "-" if m["kl_to_sft"] is None else f"{m['kl_to_sft']:.2f}",
                      f"{m['mean_length']:.1f}")
    stdout.print(table)
