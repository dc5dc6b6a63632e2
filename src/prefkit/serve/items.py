"""Campaign items from files: feedback records to re-label, or prompts with candidate responses.

Sources (any reader prefkit has: JSONL, JSON arrays, Parquet, Hugging Face dataset folders):

- feedback records in any format prefkit reads (``prefkit data formats``): comparisons give
  their two responses, rankings their K, ratings / binary labels their one response;
- candidate rows ``{"prompt": ..., "responses": [...], "models": [...]}`` (``models``
  optional; needed for an arena) or ``{"prompt": ..., "outputs": {model: response}}``;
- AlpacaEval model-output files (``instruction``, ``output``, ``generator``): give one file per
  model and the outputs are grouped by instruction (an arena pool, or items to compare).

Each task takes what fits it (:meth:`TaskSettings.responses_per_item`): a one-response task
(rating, binary, critique) gets one item per distinct (prompt, response); pairwise needs items
of exactly two responses; ranking and arena take two or more. An item is
``{"prompt", "responses", "models"?, "source_id"?, "prompt_id"?}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from ..data.errors import RecordError
from ..data.records import Record, text_content
from .tasks import TaskSettings

CANDIDATE_KEYS = frozenset({"prompt", "responses"})
OUTPUTS_KEYS = frozenset({"prompt", "outputs"})
ALPACA_KEYS = frozenset({"instruction", "output", "generator"})


def _first_row(path: str | os.PathLike) -> dict:
    from ..data.io import iter_rows

    for row in iter_rows(path):
        if row.error is not None:
            raise row.error
        return row.data or {}
    return {}


def candidate_items(source: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items from candidate rows given as dicts (e.g. the API's request body); errors name
    ``source`` and the 1-based row."""
    from ..data.io import Row

    return list(_candidates(source, (Row(n, row) for n, row in enumerate(rows, 1))))


