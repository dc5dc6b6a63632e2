"""`prefkit serve-model`: a local causal LM behind the OpenAI-compatible API
(prefkit.serve.model_api) -- answers equal prefkit's own sampler, log-probs equal the model's
forward pass, OpenAI-shaped bodies and errors, over TestClient and once over real HTTP."""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from prefkit.cli import app as cli_app  # noqa: E402
from prefkit.lab.tasks import SortTask  # noqa: E402
from prefkit.models.generate import encode_prompt, sample  # noqa: E402
from prefkit.models.load import tiny_llama_config  # noqa: E402
from prefkit.models.tokenizer import train_tokenizer, word_level_tokenizer  # noqa: E402
from prefkit.serve.model_api import create_model_app, plain_chat_prompt  # noqa: E402
from serve_fixtures import serve_in_thread  # noqa: E402

WORDS = "words"
CHAT = "chat"


def _tiny(tok: Any, scale: float, eos_like: str | None = None) -> torch.nn.Module:
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        with torch.no_grad():  # sharper distributions
            model.lm_head.weight.mul_(scale)
            if eos_like is not None:  # EOS wins wherever this word would: some answers end
                weight = model.lm_head.weight
                weight[tok.eos_token_id] = 1.05 * weight[tok.convert_tokens_to_ids(eos_like)]
    return model.eval()


@pytest.fixture(scope="module")
def words() -> tuple[Any, Any, list[str]]:
    """A word-level model (one word = one token; no chat template) and sort prompts."""
    task = SortTask()
    tok = word_level_tokenizer([*task.vocabulary(), "user:", "assistant:"], add_bos=True)
    rng = random.Random(0)
    return _tiny(tok, 4.0, eos_like="1"), tok, [task.sample_prompt(rng) for _ in range(12)]


@pytest.fixture(scope="module")
def chat() -> tuple[Any, Any]:
    """A byte-level BPE model whose tokenizer has a chat template."""
    texts = ["the quick brown fox jumps over the lazy dog", "which answer is better, A or B?",
             "sort 3 1 2 gives 1 2 3", "a judge compares two responses to a prompt"] * 10
    tok = train_tokenizer(texts, vocab_size=320, min_frequency=1)
    return _tiny(tok, 2.0), tok


@pytest.fixture(scope="module")
def client(words, chat) -> Iterator[dict[str, TestClient]]:
    with TestClient(create_model_app(words[0], words[1], WORDS)) as w, \
            TestClient(create_model_app(chat[0], chat[1], CHAT, max_batch=2)) as c:
        yield {WORDS: w, CHAT: c}


