"""Rewards scored while the policy generates (issue 16): with a reward that computes in worker
processes (:class:`~prefkit.rewards.sources.ExecutedReward`, which has ``submit``) the online
loop generates a round in chunks of one generate batch and hands each chunk to the workers
before the next one generates (``OnlineConfig.reward_overlap``).

Checked here: the chunks (:func:`prefkit.train.online.generation_chunks`); the order of events
(chunk 1 generates after chunk 0 is submitted and before its result is collected -- order, not
timing); :class:`~prefkit.train.algorithms.samples.PendingScores` against
:func:`~prefkit.train.algorithms.samples.score_groups` and a plain per-sample computation
(ragged groups, status counts summed over the chunks); and whole runs (GRPO, groups of
different sizes, ReMax's greedy baseline, DAPO's dynamic sampling) giving the same rollouts,
iteration logs and final parameters with the overlap on and off.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
import torch

import _reward_fns as fns
from online_helpers import SMALL, TASK, online_config, prompts
from prefkit.lab.base_model import build_base_model
from prefkit.rewards.sources import ExecutedReward
from prefkit.train import algorithms
from prefkit.train import online as online_mod
from prefkit.train.algorithms.critic_free import GRPO
from prefkit.train.algorithms.samples import PendingScores, SampleGroup, score_groups
from prefkit.train.online import generation_chunks, train_online
from prefkit.train.rollout import TransformersBackend


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_base_model(TASK, tmp_path_factory.mktemp("base"), **SMALL)


@pytest.fixture(scope="module")
def executed():
    """The sort task's score as a checker (ok / wrong / unparsed) in 2 worker processes."""
    with ExecutedReward(fns.sort_checked, timeout_value=-1.0, error_value=-2.0, workers=2,
                        timeout=60.0) as source:
        yield source


class SpyAsync:
    """Wraps an asynchronous reward source; records ``("submit", i)`` and ``("result", i)``
    (``i``: the submit's number) in ``events``."""

    def __init__(self, inner: Any, events: list) -> None:
        self.inner, self.events, self.submitted = inner, events, 0

    def submit(self, *args):
        i, self.submitted = self.submitted, self.submitted + 1
        self.events.append(("submit", i))
        return _SpyHandle(self.inner.submit(*args), i, self.events)

    def __call__(self, *args):
        return self.inner(*args)

    def status_counts(self):
        return self.inner.status_counts()


class _SpyHandle:
    def __init__(self, handle: Any, i: int, events: list) -> None:
        self.handle, self.i, self.events = handle, i, events

    def result(self):
        out = self.handle.result()
        self.events.append(("result", self.i))
        return out


def config(tmp_path, **kw):
    """2 iterations of 8 prompts x 4 samples, generated 8 rows (2 prompts) at a time."""
    return online_config(tmp_path, **{"learning_rate": 1e-3, "sampling_batch_size": 8, **kw})


def group(prompt: str, completions: list[str]) -> SampleGroup:
    k = len(completions)
    no = torch.zeros(k, dtype=torch.bool)
    return SampleGroup(prompt=prompt, prompt_ids=[1], prompt_truncated=False,
                       completions=completions, completion_ids=[[1]] * k, truncated=no,
                       empty=no, stopped=no)


# ------------------------------------------------------------------------------ the chunks


def test_generation_chunks_are_whole_prompts_of_one_generate_batch():
    assert generation_chunks(8, 4, 8) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert generation_chunks(5, 4, 64) == [(0, 5)]  # the round fits one batch: one chunk
    assert generation_chunks(7, 3, 8) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # 6 of 8 rows
    assert generation_chunks(3, 8, 4) == [(0, 1), (1, 2), (2, 3)]  # a prompt over 2 batches
    assert generation_chunks(0, 4, 8) == []


# ------------------------------------------------------------------------------ PendingScores


