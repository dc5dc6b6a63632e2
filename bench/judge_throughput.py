"""Judgments per second of prefkit's HTTP judge and of alpaca_eval's annotator against the same
local OpenAI-compatible stub server (fixed 200 ms latency per request, same concurrency limit),
side by side in one run.

Server: ONE ``StubServer`` (``tests/judges_stub.py``; no faults, ``latency=0.2``) in its own
process (spawned, so that its event loop does not share a GIL with either client); a pipe
resets its counters between sides and reads them back: requests, max requests in flight, the
first request's arrival and the last answer's send time (``time.monotonic``, the same clock in
both processes on Linux). Its answer is deterministic per prompt: every pair has exactly one
response containing the word ``WIN``, and the stub names the slot it sits in -- ``[[A]]`` /
``[[B]]`` in the text prefkit's ``pairwise_tie`` template parses, ``m`` / ``M`` (with the
log-probabilities the stub attaches: the answered token at log 1) for alpaca_eval's prompt.

Workload: ``N`` distinct pairs (instruction + two ~60-word responses; default 400, ``--quick``
80), concurrency limit ``C`` (default 16) on both sides; the limit is ``C / 0.2 s``. Before the
clock, each side judges ``C`` other pairs once (imports, first client, template compile) and
the server's counters are reset. Order: prefkit first, then alpaca_eval (one round each).

prefkit: ``OpenAIJudge(base_url=stub, model="stub-judge", concurrency=C)`` (default
``pairwise_tie`` template, chat API, temperature 0, no cache) under
``judge_all(judge, requests, concurrency=C)``.

Peer: alpaca_eval 0.6.6's own ``PairwiseAnnotator`` with its default AlpacaEval 2.0 annotator
config ``weighted_alpaca_eval_gpt4_turbo`` as shipped (``openai_completions``, chat model name
``gpt-4-1106-preview``, ``max_tokens: 1``, ``logprobs: true, top_logprobs: 5``,
``logprob_parser`` on ``m``/``M``, ``batch_size: 1``, random output order seeded by
instruction), ``caching_path=None`` (no annotation cache: both sides send every request), and
``annotate_pairs(rows, num_procs=C, client_config_path=YAML)`` -- ``num_procs`` sizes its
thread pool (its concurrency), and the client-config YAML (its documented way to choose
clients) is ``{"default": [{"api_key": ..., "base_url": stub}]}``, so its ``openai.OpenAI``
client talks to the stub. Everything else is its defaults (e.g. ``chunksize=128`` rows per
thread-pool round). As its code does, it builds a new ``openai.OpenAI`` client (a new HTTP
client, SSL context and connection) for every batch of ``batch_size`` prompts, i.e. for every
request here. One thing is stubbed on its side, not in its computation:
``pkg_resources`` (``alpaca_eval.utils`` imports it at module level and reads package versions
with it for the annotations' metadata; setuptools >= 81 no longer ships it) is replaced, when
missing, by a module whose ``get_distribution`` / ``parse_version`` use ``importlib.metadata``
and ``packaging``.

Figures per side: ``wall_s`` = the whole call (``judge_all`` / ``annotate_pairs``: the tool's
own preparation and parsing included), ``judgments_per_s`` = N / ``wall_s`` and its
``fraction_of_limit``; also ``span_s`` = the server's first request arrival to last answer and
``judgments_per_s_span``; ``client_cpu_ms_per_judgment`` = the client process's CPU time (all
threads; the server runs in another process) over the call / N -- a figure other load on a
shared machine disturbs less than wall time, which matters for a client that is CPU-bound.
``ratio`` = prefkit's judgments_per_s / the peer's. ``agree``: every
judgment answered and parsed on both sides, one request per judgment, and the same winner of
every pair. Goal: prefkit >= 0.9 x the limit and ahead of alpaca_eval.

    python bench/judge_throughput.py [--quick] [--json] [--n N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

LATENCY_S = 0.2
GOAL = {"fraction_of_limit_min": 0.9, "ratio_min": 1.0}
ALPACA_CONFIG = "weighted_alpaca_eval_gpt4_turbo"
ALPACA_SLOT_2 = '"model_identifier": "M"'
PREFKIT_SLOT_B = "[Answer of assistant B]"

# -- the stub server, in its own process ----------------------------------------------------

_last_answer = [0.0]


def stub_answer(body: dict) -> str:
    """The verdict naming the slot that holds ``WIN``, in the format of the prompt's template."""
    from judges_stub import prompt_of

    prompt = prompt_of(body)
    _last_answer[0] = time.monotonic()
    win = prompt.find("WIN")
    if ALPACA_SLOT_2 in prompt:
        return "M" if win > prompt.index(ALPACA_SLOT_2) else "m"
    if PREFKIT_SLOT_B in prompt:
        second = win > prompt.index(PREFKIT_SLOT_B)
        return f"One answer is better.\n[[{'B' if second else 'A'}]]"
    return "no template recognised"