def _forward_logprobs(model: Any, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    """``[len(ids), vocab]`` log_softmax of the model's own logits predicting ``ids``."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    assert {"message", "type", "code"} <= set(body["error"])
    return body["error"]


# ---------------------------------------------------------------------------- answers

def test_models_route(client):
    body = _ok(client[WORDS].get("/v1/models"))
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [WORDS]
    assert body["data"][0]["object"] == "model"
    assert _ok(client[WORDS].get(f"/v1/models/{WORDS}"))["id"] == WORDS
    assert _error(client[WORDS].get("/v1/models/other"), 404)["code"] == "model_not_found"


def test_greedy_completions_equal_sample_with_usage(client, words):
    model, tok, prompts = words
    body = _ok(client[WORDS].post("/v1/completions", json={
        "model": WORDS, "prompt": prompts[:4], "max_tokens": 6, "temperature": 0}))
    texts, ids = sample(model, tok, prompts[:4], k=1, max_new_tokens=6, temperature=0,
                        return_ids=True)
    assert body["object"] == "text_completion" and body["model"] == WORDS
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for choice, text, row in zip(body["choices"], texts, ids, strict=True):
        assert choice["text"] == text[0]
        assert choice["text"] == tok.decode(row[0], skip_special_tokens=True)
        ended = row[0][-1] == tok.eos_token_id
        assert choice["finish_reason"] == ("stop" if ended else "length")
        assert choice["logprobs"] is None
    prompt_tokens = sum(len(encode_prompt(tok, p)) for p in prompts[:4])
    completion_tokens = sum(len(r[0]) for r in ids)
    assert body["usage"] == {"prompt_tokens": prompt_tokens,
                             "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    assert {c["finish_reason"] for c in body["choices"]} == {"stop", "length"}


def test_completion_logprobs_equal_the_forward_pass(client, words):
    model, tok, prompts = words
    prompt = prompts[1]
    body = _ok(client[WORDS].post("/v1/completions", json={
        "model": WORDS, "prompt": prompt, "max_tokens": 6, "temperature": 1, "seed": 3,
        "logprobs": 3}))
    (choice,) = body["choices"]
    _, (ids,) = sample(model, tok, [prompt], k=1, max_new_tokens=6, temperature=1, seed=3,
                       return_ids=True)
    ids = ids[0]
    lp = _forward_logprobs(model, encode_prompt(tok, prompt), ids)
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) == body["usage"]["completion_tokens"]
    want = lp.gather(-1, torch.tensor(ids)[:, None])[:, 0]
    assert logprobs["token_logprobs"] == pytest.approx(want.tolist(), abs=1e-4)

    def name(i: int, tid: int) -> str:  # a word token adds " word" after the first
        if tid in tok.all_special_ids:
            return tok.convert_ids_to_tokens(tid)
        return (" " if i else "") + tok.decode([tid])

    assert logprobs["tokens"] == [name(i, t) for i, t in enumerate(ids)]
    offset = len(prompt)
    for i, (tid, top) in enumerate(zip(ids, logprobs["top_logprobs"], strict=True)):
        values, indices = lp[i].topk(3)
        items = list(top.items())
        assert [k for k, _ in items[:3]] == [name(i, int(t)) for t in indices]
        assert [v for _, v in items[:3]] == pytest.approx(values.tolist(), abs=1e-4)
        if tid in indices.tolist():
            assert len(items) == 3
        else:  # the sampled token is added (OpenAI: up to logprobs + 1 entries)
            assert items[3] == (name(i, tid), pytest.approx(want[i].item(), abs=1e-4))
        assert logprobs["text_offset"][i] == offset
        offset += 0 if tid in tok.all_special_ids else len(name(i, tid))
    assert prompt + choice["text"] == prompt + "".join(
        t for t, i in zip(logprobs["tokens"], ids, strict=True)
        if i not in tok.all_special_ids)


def test_chat_template_greedy_and_logprobs(client, chat):
    model, tok = chat
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "which answer is better?"}]
    body = _ok(client[CHAT].post("/v1/chat/completions", json={
        "model": CHAT, "messages": messages, "max_tokens": 8, "temperature": 0,
        "logprobs": True, "top_logprobs": 4}))
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    texts, (ids,) = sample(model, tok, [messages], k=1, max_new_tokens=8, temperature=0,
                           return_ids=True)
    ids = ids[0]
    content = choice["message"]["content"]
    assert content == tok.decode(ids, skip_special_tokens=True)
    assert content.strip() == texts[0][0]
    prompt_ids = encode_prompt(tok, messages)
    assert prompt_ids[-2:] == tok("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    assert body["usage"]["completion_tokens"] == len(ids)
    entries = choice["logprobs"]["content"]
    lp = _forward_logprobs(model, prompt_ids, ids)
    assert len(entries) == len(ids)
    for i, (entry, tid) in enumerate(zip(entries, ids, strict=True)):
        assert entry["logprob"] == pytest.approx(lp[i, tid].item(), abs=1e-4)
        assert entry["bytes"] == list(entry["token"].encode())
        values = [t["logprob"] for t in entry["top_logprobs"]]
        assert values == pytest.approx(lp[i].topk(4).values.tolist(), abs=1e-4)
        # greedy: the chosen token is the most likely one, named the same way
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["logprob"] == pytest.approx(values[0], abs=1e-5)


def test_chat_without_template_joins_roles(client, words):
    _, tok, prompts = words
    messages = [{"role": "user", "content": prompts[0]}]
    assert plain_chat_prompt(messages) == f"user: {prompts[0]}\nassistant:"
    body = _ok(client[WORDS].post("/v1/chat/completions", json={
        "messages": messages, "max_tokens": 3, "temperature": 0}))
    assert body["usage"]["prompt_tokens"] == len(encode_prompt(tok,
                                                               plain_chat_prompt(messages)))
    assert body["choices"][0]["logprobs"] is None


def _text(tokens: list[str], tok: Any) -> str:
    """The text of log-prob token strings (special tokens add nothing)."""
    return "".join(t for t in tokens if t not in tok.all_special_tokens)


def _long_greedy(client: TestClient, prompts: list[str], tok: Any) -> tuple[str, dict]:
    """A prompt whose greedy answer runs 8 tokens without EOS, and that answer (the one
    with the most different words)."""
    found = []
    for prompt in prompts:
        body = _ok(client.post("/v1/completions", json={
            "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 0}))
        choice = body["choices"][0]
        if choice["finish_reason"] == "length":
            found.append((len(set(choice["text"].split())), prompt, choice))
    assert found, "no prompt with a long greedy answer"
    _, prompt, choice = max(found, key=lambda x: x[0])
    return prompt, choice


def test_max_tokens_and_stop_strings(client, words):
    _, tok, prompts = words
    prompt, full = _long_greedy(client[WORDS], prompts, tok)
    tokens = full["logprobs"]["tokens"]
    assert len(tokens) == 8 and full["text"] == _text(tokens, tok)
    body = _ok(client[WORDS].post("/v1/completions", json={
        "prompt": prompt, "max_tokens": 3, "temperature": 0}))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["text"] == _text(tokens[:3], tok)
    assert body["usage"]["completion_tokens"] == 3
    # stop at the last word: the text ends before its first occurrence
    stop = full["text"].split()[-1]
    cut = full["text"].index(stop)
    for stops in (stop, ["never-there", stop]):
        body = _ok(client[WORDS].post("/v1/completions", json={
            "prompt": prompt, "max_tokens": 8, "temperature": 0, "stop": stops,
            "logprobs": 0}))
        (choice,) = body["choices"]
        assert choice["finish_reason"] == "stop"
        assert choice["text"] == full["text"][:cut]
        kept = choice["logprobs"]["tokens"]
        # the reported tokens end with the one that completed the stop string
        assert _text(kept, tok) == full["text"][:cut + len(stop)]
        assert kept[-1] not in tok.all_special_tokens and kept == tokens[:len(kept)]
        assert body["usage"]["completion_tokens"] == len(kept)
    body = _ok(client[WORDS].post("/v1/completions", json={
        "prompt": prompt, "max_tokens": 8, "temperature": 0, "stop": ["never-there"]}))
    assert body["choices"][0]["text"] == full["text"]


def test_n_choices_seeded(client, words):
    model, tok, prompts = words
    request = {"messages": [{"role": "user", "content": "sort: 3 1 2"}], "n": 3,
               "temperature": 1, "seed": 11, "max_tokens": 6}
    a = _ok(client[WORDS].post("/v1/chat/completions", json=request))
    b = _ok(client[WORDS].post("/v1/chat/completions", json=request))
    c = _ok(client[WORDS].post("/v1/chat/completions", json={**request, "seed": 12}))
    texts = [ch["message"]["content"] for ch in a["choices"]]
    assert [ch["index"] for ch in a["choices"]] == [0, 1, 2]
    assert texts == [ch["message"]["content"] for ch in b["choices"]]
    assert texts != [ch["message"]["content"] for ch in c["choices"]]
    want = sample(model, tok, [plain_chat_prompt(request["messages"])], k=3,
                  max_new_tokens=6, temperature=1, seed=11)[0]
    assert texts == want
    assert len(set(texts)) > 1  # three different samples
    assert a["usage"]["prompt_tokens"] == len(encode_prompt(
        tok, plain_chat_prompt(request["messages"])))


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("route", "body", "status", "needle"), [
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
     404, "gpt-9"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "gpt-9"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True},
     400, "stream"),
    ("/v1/completions", {"prompt": "x", "stream": True}, 400, "stream"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": WORDS}, 400, "messages"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ("/v1/completions", {"prompt": [1, 2]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "temperature": 3}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "x", "stop": ""}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, 400, "context window"),
    ("/v1/completions", {"prompt": ["x"] * 9, "n": 128}, 400, "at most 1024"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "top_logprobs": 2}, 400, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "text parts"),
])
def test_bad_requests_get_openai_errors(client, route, body, status, needle):
    error = _error(client[WORDS].post(route, json=body), status)
    assert needle in error["message"]


def test_malformed_json_and_unknown_route(client):
    error = _error(client[WORDS].post("/v1/chat/completions", content=b'{"messages": [',
                                      headers={"content-type": "application/json"}), 400)
    assert "JSON" in error["message"]
    _error(client[WORDS].post("/v1/completions", json=["not", "an", "object"]), 400)
    assert _error(client[WORDS].get("/v1/nothing"), 404)["type"] == "not_found_error"


# ---------------------------------------------------------------------------- real HTTP

@pytest.fixture(scope="module")
def live(chat) -> Iterator[tuple[str, Any]]:
    app = create_model_app(chat[0], chat[1], CHAT)
    with serve_in_thread(app) as base:
        yield f"{base}/v1", app


def test_real_http_models_answer_while_generating(live, chat):
    import httpx

    url, app = live
    server = app.state.server
    lock, generate, entered = server.lock, server.generate, threading.Event()

    def traced(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        return generate(*args, **kwargs)

    server.generate = traced
    done: dict[str, Any] = {}
    request = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 4, "temperature": 0}

    def post() -> None:
        done["response"] = httpx.post(f"{url}/chat/completions", json=request, timeout=30)

    lock.acquire()  # a generation in progress holds the model
    try:
        worker = threading.Thread(target=post)
        worker.start()
        before = app.state.stats["chat.completions"]
        assert entered.wait(20)  # the request is in its worker thread, waiting for the model
        models = httpx.get(f"{url}/models", timeout=10)  # answered meanwhile
        assert models.status_code == 200 and models.json()["data"][0]["id"] == CHAT
        assert "response" not in done and app.state.stats["chat.completions"] == before
    finally:
        lock.release()
        worker.join(30)
        del server.generate
    body = _ok(done["response"])
    want = sample(chat[0], chat[1], [request["messages"]], k=1, max_new_tokens=4,
                  temperature=0)[0][0]
    assert body["choices"][0]["message"]["content"].strip() == want
    assert app.state.stats["chat.completions"] == before + 1


def test_openai_judge_end_to_end(live):
    if importlib.util.find_spec("prefkit.judges.http") is None:
        pytest.skip("prefkit.judges.http (OpenAIJudge) is not in this checkout yet")
    from prefkit.judges import JudgeRequest, judge_all
    from prefkit.judges.http import OpenAIJudge

    url, app = live
    before = app.state.stats["chat.completions"]
    judge = OpenAIJudge(base_url=url, model=CHAT, template="pairwise_tie", max_tokens=16,
                        logprobs=2, retries=0, timeout=60)
    request = JudgeRequest(task="compare", prompt="sort 3 1 2",
                           responses=("1 2 3", "3 2 1"))
    (judgment,) = judge_all(judge, [request])
    assert judgment.status in ("ok", "unparsed"), judgment
    assert judge.stats.requests >= 1
    assert app.state.stats["chat.completions"] - before == judge.stats.requests


# ---------------------------------------------------------------------------- the CLI

def test_cli_bad_model_exits_2(tmp_path):
    runner = CliRunner()
    missing = tmp_path / "no-such-model"
    result = runner.invoke(cli_app, ["serve-model", str(missing)])
    assert result.exit_code == 2 and str(missing) in result.output
    wrong = tmp_path / "model.txt"
    wrong.write_text("not a model")
    result = runner.invoke(cli_app, ["serve-model", str(wrong)])
    assert result.exit_code == 2 and str(wrong) in result.output
    result = runner.invoke(cli_app, ["serve-model", "lab:no-such-task"])
    assert result.exit_code == 2 and "no-such-task" in result.output
    result = runner.invoke(cli_app, ["serve-model", str(wrong), "--dtype", "int8"])
    assert result.exit_code == 2 and "--dtype" in result.output


def test_cli_loads_a_tiny_model_file(tmp_path, chat):
    from prefkit.commands.serve_model import load_served_model

    chat[1].save_pretrained(tmp_path / "tok")
    spec = tmp_path / "tiny.yaml"
    spec.write_text("tokenizer: tok\nhidden_size: 16\nnum_layers: 1\nnum_heads: 2\n"
                    "intermediate_size: 32\n")
    model, tok = load_served_model(str(spec))
    assert not model.training and len(tok) == len(chat[1])
    app = create_model_app(model, tok, "tiny")
    with TestClient(app) as c:
        body = _ok(c.post("/v1/completions", json={"model": "tiny", "prompt": "the",
                                                   "max_tokens": 2, "temperature": 0}))
    # a completions prompt is raw text: never wrapped in the chat template
    assert body["usage"]["prompt_tokens"] == len(encode_prompt(tok, "the", chat_template="never"))


@pytest.mark.slow
def test_cli_serves_over_http(tmp_path, chat):
    """`prefkit serve-model FILE --port P --name N`: the URL on stderr once it listens, then
    OpenAI-shaped answers under the given name."""
    import httpx

    chat[1].save_pretrained(tmp_path / "tok")
    spec = tmp_path / "tiny.yaml"
    spec.write_text("tokenizer: tok\nhidden_size: 16\nnum_layers: 1\nnum_heads: 2\n"
                    "intermediate_size: 32\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefkit", "serve-model", str(spec), "--port", str(port),
         "--name", "cli-tiny"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the server is listening (or exits)
        assert f"http://127.0.0.1:{port}/v1" in line and "cli-tiny" in line, line
        url = f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"{url}/models", timeout=30).json()["data"][0]["id"] == "cli-tiny"
        body = httpx.post(f"{url}/completions", timeout=30, json={
            "model": "cli-tiny", "prompt": "the", "max_tokens": 2, "temperature": 0}).json()
        assert body["model"] == "cli-tiny" and len(body["choices"]) == 1
        assert body["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(30)