def test_pending_scores_equal_one_call_per_size_with_counts_summed(executed):
    """Ragged groups submitted in 3 chunks: the same rewards as score_groups' one call per
    group size and as the plain function; check sees the same [P, k] tensors; the status counts
    summed over the 7 handles equal those of score_groups' calls and a plain count."""
    import random

    rng = random.Random(3)
    groups = []
    for i in range(7):
        p = TASK.sample_prompt(rng)
        digits = p.split(":", 1)[1].split()
        answers = [" ".join(sorted(digits, key=int)), " ".join(digits), "", "1 2"]
        groups.append(group(p, answers[:2 + i % 3]))  # sizes 2, 3, 4, 2, 3, 4, 2
    expected = torch.tensor([fns.sort_score(g.prompt, c) for g in groups
                             for c in g.completions])
    plain = Counter(fns.sort_checked(g.prompt, c).status for g in groups for c in g.completions)

    def run(score):
        seen, counts = [], Counter()
        out = score(lambda raw, ro: seen.append((raw.tolist(), ro.prompts,
                                                 ro.completions)), counts)
        return out, seen, {k: v for k, v in counts.items() if v}

    def overlapped(check, counts):
        pending = PendingScores(executed)
        for start, stop in [(0, 3), (3, 4), (4, 7)]:  # 3 + 1 + 3 submits (one per size)
            pending.submit(groups[start:stop])
        assert len(pending.calls) == 7
        return pending.gather(check, counts)

    a, seen_a, counts_a = run(overlapped)
    b, seen_b, counts_b = run(lambda check, counts: score_groups(groups, executed, check,
                                                                 counts))
    assert a.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert torch.equal(a, b)
    assert seen_a == seen_b and [len(s[1]) for s in seen_a] == [3, 2, 2]  # sizes 2, 3, 4
    assert counts_a == counts_b == dict(plain)
    assert set(plain) == {"ok", "wrong", "unparsed"}


# ------------------------------------------------------------------------------ order