def _candidates(path: str, rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for row in rows:
        if row.error is not None:
            raise row.error
        data = row.data
        if not isinstance(data, dict):
            raise RecordError(path, row.line, None, "an object {prompt, responses}",
                              "wrong_type", data)
        if "outputs" in data:
            outputs = data["outputs"]
            if not isinstance(outputs, dict) or len(outputs) < 1 or not all(
                    isinstance(k, str) and isinstance(v, (str, list)) for k, v in outputs.items()):
                raise RecordError(path, row.line, "outputs", "an object {model: response}",
                                  "wrong_type", outputs)
            models, responses = list(outputs), list(outputs.values())
        else:
            responses = data.get("responses")
            if not isinstance(responses, list) or not responses:
                raise RecordError(path, row.line, "responses", "a non-empty list of responses",
                                  "wrong_type", responses)
            models = data.get("models")
            if models is not None and (not isinstance(models, list)
                                       or len(models) != len(responses)
                                       or not all(isinstance(m, str) and m for m in models)):
                raise RecordError(path, row.line, "models",
                                  "a list naming the model of each response", "wrong_type",
                                  models)
        prompt = data.get("prompt")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise RecordError(path, row.line, "prompt", "a non-empty text or conversation",
                              "wrong_type", prompt)
        for i, response in enumerate(responses):
            if not isinstance(response, (str, list)):
                raise RecordError(path, row.line, f"responses[{i}]", "a text or conversation",
                                  "wrong_type", response)
        item = {"prompt": prompt, "responses": responses}
        if models is not None:
            item["models"] = models
        if isinstance(data.get("id"), str):
            item["source_id"] = data["id"]
        yield item


def _alpaca(paths: list[str]) -> list[dict[str, Any]]:
    """AlpacaEval outputs of several models grouped by instruction (file order kept)."""
    from ..data.io import iter_rows

    grouped: dict[str, dict[str, Any]] = {}
    for path in paths:
        for row in iter_rows(path):
            if row.error is not None:
                raise row.error
            data = row.data
            for key in sorted(ALPACA_KEYS):
                if not isinstance(data.get(key), str):
                    raise RecordError(path, row.line, key, "a text (AlpacaEval model outputs)",
                                      "missing_field" if key not in data else "wrong_type",
                                      data.get(key))
            entry = grouped.setdefault(data["instruction"], {"prompt": data["instruction"],
                                                             "outputs": {}})
            entry["outputs"][data["generator"]] = data["output"]
    return [{"prompt": e["prompt"], "responses": list(e["outputs"].values()),
             "models": list(e["outputs"])} for e in grouped.values()]


def _from_record(record: Record) -> dict[str, Any] | None:
    kind = record.kind
    if kind == "comparison":
        item = {"prompt": record.prompt, "responses": [record.response_a, record.response_b]}
    elif kind == "ranking":
        item = {"prompt": record.prompt, "responses": list(record.responses)}
        models = record.metadata.get("models")
        if isinstance(models, list) and len(models) == len(record.responses):
            item["models"] = models
    elif kind in ("rating", "binary"):
        item = {"prompt": record.prompt, "responses": [record.response]}
    else:
        return None
    item["source_id"] = record.id
    return item


def read_items(paths: list[str], settings: TaskSettings, *, format: str | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Campaign items for ``settings.task`` from one or more files (see the module docstring);
    a ``ValueError`` / :class:`~prefkit.data.errors.RecordError` names the file, record and
    field when something does not fit."""
    from ..data.io import iter_rows, read_records

    if not paths:
        raise ValueError("give at least one file of items")
    first = _first_row(paths[0])
    spans: list[tuple[str, int]] = []  # (file, index of its first item)
    if set(first) >= ALPACA_KEYS:
        items = _alpaca(paths)
    else:
        items = []
        for path in paths:
            spans.append((str(path), len(items)))
            head = _first_row(path)
            if set(head) >= CANDIDATE_KEYS or set(head) >= OUTPUTS_KEYS:
                items.extend(_candidates(str(path), iter_rows(path)))
                continue
            for n, record in enumerate(read_records(path, format), 1):
                item = _from_record(record)
                if item is None:
                    raise RecordError(str(path), n, "kind",
                                      "comparisons, rankings, ratings or binary labels "
                                      "(records with responses to label)", "wrong_type",
                                      record.kind, row_kind="record")
                items.append(item)
    # errors name the file and its item: each file on its own first (copies: the arena's fit
    # numbers prompts), then all together
    for i, (path, start) in enumerate(spans if len(spans) > 1 else []):
        end = spans[i + 1][1] if i + 1 < len(spans) else len(items)
        try:
            fit_task([dict(item) for item in items[start:end]], settings)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    try:
        items = fit_task(items, settings)
    except ValueError as exc:
        raise ValueError(f"{', '.join(map(str, paths))}: {exc}") from None
    return items[:limit] if limit is not None else items


def _sample_answer(settings: TaskSettings, k: int) -> dict[str, Any]:
    task = settings.task
    if task == "pairwise":
        return {"choice": "first", **({"strength": 2} if settings.strength else {}),
                **({"rationale": "x"} if settings.rationale == "required" else {})}
    if task == "ranking":
        return {"tiers": [[i] for i in range(k)]}
    if task == "rating":
        return {"scores": {name: low for name, (low, _) in settings.scales.items()}}
    if task == "binary":
        return {"desirable": True}
    return {"text": "x"}


def check_item(settings: TaskSettings, item: dict[str, Any], n: int) -> None:
    """Raise ``ValueError`` (naming item ``n``) unless a label of ``item`` makes a valid
    feedback record -- e.g. a pairwise item's two responses must differ, no text is empty."""
    from ..data.errors import FieldError
    from ..data.formats import decode_native
    from ..data.records import Annotator, to_dict
    from .tasks import to_record

    if settings.task == "arena":
        return
    k = len(item["responses"])
    record = to_record(settings, item, _sample_answer(settings, k), list(range(k)),
                       annotator=Annotator("check"), metadata={})
    try:
        decode_native(to_dict(record))
    except FieldError as err:
        raise ValueError(f"item {n} ({text_content(item['prompt'])[:40]!r}): "
                         f"{err.describe()}") from None


def fit_task(items: list[dict[str, Any]], settings: TaskSettings) -> list[dict[str, Any]]:
    """``items`` shaped for ``settings.task`` (see the module docstring), each checked by
    :func:`check_item`."""
    out = _fit_shape(items, settings)
    for n, item in enumerate(out, 1):
        check_item(settings, item, n)
    return out


def _fit_shape(items: list[dict[str, Any]], settings: TaskSettings) -> list[dict[str, Any]]:
    low, high = settings.responses_per_item()
    if high == 1:  # one item per distinct (prompt, response)
        out, seen = [], set()
        for item in items:
            for i, response in enumerate(item["responses"]):
                key = orjson.dumps([item["prompt"], response])
                if key in seen:
                    continue
                seen.add(key)
                single = {"prompt": item["prompt"], "responses": [response]}
                if "models" in item:
                    single["models"] = [item["models"][i]]
                if "source_id" in item:
                    single["source_id"] = item["source_id"]
                out.append(single)
        return out
    for n, item in enumerate(items, 1):
        k = len(item["responses"])
        if k < low or (high is not None and k > high):
            expected = f"exactly {low}" if low == high else f"at least {low}"
            raise ValueError(f"item {n} ({text_content(item['prompt'])[:40]!r}) has {k} "
                             f"responses; a {settings.task} task needs {expected} (a ranking "
                             "campaign takes K responses)")
        if settings.task == "arena":
            models = item.get("models")
            if models is None:
                raise ValueError(f"item {n}: an arena needs the model of each response "
                                 "(a 'models' list, an 'outputs' object, or AlpacaEval files)")
            if len(set(models)) != len(models):
                raise ValueError(f"item {n}: a model appears twice among its responses")
            item.setdefault("prompt_id", str(n))
    return items
