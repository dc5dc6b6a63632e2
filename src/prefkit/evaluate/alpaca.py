"""AlpacaEval's files and win rates: model outputs in, annotations out, the report.

The file formats are AlpacaEval's (github.com/tatsu-lab/alpaca_eval), so its files and
prefkit's go both ways:

- **model outputs** (:func:`read_model_outputs`): a JSON array (or JSONL) of
  ``{"instruction", "output", "generator", "dataset"?}``, one object per instruction;
- **annotations** (:func:`read_annotations`, :func:`write_annotations`): a JSON array of
  ``{"instruction", "output_1", "generator_1", "output_2", "generator_2", "annotator",
  "preference", ...}`` where ``output_1`` is the *reference* and ``output_2`` the evaluated
  model, and ``preference`` is 1 (reference better), 2 (model better), 1.5 (tie), a soft value
  in ``[1, 2]`` (AlpacaEval 2's log-prob judges), or null when the judge's answer was not
  usable. AlpacaEval's old encoding of a tie, 0, is read as 1.5, as AlpacaEval does.

Judging (:func:`judge_pairs`) follows ``alpaca_eval.evaluate``: outputs are matched by
instruction (:func:`pair_outputs`; unlike AlpacaEval's inner join a missing or repeated
instruction is an error naming the file and the instruction), identical outputs are a tie
without a judge call, and each pair is shown once in an order drawn per instruction with
AlpacaEval's own rule (:func:`alpaca_switched`: ``random.Random("is_switched_outputs" +
instruction + "123").choices([False, True])``, so the model is shown first on the same
instructions as in AlpacaEval). ``both_orders=True`` instead judges every pair in both orders
and averages (Balanced Position Calibration, :mod:`prefkit.judges.bias`). An unparsed or
failed judgment leaves ``preference`` null: it is reported and left out of every rate, never
counted as a loss or a tie.

The report (:func:`winrate_report`) computes, over the annotations with a preference, in
percent as AlpacaEval prints them:

- ``win_rate``: ``mean(preference - 1) * 100`` (a tie earns one half, a soft preference its
  value), ``standard_error`` its SEM (``ddof=1``), and a 95% **normal** interval
  ``win_rate +- 1.96 * standard_error`` -- the same numbers as ``alpaca_eval.metrics.
  get_winrate`` (``win_rate``, ``standard_error``);
- ``discrete_win_rate``: each preference rounded to a win, a loss or (exactly 1.5) a tie, ties
  counting one half (AlpacaEval's ``discrete_win_rate``);
- ``lc_win_rate``: the length-controlled win rate of
  :func:`prefkit.evaluate.winrate.length_controlled_win_rate` without other models, i.e.
  AlpacaEval's GLM ``length_controlled_minimal``: ``logit P(model wins) = theta + phi *
  tanh(delta_len / sd(delta_len))`` with lengths in characters, and LC ``= sigmoid(theta)``;
  with ``bootstrap > 0`` a percentile interval from refitting on resampled instructions.

**Configured like AlpacaEval** (what the comparison test runs): ``alpaca_eval.metrics.
get_length_controlled_winrate(annotations, glm_info={"formula": GLM_INFO[
"length_controlled_minimal"]["formula"], "regularize_to_baseline_lambda": None, "kwargs":
{"n_splits": 0, "C": 1 / l2, "penalty": "l2", "solver": "lbfgs"}}, save_weights_dir=None)``:
the same formula (no instruction difficulty, no gamed-baseline rows) and the same ridge
penalty (sklearn's ``1/2 |w|^2 + C * sum(loss)`` equals ours, ``sum(loss) + l2/2 |w|^2``, at
``C = 1/l2``), no baseline re-prediction and no weights saved. The remaining difference is
the scale ``sd(delta_len)``: AlpacaEval's pandas ``std`` has ``ddof=1``, ours ``ddof=0``
(measured: under 0.02 points on 300 instructions). AlpacaEval's stock ``length_controlled_minimal``
instead fits an L1 penalty with its strength chosen by 5-fold cross-validation, which can
shrink ``theta`` to 0 (LC exactly 50%); the leaderboard's ``length_controlled_v1`` adds
instruction difficulties and "gamed" verbose/concise baselines downloaded from the Hugging Face
hub. Neither is reproduced here; see
:func:`~prefkit.evaluate.winrate.length_controlled_win_rate` for the difficulty term with other
models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.data.errors import (
    DUPLICATE_RECORD,
    MISSING_FIELD,
    NO_RECORDS,
    OUT_OF_SCALE,
    WRONG_TYPE,
    RecordError,
)

__all__ = [
    "SWITCH_SEED", "alpaca_switched", "annotations_from_judgments", "judge_pairs",
    "pair_outputs", "read_annotations", "read_model_outputs", "winrate_report",
    "write_annotations",
]

SWITCH_SEED = 123
"""AlpacaEval's default seed of the per-instruction position swap (``BaseProcessor.seed``)."""

