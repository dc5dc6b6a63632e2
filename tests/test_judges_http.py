"""prefkit.judges.http.OpenAIJudge against the fault-injecting stub (tests/judges_stub.py).

Every run is bounded by asyncio.wait_for. The client timeout is 1 s where the stub hangs on
purpose (long enough that a clean answer on 2 busy shared cores is not cut), 10 s elsewhere;
back-off 10 ms; the other deliberate waits are Retry-After (1 s) and the rpm pacing (~1.1 s).
Timing checks read the stub's receive timestamps and are orderings (the retry came at least
N s after the 429), never speed claims.
"""

from __future__ import annotations

import asyncio
import math
import socket
import sys
import time
from collections import Counter
from email.utils import formatdate
from pathlib import Path

import pytest

from prefkit.judges.base import JudgeRequest, ajudge_all, cache_key, status_counts
from prefkit.judges.http import OpenAIJudge, Pacer, parse_retry_after

sys.path.insert(0, str(Path(__file__).parent))
from judges_stub import StubServer, seeded, tokenize, want_answer  # noqa: E402

LETTER = {"A": "first", "B": "second", "C": "tie"}
REASON = {"timeout": "timeout", "disconnect": "connect error", "429": "http 429",
          "503": "http 503", "500": "http 500", "400": "http 400",
          "malformed": "malformed json", "truncated": "truncated body",
          "content_filter": "content filter", "no_choices": "no choices"}
FAULT_TIMEOUT = 1.0
MIX = {"timeout": 0.08, "429": 0.08, "500": 0.08, "malformed": 0.08, "truncated": 0.08,
       "disconnect": 0.04}


def make_requests(n: int) -> list[JudgeRequest]:
    return [JudgeRequest("compare", f"question {i} want={'ABC'[i % 3]}",
                         (f"answer one to {i}", f"answer two to {i}")) for i in range(n)]


def expected_verdict(request: JudgeRequest) -> str:
    return LETTER[request.prompt.split("want=")[1][0]]


def judge_for(stub: StubServer, **options) -> OpenAIJudge:
    settings = {"model": "judge-model", "timeout": 10.0, "backoff": 0.01, "max_backoff": 0.05,
                "api_key_env": None}
    settings.update(options)
    return OpenAIJudge(base_url=stub.base_url, **settings)


def run(judge: OpenAIJudge, requests: list[JudgeRequest], limit: float = 20.0,
        concurrency: int = 32):
    async def main():
        return await asyncio.wait_for(ajudge_all(judge, requests, concurrency=concurrency),
                                      limit)

    return asyncio.run(main())


def key_of(judge: OpenAIJudge, request: JudgeRequest) -> str:
    return judge.template.prompt_text(request)


def assert_counts_add_up(judge: OpenAIJudge, stub: StubServer, judgments) -> None:
    stats = judge.stats
    assert stats.requests == sum(stats.outcomes.values()) == stats.calls + stats.retries
    assert stats.calls == stats.outcomes["ok"] + sum(stats.failed.values())
    assert stub.requests == stats.requests
    # the judge's view of each attempt matches what the stub injected, outcome by outcome
    assert Counter({REASON.get(k, k): v for k, v in stub.by_outcome().items()}) == \
        stats.outcomes
    for j in judgments:
        assert j.status in ("ok", "failed")
        assert (j.verdict is not None) == (j.status == "ok")
        assert (j.reason is not None) == (j.status == "failed")