def test_the_next_chunk_generates_while_the_last_is_scored(small, tmp_path, monkeypatch,
                                                          executed):
    """One GRPO iteration, 8 prompts x 4 samples in generate batches of 8 rows: chunk i+1
    starts generating after chunk i was submitted, and every result is collected after the
    last chunk generated (in submission order)."""
    model, tok, _ = small
    events: list = []

    class SpyBackend(TransformersBackend):
        def generate(self, model, tokenizer, prompts, *, n, seed, row_offset=0, greedy=False):
            events.append(("gen start", row_offset // 8))
            out = super().generate(model, tokenizer, prompts, n=n, seed=seed,
                                   row_offset=row_offset, greedy=greedy)
            events.append(("gen", row_offset // 8))
            return out

    monkeypatch.setattr(online_mod, "TransformersBackend", SpyBackend)
    train_online(config(tmp_path, algo="grpo", iterations=1), reward=SpyAsync(executed, events),
                 prompts=prompts(16), model=copy.deepcopy(model), tokenizer=tok)
    chunks = [[("gen start", i), ("gen", i), ("submit", i)] for i in range(4)]
    assert events == [e for c in chunks for e in c] + [("result", i) for i in range(4)]
    assert events.index(("submit", 0)) < events.index(("gen start", 1))
    assert events.index(("gen", 1)) < events.index(("result", 0))


# ------------------------------------------------------------------------------ whole runs


class _RaggedGRPO(GRPO):
    """GRPO with 2, 3 or 4 samples per prompt."""

    def group_sizes(self, cfg, prompts, iteration):
        return [2 + (i + iteration) % 3 for i in range(len(prompts))]


@pytest.fixture
def ragged():
    algorithms.register("test_overlap_ragged")(_RaggedGRPO)
    yield "test_overlap_ragged"
    algorithms.unregister("test_overlap_ragged")


def _run(small, folder, reward, algo: str, **kw):
    model, tok, _ = small
    policy = copy.deepcopy(model)
    seen = []
    res = train_online(config(folder, algo=algo, **kw), reward=reward, prompts=prompts(16),
                       model=policy, tokenizer=tok,
                       monitor=lambda ro: seen.append(ro) or {})
    return res, policy, seen


def _same_runs(small, tmp_path, executed, algo: str, **kw) -> list[dict]:
    """The run with the overlap on (through a spy counting submits) and off: same rollouts,
    same logs but reward_wait_seconds, same parameters; rewards equal the plain function."""
    events: list = []
    on, p_on, seen_on = _run(small, tmp_path / "on", SpyAsync(executed, events), algo, **kw)
    off, p_off, seen_off = _run(small, tmp_path / "off", executed, algo, reward_overlap=False,
                                **kw)
    assert sum(e[0] == "submit" for e in events) > 2 * len(on.iterations)  # several chunks
    for ro_on, ro_off in zip(seen_on, seen_off, strict=True):
        assert ro_on.completion_ids == ro_off.completion_ids
    waits = [it.pop("reward_wait_seconds") for it in on.iterations]
    assert all(isinstance(w, float) and w >= 0.0 for w in waits)
    assert all("reward_wait_seconds" not in it for it in off.iterations)
    assert on.iterations == off.iterations
    for it, ro in zip(on.iterations, seen_on, strict=True):  # reward: the plain mean
        if it.get("dynamic_sampling/sampling_rounds", 1) > 1:
            continue  # the monitor saw the first round, the reward is the kept batch's
        scores = [fns.sort_score(p, c) for p, cs in zip(ro.prompts, ro.completions, strict=True)
                  for c in cs]
        assert it["reward"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
        assert sum(v for k, v in it.items() if k.startswith("reward_status/")) >= len(scores)
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(p_on.parameters(),
                                                            p_off.parameters(), strict=True))
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(p_on.parameters(),
                                                             small[0].parameters(), strict=True))
    assert diff <= 1e-6 and moved > 1e-4
    return on.iterations


def test_grpo_with_overlapped_rewards_equals_the_run_without(small, tmp_path, executed):
    logs = _same_runs(small, tmp_path, executed, "grpo")
    assert [sum(v for k, v in it.items() if k.startswith("reward_status/"))
            for it in logs] == [32, 32]


def test_groups_of_different_sizes_overlap_exactly(small, tmp_path, executed, ragged):
    logs = _same_runs(small, tmp_path, executed, ragged)
    assert [sum(v for k, v in it.items() if k.startswith("reward_status/"))
            for it in logs] == [sum(2 + (i + it) % 3 for i in range(8)) for it in range(2)]


@pytest.mark.parametrize("algo, kw", [("remax", {}),
                                      ("dapo", {"kl_coef": 0.0, "max_sampling_rounds": 3})])
def test_greedy_baseline_and_dynamic_sampling_overlap_exactly(small, tmp_path, executed, algo,
                                                              kw):
    _same_runs(small, tmp_path, executed, algo, **kw)


def test_cli_reward_workers_overlap_by_default_and_can_switch_it_off(tmp_path, monkeypatch):
    """`prefkit train online --reward python:... --reward-workers 2`: the iteration log has
    reward_wait_seconds (the overlap is on); `--set reward_overlap=false` gives the same
    rewards and status counts without it."""
    import json

    from typer.testing import CliRunner

    from prefkit.cli import app

    _, _, info = build_base_model(TASK, tmp_path / "base", hidden_size=32, num_layers=1,
                                  num_heads=2, intermediate_size=64, sft_examples=256, steps=20,
                                  batch_size=32, row_length=128)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "length_reward.py").write_text(
        "def score(prompt, completion):\n    return float(len(completion.split()))\n")
    base = ["train", "online", "--model", info["path"], "--prompts", "lab:sort:8",
            "--reward", "python:length_reward:score", "--reward-workers", "2",
            "--reward-failure-value", "-1", "--set", "save_steps=0",
            "--set", "max_new_tokens=4", "--set", "sampling_batch_size=8", "--algo", "grpo",
            "--iterations", "1", "--prompts-per-iteration", "4", "--json"]
    logs = []
    for name, extra in [("on", []), ("off", ["--set", "reward_overlap=false"])]:
        out = CliRunner().invoke(app, [*base, "--output-dir", str(tmp_path / name), *extra])
        assert out.exit_code == 0, out.output
        logs.append(json.loads(out.stdout)["iterations"][0])
    on, off = logs
    assert on.pop("reward_wait_seconds") >= 0.0 and "reward_wait_seconds" not in off
    assert on == off and on["reward_status/ok"] == 16