UNMATCHED_INSTRUCTION = "unmatched_instruction"
"""Error code: an instruction of one outputs file that the other file does not have."""


# --------------------------------------------------------------------------- reading files


def _rows(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """``[(record number, object)]`` of a JSON array / JSONL file; the row kind for errors."""
    from prefkit.data.io import check_source_exists, iter_rows, row_kind_of, source_kind

    check_source_exists(path)
    kind = row_kind_of(source_kind(path))
    out = []
    for row in iter_rows(path):
        if row.error is not None:
            raise row.error
        assert row.data is not None
        out.append((row.line, row.data))
    return out, kind


def _text(path: str, line: int, kind: str, data: dict[str, Any], key: str,
          expected: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RecordError(str(path), line, key, expected,
                          MISSING_FIELD if key not in data else WRONG_TYPE,
                          value, row_kind=kind)
    return value


def read_model_outputs(path: str | Path) -> list[dict[str, Any]]:
    """An AlpacaEval model-outputs file: ``[{"instruction", "output", "generator",
    "dataset"?}]`` (JSON array or JSONL). ``instruction`` and ``output`` must be strings;
    a missing ``generator`` becomes the file's stem. Every record must name the same generator
    (one model per file). Errors are :class:`~prefkit.data.errors.RecordError` naming the file,
    the record and the field."""
    rows, kind = _rows(path)
    source = str(path)
    out = []
    first_generator: tuple[int, str] | None = None
    for line, data in rows:
        record = {
            "instruction": _text(source, line, kind, data, "instruction",
                                 "the instruction, a string (AlpacaEval model outputs)"),
            "output": _text(source, line, kind, data, "output",
                            "the model's output, a string (AlpacaEval model outputs)"),
        }
        generator = data.get("generator", Path(source).stem)
        if not isinstance(generator, str):
            raise RecordError(source, line, "generator", "the model's name, a string",
                              WRONG_TYPE, generator, row_kind=kind)
        if first_generator is None:
            first_generator = (line, generator)
        elif generator != first_generator[1]:
            raise RecordError(source, line, "generator",
                              f"one model per file: {first_generator[1]!r} as in {kind} "
                              f"{first_generator[0]}", WRONG_TYPE, generator, row_kind=kind)
        record["generator"] = generator
        if isinstance(data.get("dataset"), str):
            record["dataset"] = data["dataset"]
        record["_line"], record["_kind"] = line, kind
        out.append(record)
    if not out:
        raise RecordError(source, None, None, "at least one model output", NO_RECORDS)
    return out


def _by_instruction(outputs: Sequence[dict[str, Any]], source: str
                    ) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(outputs):
        line, kind = record.get("_line", i + 1), record.get("_kind", "record")
        instruction = record["instruction"]
        if instruction in found:
            first = found[instruction].get("_line", "?")
            raise RecordError(source, line, "instruction",
                              f"each instruction once (AlpacaEval matches outputs by "
                              f"instruction); this one is also {kind} {first}",
                              DUPLICATE_RECORD, instruction, row_kind=kind)
        found[instruction] = record
    return found


def pair_outputs(model: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]], *,
                 model_source: str = "model outputs",
                 reference_source: str = "reference outputs") -> list[dict[str, Any]]:
    """The model's outputs matched to the reference's by instruction, in the model file's
    order: ``[{"instruction", "output_1" (reference), "generator_1", "output_2" (model),
    "generator_2", "dataset"?}]`` -- AlpacaEval's annotation rows before judging.

    An instruction that appears twice in either file, or in one file only, is a
    :class:`~prefkit.data.errors.RecordError` naming the file, the record and the instruction
    (AlpacaEval's inner join would silently drop or multiply rows). ``*_source``: the files'
    names for those messages."""
    models = _by_instruction(model, model_source)
    references = _by_instruction(reference, reference_source)
    for instruction, record in references.items():
        if instruction not in models:
            raise RecordError(reference_source, record.get("_line"), "instruction",
                              f"an instruction that {model_source} also has (outputs are "
                              "matched by instruction)", UNMATCHED_INSTRUCTION, instruction,
                              row_kind=record.get("_kind", "record"))
    pairs = []
    for instruction, record in models.items():
        ref = references.get(instruction)
        if ref is None:
            raise RecordError(model_source, record.get("_line"), "instruction",
                              f"an instruction that {reference_source} also has (outputs are "
                              "matched by instruction)", UNMATCHED_INSTRUCTION, instruction,
                              row_kind=record.get("_kind", "record"))
        pair = {"instruction": instruction, "output_1": ref["output"],
                "generator_1": ref["generator"], "output_2": record["output"],
                "generator_2": record["generator"]}
        dataset = record.get("dataset", ref.get("dataset"))
        if dataset is not None:
            pair["dataset"] = dataset
        pairs.append(pair)
    return pairs