# -- clean server ------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_clean_server_verdicts_and_tokens(api):
    requests = make_requests(12)
    with StubServer(latency=0.01) as stub:
        judge = judge_for(stub, api=api, max_tokens=64, top_p=0.9, seed=7)
        out = run(judge, requests)
        records = list(stub.records)
    assert [j.verdict for j in out] == [expected_verdict(r) for r in requests]
    assert [j.p_first for j in out] == [{"first": 1.0, "second": 0.0, "tie": 0.5}[
        expected_verdict(r)] for r in requests]
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    assert stub.by_path() == {path: 12}
    assert judge.stats.requests == 12 and judge.stats.retries == 0
    # the body: model, sampling settings, and the template's messages / joined prompt
    by_key = {r.key: r.body for r in records}
    for request in requests:
        body = by_key[key_of(judge, request)]
        assert (body["model"], body["temperature"], body["max_tokens"], body["top_p"],
                body["seed"]) == ("judge-model", 0.0, 64, 0.9, 7)
        if api == "chat":
            assert body["messages"] == judge.template.messages(request)
        else:
            assert body["prompt"] == judge.template.prompt_text(request)
        assert "logprobs" not in body
    # tokens as the stub's usage reports them (prompt words, answer tokens)
    for request, judgment in zip(requests, out, strict=True):
        text = want_answer(by_key[key_of(judge, request)])
        assert judgment.raw == text
        assert judgment.prompt_tokens == len(key_of(judge, request).split())
        assert judgment.completion_tokens == len(tokenize(text))
    assert judge.stats.prompt_tokens == sum(j.prompt_tokens for j in out)
    assert judge.stats.completion_tokens == sum(j.completion_tokens for j in out)
    assert judge.stats.total_tokens == judge.stats.prompt_tokens + \
        judge.stats.completion_tokens


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("probs,expected", [({"A": 0.8, "B": 0.2}, 0.8),
                                            ({"A": 0.5, "B": 0.2, "C": 0.3}, 0.65)])
def test_logprobs_give_soft_p_first(api, probs, expected):
    requests = [JudgeRequest("compare", "question want=A", ("one", "two"))]
    with StubServer(letter_probs=probs) as stub:
        judge = judge_for(stub, api=api, logprobs=5)
        out = run(judge, requests)
        body = stub.records[0].body
    assert out[0].verdict == "first"
    assert out[0].p_first == pytest.approx(expected, abs=1e-9)
    if api == "chat":
        assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    else:
        assert body["logprobs"] == 5


def test_api_key_sent_only_when_set(monkeypatch):
    request = make_requests(1)
    monkeypatch.setenv("PREFKIT_TEST_KEY", "sk-from-env")
    with StubServer() as stub:
        run(judge_for(stub, api_key="sk-given"), request)
        run(judge_for(stub, api_key_env="PREFKIT_TEST_KEY"), request)
        monkeypatch.delenv("PREFKIT_TEST_KEY")
        run(judge_for(stub, api_key_env="PREFKIT_TEST_KEY"), request)
        seen = [r.authorization for r in stub.records]
    assert seen == ["Bearer sk-given", "Bearer sk-from-env", None]


# -- faults ------------------------------------------------------------------------------


def test_faults_without_retries_match_injected_one_to_one():
    requests = make_requests(60)
    plan = seeded(MIX, seed=3, attempts=1)
    with StubServer(faults=plan, retry_after=1) as stub:
        judge = judge_for(stub, retries=0, timeout=FAULT_TIMEOUT)
        out = run(judge, requests)
        assert_counts_add_up(judge, stub, out)
    injected = [plan(key_of(judge, r), 0, 0) for r in requests]
    assert set(injected) == {None, *MIX}  # every kind of fault is in the mix
    for request, fault, judgment in zip(requests, injected, out, strict=True):
        if fault is None:
            assert judgment.status == "ok" and judgment.verdict == expected_verdict(request)
        else:
            assert judgment.status == "failed"
            assert judgment.reason.split(":")[0] == REASON[fault]
            assert judgment.attempts == 1
    assert status_counts(out)["ok"] + status_counts(out)["failed"] == len(requests)
    assert judge.stats.retries == 0 and stub.requests == len(requests)
    assert judge.stats.failed == Counter(REASON[f] for f in injected if f)


