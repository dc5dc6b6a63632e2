"""`prefkit serve generate`: arena outputs from OpenAI-compatible servers
(prefkit.serve.generate_outputs) -- against the fault-injecting stub (tests/judges_stub.py) and
once against two real `serve-model` apps over HTTP -- and the file feeds an arena campaign."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from prefkit.cli import app as cli_app
from prefkit.serve.generate_outputs import generate_outputs, parse_endpoint

sys.path.insert(0, os.path.dirname(__file__))
from judges_stub import StubServer, prompt_of  # noqa: E402
from serve_fixtures import serve_in_thread  # noqa: E402

PROMPTS = ["sort 3 1 2", "always fails at m1", "flaky at m1", "say hi", "both fail"]


def _answer(body: dict[str, Any]) -> str:
    return f"{body['model']} answers <{prompt_of(body)}> t={body['temperature']}"


def _plan_a(key: str, attempt: int, index: int) -> str | None:
    if key in ("always fails at m1", "both fail"):
        return "500"
    if key == "flaky at m1" and attempt < 2:
        return "503" if attempt == 0 else "500"
    return None


def _plan_b(key: str, attempt: int, index: int) -> str | None:
    return "400" if key == "both fail" else None


@pytest.fixture
def stubs() -> Iterator[tuple[StubServer, StubServer]]:
    with StubServer(_answer, faults=_plan_a, retry_after=0.05) as a, \
            StubServer(_answer, faults=_plan_b) as b:
        yield a, b


def test_parse_endpoint():
    assert parse_endpoint("m@x@http://127.0.0.1:9/v1") == ("m@x", "http://127.0.0.1:9/v1")
    for bad in ("m", "@http://h/v1", "m@ftp://h"):
        with pytest.raises(ValueError, match="MODEL@http"):
            parse_endpoint(bad)


def test_generate_with_faults(stubs):
    a, b = stubs
    conversation = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello"}]
    rows, failures = generate_outputs([*PROMPTS, conversation],
                                      [("m1", a.base_url), ("m2", b.base_url)],
                                      max_tokens=7, temperature=0.5, seed=3, retries=2,
                                      backoff=0.01)
    by_prompt = {json.dumps(r["prompt"]): r for r in rows}
    # both models, in the endpoints' order, with exactly what each server answered
    for prompt in ["sort 3 1 2", "flaky at m1", "say hi", conversation]:
        row = by_prompt[json.dumps(prompt)]
        key = prompt if isinstance(prompt, str) else "be brief\n\nhello"
        assert row["models"] == ["m1", "m2"]
        assert row["responses"] == [f"m1 answers <{key}> t=0.5", f"m2 answers <{key}> t=0.5"]
    assert [r["prompt"] for r in rows] == ["sort 3 1 2", "flaky at m1", "say hi", conversation]
    # the request: the model's name, the settings, a text prompt as one user message
    sent = a.attempts("say hi")[0].body
    assert sent["model"] == "m1" and sent["max_tokens"] == 7 and sent["seed"] == 3
    assert sent["messages"] == [{"role": "user", "content": "say hi"}]
    assert b.attempts("be brief\n\nhello")[0].body["messages"] == conversation
    # the flaky prompt: 503 (Retry-After honoured) then 500, then answered on the 3rd attempt
    flaky = a.attempts("flaky at m1")
    assert [r.outcome for r in flaky] == ["503", "500", "ok"]
    assert flaky[1].t - flaky[0].t >= 0.05 - 1e-3
    # a prompt with one answer and one with none: left out, reported per model and dropped
    assert [(f.prompt_index, f.model, f.reason) for f in failures] == [
        (1, "m1", "http 500"), (1, None, "fewer than 2 answers"),
        (4, "m1", "http 500"), (4, "m2", "http 400"), (4, None, "fewer than 2 answers")]
    assert len(a.attempts("always fails at m1")) == 3  # 1 + retries
    assert len(b.attempts("both fail")) == 1  # a 400 is final


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 endpoints"):
        generate_outputs(["x"], [("m", "http://127.0.0.1:9/v1")])
    with pytest.raises(ValueError, match="must differ"):
        generate_outputs(["x"], [("m", "http://127.0.0.1:9/v1")] * 2)
    with pytest.raises(ValueError, match="prompt 1"):
        generate_outputs(["x", 3], [("m", "http://a/v1"), ("n", "http://b/v1")])


def _pool(db: str, name: str) -> list[dict[str, Any]]:
    from prefkit.data.app_schema import CAMPAIGNS, ITEMS

    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        cid = conn.execute(sa.select(CAMPAIGNS.c.id).where(CAMPAIGNS.c.name == name)
                           ).scalar_one()
        payloads = conn.execute(sa.select(ITEMS.c.payload).where(
            ITEMS.c.campaign_id == cid, ITEMS.c.role == "pool").order_by(ITEMS.c.position)
        ).scalars().all()
    engine.dispose()
    return [orjson.loads(p) for p in payloads]


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_cli_generate_then_arena_campaign(stubs, tmp_path):
    a, b = stubs
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    out = tmp_path / "outputs.jsonl"
    runner = CliRunner()
    result = runner.invoke(cli_app, [
        "serve", "generate", str(prompts), "--endpoint", f"m1@{a.base_url}", "--endpoint",
        f"m2@{b.base_url}", "--out", str(out), "--max-tokens", "5", "--concurrency", "2",
        "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["prompts"] == 5 and report["rows"] == 3
    assert report["dropped"] == 2 and report["dropped_prompts"] == [1, 4]
    assert report["failed_by_model"] == {"m1": 2, "m2": 1}
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["sort 3 1 2", "flaky at m1", "say hi"]
    assert rows[0]["responses"] == ["m1 answers <sort 3 1 2> t=0.0",
                                    "m2 answers <sort 3 1 2> t=0.0"]
    assert a.max_in_flight <= 2

    db = str(tmp_path / "arena.db")
    result = runner.invoke(cli_app, ["serve", "campaign", "create", "arena1", "--task", "arena",
                                     "--items", str(out), "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["items"] == 3
    pool = _pool(db, "arena1")
    assert [(p["prompt"], p["responses"], p["models"]) for p in pool] == [
        (r["prompt"], r["responses"], r["models"]) for r in rows]


def test_cli_bad_input_and_no_rows(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "generate", str(prompts), "--endpoint",
                                     "m1@nowhere", "--endpoint", "m2@http://127.0.0.1:9/v1",
                                     "--out", str(tmp_path / "o.jsonl"), "--json"])
    assert result.exit_code == 2 and "m1@nowhere" in result.stdout
    result = runner.invoke(cli_app, ["serve", "generate", str(tmp_path / "missing.txt"),
                                     "--endpoint", "a@http://127.0.0.1:9/v1", "--endpoint",
                                     "b@http://127.0.0.1:9/v1", "--out",
                                     str(tmp_path / "o.jsonl"), "--json"])
    assert result.exit_code == 2 and "missing.txt" in result.stdout
    with StubServer(_answer, faults=lambda k, a, i: "400") as bad, StubServer(_answer) as ok:
        result = runner.invoke(cli_app, [
            "serve", "generate", str(prompts), "--endpoint", f"m1@{bad.base_url}",
            "--endpoint", f"m2@{ok.base_url}", "--out", str(tmp_path / "o.jsonl"), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["ok"] and report["rows"] == 0 and report["dropped"] == 1
    assert not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------- two real serve-model apps

def test_two_real_model_servers(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import httpx
    import torch
    from transformers import AutoModelForCausalLM

    from prefkit.lab.tasks import SortTask
    from prefkit.models.load import tiny_llama_config
    from prefkit.models.tokenizer import word_level_tokenizer
    from prefkit.serve.model_api import create_model_app

    task = SortTask()
    tok = word_level_tokenizer([*task.vocabulary(), "user:", "assistant:"], add_bos=True)
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with contextlib.ExitStack() as servers:
        endpoints = []
        for seed, name in [(0, "tiny0"), (1, "tiny1")]:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
            with torch.no_grad():
                model.lm_head.weight.mul_(4.0)
            base = servers.enter_context(serve_in_thread(create_model_app(model.eval(), tok,
                                                                          name)))
            endpoints.append((name, f"{base}/v1"))
        import random
        rng = random.Random(0)
        prompts = [task.sample_prompt(rng) for _ in range(3)]
        rows, failures = generate_outputs(prompts, endpoints, max_tokens=4)
        assert failures == [] and len(rows) == 3
        for prompt, row in zip(prompts, rows, strict=True):
            assert row["prompt"] == prompt and row["models"] == ["tiny0", "tiny1"]
            for (name, url), text in zip(endpoints, row["responses"], strict=True):
                direct = httpx.post(f"{url}/chat/completions", json={
                    "model": name, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 4, "temperature": 0.0, "seed": 0}, timeout=30).json()
                assert text == direct["choices"][0]["message"]["content"]