def serve(conn) -> None:
    """Child process: run the stub and answer ``reset`` / ``stats`` / ``stop`` on ``conn``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from judges_stub import StubServer

    stub = StubServer(answer=stub_answer, latency=LATENCY_S).start()
    conn.send(stub.base_url)
    while True:
        command = conn.recv()
        if command == "reset":  # nothing is in flight between sides
            stub.records.clear()
            stub._attempts.clear()
            stub.max_in_flight = 0
            _last_answer[0] = 0.0
            conn.send(True)
        elif command == "stats":
            records = list(stub.records)
            conn.send({"requests": len(records), "max_in_flight": stub.max_in_flight,
                       "outcomes": stub.by_outcome(), "paths": stub.by_path(),
                       "first_request": min((r.t for r in records), default=None),
                       "last_answer": _last_answer[0] or None})
        else:
            stub.stop()
            conn.send(True)
            return


class Server:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child,), daemon=True)
        self.proc.start()
        if not self.conn.poll(60):
            raise RuntimeError("the stub server process did not start")
        self.base_url: str = self.conn.recv()

    def ask(self, command: str):
        self.conn.send(command)
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.ask("stop")
        finally:
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()


# -- the workload ---------------------------------------------------------------------------

_WORDS = ("the", "model", "explains", "each", "step", "clearly", "and", "checks", "result",
          "against", "question", "before", "it", "answers", "so", "that", "reader", "can",
          "follow", "reasoning", "verify", "final", "number", "without", "guessing")


def make_pairs(n: int, seed: int, tag: str) -> list[tuple[str, str, str, str]]:
    """``(instruction, a, b, winner)``: distinct pairs, one response of each holding ``WIN``."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        texts = [" ".join(rng.choice(_WORDS) for _ in range(60)) for _ in range(2)]
        winner = rng.choice("ab")
        slot = 0 if winner == "a" else 1
        texts[slot] = f"WIN {texts[slot]}"
        pairs.append((f"{tag} question {i}: how would you explain topic {i}?", *texts, winner))
    return pairs


def side_figures(n: int, wall: float, cpu: float, stats: dict, limit: float) -> dict:
    span = (stats["last_answer"] - stats["first_request"]
            if stats["first_request"] is not None and stats["last_answer"] else None)
    per_s = n / wall
    out = {"judgments": n, "wall_s": round(wall, 3), "judgments_per_s": round(per_s, 2),
           "fraction_of_limit": round(per_s / limit, 3),
           "client_cpu_ms_per_judgment": round(cpu / n * 1000, 2),
           "span_s": None if span is None else round(span, 3),
           "judgments_per_s_span": None if not span else round(n / span, 2),
           "requests": stats["requests"], "max_in_flight": stats["max_in_flight"],
           "server_outcomes": stats["outcomes"], "server_paths": stats["paths"]}
    return out


# -- prefkit --------------------------------------------------------------------------------

def run_prefkit(server: Server, pairs, warmup, concurrency: int) -> tuple[dict, dict]:
    from prefkit.judges.base import JudgeRequest, judge_all, status_counts
    from prefkit.judges.http import OpenAIJudge

    def judge_once(items):
        judge = OpenAIJudge(base_url=server.base_url, model="stub-judge",
                            concurrency=concurrency, api_key="stub-key")
        requests = [JudgeRequest("compare", q, (a, b)) for q, a, b, _ in items]
        cpu, start = time.process_time(), time.perf_counter()
        judgments = judge_all(judge, requests, concurrency=concurrency)
        return (time.perf_counter() - start, time.process_time() - cpu), judgments, judge

    judge_once(warmup)
    server.ask("reset")
    (wall, cpu), judgments, judge = judge_once(pairs)
    stats = server.ask("stats")
    winners = {}
    for (q, *_), j in zip(pairs, judgments, strict=True):
        if j.ok and j.verdict in ("first", "second"):
            winners[q] = "a" if j.verdict == "first" else "b"
    extra = {"statuses": status_counts(judgments), "judge_stats": judge.stats.as_dict()}
    return {"wall": wall, "cpu": cpu, "stats": stats, "extra": extra}, winners