def test_faults_with_enough_retries_all_end_ok_and_retry_after_is_honoured():
    requests = make_requests(60)
    plan = seeded(MIX, seed=5, attempts=2)  # at most two faults in a row per request
    with StubServer(faults=plan, retry_after=1, latency=0.005) as stub:
        judge = judge_for(stub, retries=4, timeout=FAULT_TIMEOUT)
        out = run(judge, requests)
        assert_counts_add_up(judge, stub, out)
        records = list(stub.records)
    assert status_counts(out) == {"ok": 60, "unparsed": 0, "failed": 0}
    assert [j.verdict for j in out] == [expected_verdict(r) for r in requests]
    assert stub.requests == len(requests) + judge.stats.retries
    assert judge.stats.retries == sum(1 for r in records if r.fault)
    assert sum(j.attempts for j in out) == len(requests)  # TextJudge saw one answer each
    after_429 = []
    for key in {r.key for r in records}:
        tries = sorted((r for r in records if r.key == key), key=lambda r: r.attempt)
        after_429 += [b.t - a.t for a, b in zip(tries, tries[1:], strict=False)
                      if a.fault == "429"]
    assert after_429, "the seed must inject a 429 that is retried"
    assert min(after_429) >= 1.0


def test_retry_after_beyond_the_cap_fails_at_once():
    with StubServer(faults=lambda key, attempt, index: "429", retry_after=120) as stub:
        judge = judge_for(stub, retries=4, max_retry_after=60)
        out = run(judge, make_requests(2))
        assert_counts_add_up(judge, stub, out)
    assert [j.reason.split(":")[0] for j in out] == ["retry-after too long"] * 2
    assert stub.requests == 2 and judge.stats.retries == 0
    assert judge.stats.failed == Counter({"retry-after too long": 2})


def test_parse_retry_after_values():
    now = 1_700_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == 7.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("fault", ["400", "content_filter", "no_choices"])
def test_final_answers_are_not_retried(fault):
    with StubServer(faults=lambda key, attempt, index: fault) as stub:
        judge = judge_for(stub, retries=4)
        out = run(judge, make_requests(3))
        assert_counts_add_up(judge, stub, out)
    assert [j.reason.split(":")[0] for j in out] == [REASON[fault]] * 3
    assert stub.requests == 3 and judge.stats.retries == 0


def test_unknown_path_is_a_4xx_not_retried():
    with StubServer() as stub:
        judge = OpenAIJudge(base_url=stub.base_url + "/nope", model="m", timeout=10.0,
                            backoff=0.01, api_key_env=None)
        out = run(judge, make_requests(2))
    assert [j.reason.split(":")[0] for j in out] == ["http 404"] * 2
    assert judge.stats.requests == 2 and judge.stats.retries == 0


@pytest.mark.parametrize("fault", ["500", "503", pytest.param("timeout", marks=pytest.mark.slow),
                                   "truncated", "malformed", "disconnect"])
def test_retries_spent_fail_with_the_last_reason(fault):
    with StubServer(faults=lambda key, attempt, index: fault, retry_after=0) as stub:
        judge = judge_for(stub, retries=2, timeout=FAULT_TIMEOUT)
        out = run(judge, make_requests(2))
        assert_counts_add_up(judge, stub, out)
    assert [j.status for j in out] == ["failed"] * 2
    assert [j.reason.split(":")[0] for j in out] == [REASON[fault]] * 2
    assert all("after 3 attempts" in j.reason for j in out)
    assert stub.requests == 6 and judge.stats.retries == 4


def test_refused_connection_is_a_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = OpenAIJudge(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout=10.0,
                        retries=1, backoff=0.01, api_key_env=None)
    out = run(judge, make_requests(2))
    assert [j.reason.split(":")[0] for j in out] == ["connect error"] * 2
    assert judge.stats.requests == 4 and judge.stats.failed == Counter({"connect error": 2})


# -- bounds: concurrency, rate, clients --------------------------------------------------