# --------------------------------------------------------------------------- judging


def alpaca_switched(instruction: str, seed: int = SWITCH_SEED) -> bool:
    """Whether AlpacaEval shows the model's output (``output_2``) first for this instruction:
    its ``RandomSwitchTwoColumnsProcessor`` with ``random_seed_columns=["instruction"]`` draws
    ``random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True])``.
    """
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices(
        [False, True], k=1)[0]


def _request(pair: dict[str, Any], model_first: bool) -> Any:
    from prefkit.judges.base import JudgeRequest

    outputs = (pair["output_1"], pair["output_2"])
    models = (pair["generator_1"], pair["generator_2"])
    if model_first:
        outputs, models = outputs[::-1], models[::-1]
    return JudgeRequest("compare", pair["instruction"], outputs, models=models)


def annotations_from_judgments(pairs: Sequence[dict[str, Any]], judgments: Sequence[Any],
                               annotator: str, *, switched: Sequence[bool] | None = None
                               ) -> list[dict[str, Any]]:
    """AlpacaEval annotation rows: ``pairs`` (from :func:`pair_outputs`) with ``annotator``,
    ``preference`` and ``raw_completion``, and prefkit's ``judge_status`` (ok / unparsed /
    failed), ``judge_reason`` (when not ok) and ``judge_orders``.

    ``judgments[i]`` is, for pair i: None (identical outputs: a tie, no judge call); a
    :class:`~prefkit.judges.bias.PairJudgment` whose forward request showed the reference
    first (``preference = 2 - p_a``); or a single :class:`~prefkit.judges.base.Judgment` of
    the request shown with the model first when ``switched[i]`` (``preference = 1 + p_first``)
    and the reference first otherwise (``preference = 2 - p_first``). A judgment that is not
    ok gives ``preference = None``."""
    from prefkit.judges.bias import PairJudgment

    if len(judgments) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(judgments)} judgments")
    out = []
    for i, (pair, judged) in enumerate(zip(pairs, judgments, strict=True)):
        row = {**pair, "annotator": annotator}
        if judged is None:
            row.update(preference=1.5, raw_completion=None, judge_status="ok",
                       judge_orders=0)
        elif isinstance(judged, PairJudgment):
            p_ref = judged.p_a
            row.update(preference=None if p_ref is None else 2.0 - p_ref,
                       raw_completion=[judged.forward.raw, judged.backward.raw],
                       judge_status=judged.status, judge_orders=2)
            if not judged.ok:
                bad = judged.forward if not judged.forward.ok else judged.backward
                row["judge_reason"] = bad.reason
        else:
            if switched is None:
                raise ValueError("single-order judgments need `switched` (which pairs showed "
                                 "the model first)")
            p = judged.p_first
            preference = None if not judged.ok or p is None else (
                1.0 + p if switched[i] else 2.0 - p)
            row.update(preference=preference, raw_completion=judged.raw,
                       judge_status=judged.status, judge_orders=1,
                       model_shown_first=bool(switched[i]))
            if not judged.ok:
                row["judge_reason"] = judged.reason
        out.append(row)
    return out