# -- alpaca_eval ----------------------------------------------------------------------------

def _pkg_resources_shim() -> None:
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # setuptools >= 81
        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        shim.get_distribution = lambda name: types.SimpleNamespace(
            version=importlib.metadata.version(name))
        sys.modules["pkg_resources"] = shim


def run_alpaca_eval(server: Server, pairs, warmup, concurrency: int, tmp: Path
                    ) -> tuple[dict, dict]:
    _pkg_resources_shim()
    import yaml
    from alpaca_eval.annotators import PairwiseAnnotator

    client_config = tmp / "openai_configs.yaml"
    client_config.write_text(yaml.safe_dump(
        {"default": [{"api_key": "stub-key", "base_url": server.base_url}]}))

    def annotate_once(items):
        annotator = PairwiseAnnotator(annotators_config=ALPACA_CONFIG, caching_path=None)
        rows = [{"instruction": q, "output_1": a, "output_2": b} for q, a, b, _ in items]
        cpu, start = time.process_time(), time.perf_counter()
        annotated = annotator.annotate_pairs(rows, num_procs=concurrency,
                                             client_config_path=str(client_config))
        return (time.perf_counter() - start, time.process_time() - cpu), annotated

    annotate_once(warmup)
    server.ask("reset")
    (wall, cpu), annotated = annotate_once(pairs)
    stats = server.ask("stats")
    winners = {}
    for row in annotated:
        pref = row.get("preference")
        if pref is not None and pref == pref and pref in (1, 1.0, 2, 2.0):
            winners[row["instruction"]] = "a" if pref == 1 else "b"
    extra = {"annotated_rows": len(annotated), "parsed": len(winners)}
    return {"wall": wall, "cpu": cpu, "stats": stats, "extra": extra}, winners


# -- main -----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="80 judgments per side")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--n", type=int, default=None, help="judgments per side (400)")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    n = args.n or (80 if args.quick else 400)
    c = args.concurrency
    limit = c / LATENCY_S
    pairs = make_pairs(n, seed=0, tag="timed")
    warmup = make_pairs(c, seed=1, tag="warm-up")
    expected = {q: w for q, _, _, w in pairs}

    server = Server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ours, ours_winners = run_prefkit(server, pairs, warmup, c)
            peer, peer_winners = run_alpaca_eval(server, pairs, warmup, c, Path(tmp))
    finally:
        server.close()

    prefkit = {**side_figures(n, ours["wall"], ours["cpu"], ours["stats"], limit), **ours["extra"],
               "parsed": len(ours_winners)}
    version = importlib.metadata.version("alpaca_eval")
    peer_row = {"name": f"alpaca_eval {version} PairwiseAnnotator ({ALPACA_CONFIG}, "
                        f"openai_completions, num_procs={c}, caching_path=None)",
                **side_figures(n, peer["wall"], peer["cpu"], peer["stats"], limit), **peer["extra"]}
    same = sum(ours_winners.get(q) == peer_winners.get(q) == w for q, w in expected.items())
    checks = {
        "prefkit_all_parsed": len(ours_winners) == n,
        "peer_all_parsed": len(peer_winners) == n,
        "one_request_per_judgment": prefkit["requests"] == n and peer_row["requests"] == n,
        "same_winners": same,
        "within_limit": max(prefkit["max_in_flight"], peer_row["max_in_flight"]) <= c,
    }
    agree = (checks["prefkit_all_parsed"] and checks["peer_all_parsed"]
             and checks["one_request_per_judgment"] and same == n and checks["within_limit"])
    ratio = prefkit["judgments_per_s"] / peer_row["judgments_per_s"]
    result = {
        "bench": "judge_throughput", "judgments": n, "concurrency": c,
        "latency_s": LATENCY_S, "limit_per_s": limit, "order": "prefkit first, then peer",
        "prefkit": prefkit, "peer": peer_row, "ratio": round(ratio, 3),
        "ratio_span": (round(prefkit["judgments_per_s_span"] / peer_row["judgments_per_s_span"], 3)
                       if prefkit["judgments_per_s_span"] and peer_row["judgments_per_s_span"]
                       else None),
        "goal": GOAL,
        "goal_met": (prefkit["fraction_of_limit"] >= GOAL["fraction_of_limit_min"]
                     and ratio >= GOAL["ratio_min"]),
        "agree": agree, "checks": checks, "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