def test_concurrency_bound_is_respected():
    with StubServer(latency=0.1) as stub:
        judge = judge_for(stub, concurrency=3)
        out = run(judge, make_requests(24), concurrency=24)
    assert status_counts(out)["ok"] == 24
    assert 2 <= stub.max_in_flight <= 3


def test_rpm_spreads_the_requests():
    with StubServer() as stub:
        judge = judge_for(stub, rpm=600)  # one request per 0.1 s
        out = run(judge, make_requests(12))
        times = sorted(r.t for r in stub.records)
    assert status_counts(out)["ok"] == 12
    assert times[-1] - times[0] >= 1.0  # 11 gaps of 0.1 s, less one connect's slack
    assert judge.stats.throttled_s > 0


def test_pacer_spacing_and_correction():
    requests = Pacer(60)  # one per second
    assert [requests.reserve(1, 0.0) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert requests.reserve(1, 2.5) == 3.0
    assert requests.reserve(1, 10.0) == 10.0  # no burst saved up while idle
    tokens = Pacer(6000)  # 100 tokens per second
    assert tokens.reserve(200, 0.0) == 0.0
    assert tokens.reserve(200, 0.0) == 2.0
    tokens.correct(-150)  # the last one used 50 tokens, not 200
    assert tokens.reserve(200, 0.0) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        Pacer(0)


def test_token_estimate():
    with StubServer() as stub:
        judge = judge_for(stub, max_tokens=100)
    messages = [{"role": "system", "content": "x" * 150}, {"role": "user", "content": "y" * 251}]
    assert judge.estimate_tokens(messages) == math.ceil(401 / 4) + 100


def test_one_client_per_loop_closed_with_the_loop():
    with StubServer() as stub:
        judge = judge_for(stub)
        first = run(judge, make_requests(3))
        assert len(judge._loops) == 0  # asyncio.run's shutdown closed that loop's client
        second = run(judge, make_requests(3))  # a fresh client on the new loop
        assert len(judge._loops) == 0

        async def with_block():
            async with judge:
                found = await asyncio.wait_for(ajudge_all(judge, make_requests(2)), 10)
                assert len(judge._loops) == 1
            assert len(judge._loops) == 0
            return found

        third = asyncio.run(with_block())
    assert status_counts(first + second + third)["ok"] == 8


# -- unparsed answers --------------------------------------------------------------------


def test_garbage_answers_end_unparsed_after_parse_retries():
    requests = make_requests(40)
    plan = seeded({"garbage": 0.1}, seed=11, sticky=True)
    with StubServer(faults=plan) as stub:
        judge = judge_for(stub, parse_retries=2)
        out = run(judge, requests)
        records = list(stub.records)
    garbage = [plan(key_of(judge, r), 0, 0) == "garbage" for r in requests]
    assert 1 <= sum(garbage) < len(requests)
    seen = Counter(r.key for r in records)
    for request, is_garbage, judgment in zip(requests, garbage, out, strict=True):
        if is_garbage:
            assert judgment.status == "unparsed"
            assert (judgment.verdict, judgment.p_first) == (None, None)
            assert judgment.attempts == 3 and seen[key_of(judge, request)] == 3
        else:
            assert judgment.verdict == expected_verdict(request)
            assert seen[key_of(judge, request)] == 1
    assert status_counts(out) == {"ok": 40 - sum(garbage), "unparsed": sum(garbage),
                                  "failed": 0}
    assert judge.stats.requests == 40 + 2 * sum(garbage) == judge.stats.calls


# -- the cache key -----------------------------------------------------------------------


def test_cache_key_follows_what_answers_depend_on():
    request = make_requests(1)[0]
    base = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": None}

    def key(request=request, **changes):
        return cache_key(OpenAIJudge(**{**base, **changes}).config(), request)

    reference = key()
    for changes in ({"model": "other"}, {"template": "pairwise"}, {"temperature": 0.7},
                    {"max_tokens": 100}, {"api": "completions"}, {"logprobs": 5},
                    {"top_p": 0.5}, {"seed": 1}):
        assert key(**changes) != reference, changes
    assert key(request=request.swapped()) != reference
    for changes in ({"base_url": "https://example.invalid/v1"}, {"api_key": "sk-x"},
                    {"concurrency": 2}, {"rpm": 60}, {"tpm": 1000}, {"timeout": 5.0},
                    {"retries": 0}):
        assert key(**changes) == reference, changes


def test_bad_settings_are_refused():
    for changes in ({"api": "responses"}, {"concurrency": 0}, {"retries": -1},
                    {"timeout": 0}, {"logprobs": 0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            OpenAIJudge(base_url="http://127.0.0.1:1/v1", model="m", **changes)


def test_stub_times_are_monotonic_clock():
    # the Retry-After check compares the stub's time.monotonic() stamps with each other only
    with StubServer() as stub:
        before = time.monotonic()
        run(judge_for(stub), make_requests(1))
        assert before <= stub.records[0].t <= time.monotonic()


def test_malformed_verdicts_leave_the_win_rate_of_the_clean_subset():
    """10% of the judge's answers hold no verdict (every retry too): they are reported as
    unparsed, and the win rate equals, exactly, the win rate of a clean run on the items that
    were judged -- an unparsed answer is never a loss or a tie."""
    from prefkit.evaluate.alpaca import judge_pairs, pair_outputs, winrate_report

    model = [{"instruction": f"task {i} want={'ABC'[i % 3]}", "output": f"mine {i}" + " x" * i,
              "generator": "mine"} for i in range(60)]
    reference = [{"instruction": m["instruction"], "output": f"theirs {i}", "generator": "ref"}
                 for i, m in enumerate(model)]
    pairs = pair_outputs(model, reference)
    plan = seeded({"garbage": 0.1}, seed=5, sticky=True)
    with StubServer(faults=plan) as stub:
        faulty = judge_pairs(pairs, judge_for(stub, parse_retries=1), concurrency=16)
    with StubServer() as stub:
        clean = judge_pairs(pairs, judge_for(stub), concurrency=16)
    unparsed = [a["preference"] is None for a in faulty]
    assert 3 <= sum(unparsed) <= 12
    assert all(a["preference"] is not None for a in clean)
    report = winrate_report(faulty)
    assert report["not_judged"] == {"unparsed": sum(unparsed), "failed": 0}
    assert report["n"] == 60 - sum(unparsed)
    subset = [c for c, bad in zip(clean, unparsed, strict=True) if not bad]
    expected = winrate_report(subset)
    for key in ("win_rate", "standard_error", "discrete_win_rate", "wins", "ties", "losses"):
        assert report[key] == expected[key], key


def test_a_cached_rerun_makes_no_request(tmp_path):
    """Counted by the server: the second run of the same judgments sends nothing; changing the
    template (or the order of the responses) does."""
    from prefkit.judges.base import judge_all
    from prefkit.judges.cache import SQLiteCache

    requests = make_requests(12)
    with StubServer() as stub, SQLiteCache(tmp_path / "cache.sqlite") as cache:
        first = judge_all(judge_for(stub), requests, cache=cache)
        after_first = len(stub.records)
        again = judge_all(judge_for(stub), requests, cache=cache)
        assert len(stub.records) == after_first == 12
        assert [j.verdict for j in again] == [j.verdict for j in first]
        assert all(j.cached and j.attempts == 0 for j in again)
        # (requests 0 and 1 want A and B: answers the no-tie template parses at once)
        judge_all(judge_for(stub, template="pairwise"), requests[:2], cache=cache)
        judge_all(judge_for(stub), [r.swapped() for r in requests[:2]], cache=cache)
        assert len(stub.records) == 12 + 2 + 2