def judge_pairs(pairs: Sequence[dict[str, Any]], judge: Any, *, both_orders: bool = False,
                seed: int = SWITCH_SEED, cache: Any = None, concurrency: int = 8,
                on_done: Callable[[int, Any], None] | None = None) -> list[dict[str, Any]]:
    """Judge every pair (module docstring) and return its AlpacaEval annotations
    (:func:`annotations_from_judgments`; ``annotator`` is the judge's label). One order by
    default, drawn per instruction by :func:`alpaca_switched` with ``seed``; ``both_orders``:
    both, averaged. ``cache`` / ``concurrency`` / ``on_done`` as in
    :func:`prefkit.judges.base.ajudge_all` (``on_done`` is called per judge call)."""
    from prefkit.judges.base import ajudge_all, judge_label, run_sync
    from prefkit.judges.bias import ajudge_both_orders

    to_judge = [i for i, p in enumerate(pairs) if p["output_1"] != p["output_2"]]
    switched = [False if both_orders else alpaca_switched(p["instruction"], seed)
                for p in pairs]
    requests = [_request(pairs[i], switched[i]) for i in to_judge]
    if both_orders:
        found = run_sync(ajudge_both_orders(judge, requests, cache=cache,
                                            concurrency=concurrency, on_done=on_done))
    else:
        found = run_sync(ajudge_all(judge, requests, cache=cache, concurrency=concurrency,
                                    on_done=on_done))
    judgments: list[Any] = [None] * len(pairs)
    for i, judged in zip(to_judge, found, strict=True):
        judgments[i] = judged
    return annotations_from_judgments(pairs, judgments, judge_label(judge),
                                      switched=switched)


# --------------------------------------------------------------------------- annotations


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """An AlpacaEval annotations file (JSON array or JSONL), checked: ``instruction``,
    ``output_1`` and ``output_2`` strings; ``preference`` a number in ``[1, 2]``, 0 (read as
    1.5, AlpacaEval's old tie) or null / NaN / missing (not judged: counted as
    ``judge_status`` if the row has one, else as unparsed). Anything else is a
    :class:`~prefkit.data.errors.RecordError` naming the file, the record and the field."""
    rows, kind = _rows(path)
    source = str(path)
    out = []
    for line, data in rows:
        for key in ("instruction", "output_1", "output_2"):
            _text(source, line, kind, data, key, "a string (AlpacaEval annotations)")
        for key in ("generator_1", "generator_2"):
            if key in data and not isinstance(data[key], str):
                raise RecordError(source, line, key, "a model name, a string", WRONG_TYPE,
                                  data[key], row_kind=kind)
        pref = data.get("preference")
        status = data.get("judge_status")
        if pref is None or (isinstance(pref, float) and math.isnan(pref)):
            pref = None
            if status not in ("unparsed", "failed"):
                status = "unparsed"
        elif isinstance(pref, bool) or not isinstance(pref, int | float):
            raise RecordError(source, line, "preference", "a number in [1, 2] (1: output_1 "
                              "better, 2: output_2 better, 1.5: tie) or null", WRONG_TYPE,
                              pref, row_kind=kind)
        elif pref == 0:
            pref = 1.5
        elif not 1 <= pref <= 2:
            raise RecordError(source, line, "preference", "a number in [1, 2] (1: output_1 "
                              "better, 2: output_2 better, 1.5: tie) or null", OUT_OF_SCALE,
                              pref, row_kind=kind)
        if pref is not None:
            status = "ok"
        out.append({**data, "preference": None if pref is None else float(pref),
                    "judge_status": status, "_line": line, "_kind": kind})
    if not out:
        raise RecordError(source, None, None, "at least one annotation", NO_RECORDS)
    return out


