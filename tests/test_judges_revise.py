"""Constitutional critique -> revision through a real HTTP server (the stub): the principle
drawn per response, the critique fed into the revision prompt, pairs written with the revision
chosen, and unchanged / empty / failed revisions counted, never written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.data.io import read_records
from prefkit.judges.revise import read_principles

sys.path.insert(0, str(Path(__file__).parent))
from judges_stub import StubServer, prompt_of  # noqa: E402

runner = CliRunner()


def writer(body: dict) -> str:
    """Critique: names the principle; revision: the answer in capitals plus the critique's
    principle, except for answers that ask for no change or an empty one."""
    text = prompt_of(body)
    answer = text.split("[Answer]\n", 1)[1].split("\n\n[Principle]", 1)[0]
    principle = text.split("[Principle]\n", 1)[1].split("\n\n", 1)[0]
    if "[Critique]" not in text:
        return f"It ignores: {principle}"
    if "keep" in answer:
        return answer
    if "blank" in answer:
        return "   "
    critique = text.split("[Critique]\n", 1)[1].split("\n\n", 1)[0]
    return f"{answer.upper()} ({critique})"


def test_revise_writes_pairs_from_critique_and_revision(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFKIT_JUDGE_CACHE", raising=False)
    principles = tmp_path / "principles.md"
    principles.write_text("# Principles\n\n- Be honest.\n- Be brief.\n")
    assert read_principles(principles) == ["Be honest.", "Be brief."]
    rows = [{"prompt": f"question {i}", "responses": [f"answer {i}"]} for i in range(6)]
    rows += [{"prompt": "q keep", "responses": ["please keep it"]},
             {"prompt": "q blank", "responses": ["blank one"]}]
    data = tmp_path / "answers.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with StubServer(writer) as stub:
        result = runner.invoke(app, [
            "judge", "revise", str(data), "--judge", f"http:writer@{stub.base_url}",
            "--principles", str(principles), "--out", str(tmp_path / "pairs.jsonl"),
            "--json"])
        requests = len(stub.records)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["pairs"] == 6 and out["status"] == {"ok": 6, "unchanged": 1, "empty": 1}
    assert requests == 16  # a critique and a revision for each of the 8
    pairs = list(read_records(tmp_path / "pairs.jsonl"))
    assert len(pairs) == 6
    for pair in pairs:
        principle = pair.metadata["principle"]
        assert principle in ("Be honest.", "Be brief.")
        assert pair.metadata["critique"] == f"It ignores: {principle}"
        assert pair.response_a == f"{pair.response_b.upper()} (It ignores: {principle})"
        assert pair.outcome.value == "a" and pair.annotator.kind.value == "judge"
    # the principle a response gets depends on the seed, not on the order of the work
    assert len({p.metadata["principle"] for p in pairs}) == 2


def test_revise_errors(tmp_path):
    empty = tmp_path / "none.md"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no principle"):
        read_principles(empty)
    data = tmp_path / "a.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["r"]}) + "\n")
    principles = tmp_path / "p.md"
    principles.write_text("- Be kind.\n")
    result = runner.invoke(app, ["judge", "revise", str(data), "--judge", "lab:sort:fair",
                                 "--principles", str(principles), "--out",
                                 str(tmp_path / "o.jsonl"), "--json"])
    assert result.exit_code == 2 and "needs a text model" in json.loads(result.stdout)["error"]