def write_annotations(annotations: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write annotations as AlpacaEval does (a JSON array, indent 2; not-judged preferences as
    null); prefkit's private keys (``_line``) are left out."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in a.items() if not k.startswith("_")} for a in annotations]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the report


def _one(values: set[Any], what: str, where: str) -> Any:
    if len(values) > 1:
        shown = ", ".join(sorted(map(repr, values))[:5])
        raise ValueError(f"{where}: annotations of one {what} at a time (the length-controlled "
                         f"fit is per model), found {len(values)}: {shown}")
    return next(iter(values)) if values else None


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def winrate_report(annotations: Sequence[dict[str, Any]], *, bootstrap: int = 0,
                   l2: float = 1e-2, level: float = 0.95, seed: int = 0,
                   where: str = "annotations") -> dict[str, Any]:
    """Win rate, discrete win rate and length-controlled win rate of one model against one
    reference from AlpacaEval annotations (module docstring; rates in percent).

    Rows with ``preference`` None (unparsed / failed) are left out and counted. ``bootstrap``
    resamples for the LC interval (0: no interval); ``l2``: the LC fit's ridge precision;
    ``level``: both intervals' level; ``seed``: the bootstrap's. ``where`` names the data in
    errors. Returns ``{"model", "reference", "annotator", "n", "n_annotations", "not_judged":
    {"unparsed", "failed"}, "wins", "ties", "losses", "win_rate", "standard_error",
    "ci_low", "ci_high", "ci", "discrete_win_rate", "lc_win_rate", "lc_ci_low",
    "lc_ci_high", "lc_ci", "bootstrap", "lc_standard_error", "lc_glm": {...}, "avg_length",
    "level"}``. ``lc_standard_error`` is AlpacaEval's (the SEM of the per-instruction
    predictions): 0 for this GLM, whose predictions without the length term are all equal.
    """
    from prefkit.evaluate.winrate import length_controlled_win_rate, win_rate

    if not annotations:
        raise ValueError(f"{where}: no annotations")
    model = _one({a.get("generator_2") for a in annotations} - {None}, "model (generator_2)",
                 where)
    reference = _one({a.get("generator_1") for a in annotations} - {None},
                     "reference (generator_1)", where)
    annotators = sorted({str(a["annotator"]) for a in annotations if a.get("annotator")})
    judged = [a for a in annotations if a.get("preference") is not None]
    not_judged = {"unparsed": 0, "failed": 0}
    for a in annotations:
        if a.get("preference") is None:
            not_judged["failed" if a.get("judge_status") == "failed" else "unparsed"] += 1
    if not judged:
        raise ValueError(f"{where}: no annotation has a preference ({not_judged['unparsed']} "
                         f"unparsed, {not_judged['failed']} failed)")
    p = np.array([float(a["preference"]) - 1.0 for a in judged])
    len_model = np.array([len(a["output_2"]) for a in judged], dtype=float)
    len_ref = np.array([len(a["output_1"]) for a in judged], dtype=float)
    wr = win_rate(p, ci="normal", level=level)
    n = len(p)
    discrete = (wr["wins"] + 0.5 * wr["ties"]) / n
    lc = length_controlled_win_rate(p, len_model, len_ref,
                                    [a["instruction"] for a in judged], l2=l2,
                                    n_bootstrap=bootstrap, level=level, seed=seed)
    return {
        "model": model,
        "reference": reference,
        "annotator": annotators[0] if len(annotators) == 1 else annotators,
        "n": n,
        "n_annotations": len(annotations),
        "not_judged": not_judged,
        "wins": wr["wins"],
        "ties": wr["ties"],
        "losses": wr["losses"],
        "win_rate": _pct(wr["win_rate"]),
        "standard_error": _pct(wr["se"]),
        "ci_low": _pct(wr["ci_low"]),
        "ci_high": _pct(wr["ci_high"]),
        "ci": "normal",
        "discrete_win_rate": 100.0 * discrete,
        "lc_win_rate": _pct(lc["lc_win_rate"]),
        "lc_ci_low": _pct(lc["ci_low"]),
        "lc_ci_high": _pct(lc["ci_high"]),
        "lc_ci": "bootstrap" if bootstrap > 0 else None,
        "bootstrap": bootstrap,
        "lc_standard_error": _pct(lc["lc_se"]),
        "lc_glm": {"form": "length_controlled_minimal", "theta": lc["theta"],
                   "phi": lc["phi"], "length_sd": lc["length_sd"], "l2": l2,
                   "length_term": lc["length_term"], "converged": lc["converged"]},
        "avg_length": float(len_model.mean()),
        "level": level,
    }
