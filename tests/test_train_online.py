"""Online training: config checks, rollouts (truncation, stop strings, empty completions),
seeded sharded sampling, reward sources and shaping, helpers, failure modes, the PPO value
head -- and (slow) every algorithm raising the lab sort task's gold reward over its SFT model.

The maths of :mod:`prefkit.losses.rl` is tested in tests/test_losses_rl.py.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from online_helpers import SMALL, TASK, gold, online_config, prompts, sort_sft_world
from prefkit.lab.base_model import build_base_model
from prefkit.models.generate import encode_prompt, sample
from prefkit.models.packing import PromptGroup, pack_groups
from prefkit.rewards import RewardModel
from prefkit.rewards.sources import (
    FunctionReward,
    ModelReward,
    PairwiseJudgeReward,
    RewardShaping,
)
from prefkit.train import online as online_mod
from prefkit.train.config import ConfigError
from prefkit.train.online import (
    ALGORITHMS,
    OnlineConfig,
    OnlineTrainingError,
    PolicyWithValue,
    best_of_n,
    train_online,
    west_of_n_pairs,
)
from prefkit.train.preference_data import tokenize_example
from prefkit.train.rollout import (
    SamplingSettings,
    TransformersBackend,
    collect_rollout,
    token_grid,
)

config = online_config


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_base_model(TASK, tmp_path_factory.mktemp("base"), **SMALL)


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("algo", ["grpo", "rloo", "dr_grpo"])
def test_group_methods_need_two_generations(algo):
    with pytest.raises(ConfigError, match="group size G=1"):
        OnlineConfig(algo=algo, num_generations=1, save_steps=0)
    OnlineConfig(algo=algo, num_generations=2, save_steps=0)  # the smallest valid group


def test_config_errors_and_max_steps():
    with pytest.raises(ConfigError) as exc:
        OnlineConfig(algo="sac")
    assert "'sac'" in str(exc.value)
    assert all(name in str(exc.value) for name in ALGORITHMS)
    with pytest.raises(ConfigError, match="online_ipo needs num_generations = 2"):
        OnlineConfig(algo="online_ipo", num_generations=4)
    with pytest.raises(ConfigError, match=r"raft_keep=5 must be in \[1, num_generations=4\]"):
        OnlineConfig(algo="raft", raft_keep=5)
    # 2 epochs x 3 minibatches = 6 optimizer steps per iteration
    # checkpoints fall on iteration boundaries: save_steps is rounded up to a multiple
    assert OnlineConfig(iterations=5, ppo_epochs=2, num_minibatches=3, save_steps=9
                        ).save_steps == 12
    assert OnlineConfig(num_minibatches=3).save_steps == 501  # the default 500, rounded up
    cfg = OnlineConfig(iterations=5, ppo_epochs=2, num_minibatches=3, save_steps=12)
    assert cfg.steps_per_iteration == 6
    assert cfg.max_steps == 5 * 2 * 3 == 30
    assert OnlineConfig(iterations=7, save_steps=0).max_steps == 7
    # resolved defaults
    assert OnlineConfig(algo="grpo").resolved_kl_in() == "loss"
    assert OnlineConfig(algo="grpo").resolved_kl_estimator() == "k3"
    assert OnlineConfig(algo="ppo").resolved_kl_in() == "reward"
    assert OnlineConfig(algo="ppo").resolved_kl_estimator() == "k1"
    assert OnlineConfig(algo="dr_grpo").resolved_aggregation() == "seq_mean_token_sum_norm"
    assert OnlineConfig(algo="grpo").resolved_aggregation() == "token_mean"


def test_too_few_prompts_per_process_for_the_minibatches(small, tmp_path):
    model, tok, _ = small
    cfg = config(tmp_path, prompts_per_iteration=2, num_minibatches=3, save_steps=0)
    with pytest.raises(ConfigError, match="2 prompts per process cannot fill"):
        train_online(cfg, reward=FunctionReward(gold), prompts=prompts(4),
                     model=copy.deepcopy(model), tokenizer=tok)


# ------------------------------------------------------------------------------ token grid


def test_token_grid_on_a_hand_built_segment():
    row, col, width = token_grid(torch.tensor([0, 0, 1, 1, 1, 3]), 4)
    assert row.tolist() == [0, 0, 1, 1, 1, 3]
    assert col.tolist() == [0, 1, 0, 1, 2, 0]
    assert width == 3
    # interleaved segments keep each completion's order (row 2 absent, row 1 longest)
    row, col, width = token_grid(torch.tensor([1, 0, 1, 3, 0, 1, 1]), 4)
    assert col.tolist() == [0, 0, 1, 0, 1, 2, 3]
    assert width == 4
    grid = torch.zeros(4, width, dtype=torch.long)
    grid[row, col] = torch.arange(1, 8)
    assert grid.tolist() == [[2, 5, 0, 0], [1, 3, 6, 7], [0, 0, 0, 0], [4, 0, 0, 0]]
    empty = torch.zeros(0, dtype=torch.long)
    assert token_grid(empty, 3)[2] == 0


# ------------------------------------------------------------------------------ sampling


def test_tiny_top_p_is_greedy(small):
    model, tok, _ = small
    ps = prompts(6)
    nucleus = sample(model, tok, ps, k=3, top_p=1e-6, seed=11, max_new_tokens=12,
                     return_ids=True)[1]
    greedy = sample(model, tok, ps, k=3, temperature=0.0, max_new_tokens=12,
                    return_ids=True)[1]
    assert nucleus == greedy
    sampled = sample(model, tok, ps, k=3, seed=11, max_new_tokens=12, return_ids=True)[1]
    assert sampled != greedy  # the same seed without top-p does sample


def test_row_offset_gives_a_process_its_rows_of_the_global_batch(small):
    model, tok, _ = small
    ps, k = prompts(4, seed=2), 3
    _, full = sample(model, tok, ps, k=k, seed=7, max_new_tokens=12, return_ids=True)
    _, shard = sample(model, tok, ps[2:4], k=k, seed=7, max_new_tokens=12, return_ids=True,
                      row_offset=2 * k)
    assert shard == full[2:4]
    _, unshifted = sample(model, tok, ps[2:4], k=k, seed=7, max_new_tokens=12,
                          return_ids=True)
    assert unshifted != full[2:4]  # without the offset the shard draws other samples


# ------------------------------------------------------------------------------ rollouts


def test_truncated_flags_completions_at_the_length_cap_without_eos(small):
    model, tok, _ = small
    eos = tok.eos_token_id
    backend = TransformersBackend(SamplingSettings(max_new_tokens=2))
    ro = collect_rollout(backend, model, tok, prompts(8), n=4, seed=3)
    expected = [[len(c) == 2 and c[-1] != eos for c in cs] for cs in ro.completion_ids]
    assert ro.truncated.tolist() == expected
    assert 0 < ro.truncated.sum() < ro.truncated.numel()  # both kinds occur
    assert all(len(c) <= 2 for cs in ro.completion_ids for c in cs)
    assert ro.lengths().shape == (8, 4)
    assert not ro.stopped.any()
    assert ro.prompt_ids == [encode_prompt(tok, p) for p in ro.prompts]


def test_stop_string_cuts_completions(small):
    model, tok, _ = small
    ps = prompts(8)
    settings = SamplingSettings(max_new_tokens=12)
    plain = collect_rollout(TransformersBackend(settings), model, tok, ps, n=4, seed=5)
    # the 2nd word of a sampled completion
    stop = next(c.split()[1] for cs in plain.completions for c in cs if len(c.split()) > 1)
    stopped = collect_rollout(TransformersBackend(SamplingSettings(max_new_tokens=12,
                                                                    stop=[stop])),
                              model, tok, ps, n=4, seed=5)
    n_hit = 0
    for i in range(len(ps)):
        for j in range(4):
            text, ids = plain.completions[i][j], plain.completion_ids[i][j]
            hit = stop in text
            n_hit += hit
            assert bool(stopped.stopped[i, j]) == hit
            if not hit:
                assert stopped.completions[i][j] == text
                assert stopped.completion_ids[i][j] == ids
                continue
            assert stopped.completions[i][j] == text[:text.find(stop)].strip()
            assert stop not in stopped.completions[i][j]
            cut = stopped.completion_ids[i][j]
            # the shortest prefix of the sampled ids whose text holds the stop string
            assert cut == ids[:len(cut)]
            assert stop in tok.decode(cut, skip_special_tokens=True)
            assert stop not in tok.decode(cut[:-1], skip_special_tokens=True)
            assert not stopped.truncated[i, j]
    assert 0 < n_hit < 32


class _ScriptedBackend:
    """Returns fixed completions (ids), ignoring the model."""

    def __init__(self, ids, max_new_tokens=3, stop=()):
        self.ids = ids
        self.settings = SamplingSettings(max_new_tokens=max_new_tokens, stop=list(stop))

    def generate(self, model, tokenizer, prompts, *, n, seed, row_offset=0, greedy=False):
        texts = [[tokenizer.decode(c, skip_special_tokens=True).strip() for c in cs]
                 for cs in self.ids]
        return texts, self.ids


def test_empty_completions_are_counted_and_scored_as_eos(small):
    _, tok, _ = small
    eos, one, two = tok.eos_token_id, tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")
    ids = [[[], [eos], [one, eos]], [[one, two, one], [two, eos], [one, two]]]
    ro = collect_rollout(_ScriptedBackend(ids), None, tok, ["sort: 1 2", "sort: 2 1"], n=3,
                         seed=0)
    assert ro.empty.tolist() == [[True, True, False], [False, False, False]]
    assert ro.truncated.tolist() == [[False, False, False], [True, False, False]]
    assert ro.completion_ids[0][0] == [eos]  # trained as the single token EOS
    assert ro.lengths().tolist() == [[1, 1, 2], [3, 2, 2]]
    assert ro.completions[0] == ["", "", "1"]


def test_rollout_stats_of_a_run_count_empty_truncated_and_stopped(small, tmp_path, monkeypatch):
    """train_online's per-iteration stats: the policy's first sample of every prompt is
    replaced by an empty completion -> empty = 1/G."""
    model, tok, _ = small
    eos = tok.eos_token_id
    seen = []

    class EmptyFirst(TransformersBackend):
        def generate(self, model, tokenizer, prompts, **kw):
            texts, ids = super().generate(model, tokenizer, prompts, **kw)
            for t, i in zip(texts, ids, strict=True):
                t[0], i[0] = "", [eos]
            seen.append(ids)
            return texts, ids

    monkeypatch.setattr(online_mod, "TransformersBackend", EmptyFirst)
    cfg = config(tmp_path, algo="reinforce", iterations=2, max_new_tokens=4, kl_coef=0.0)
    res = train_online(cfg, reward=FunctionReward(gold), prompts=prompts(16),
                       model=copy.deepcopy(model), tokenizer=tok)
    assert [it["iteration"] for it in res.iterations] == [0, 1]
    for it, ids in zip(res.iterations, seen, strict=True):
        assert it["empty"] == pytest.approx(0.25)
        flat = [c for cs in ids for c in cs]
        trunc = sum(len(c) == 4 and c[-1] != eos for c in flat) / len(flat)
        assert it["truncated"] == pytest.approx(trunc, abs=1e-4)
        assert it["length"] == pytest.approx(sum(map(len, flat)) / len(flat), abs=1e-3)
        assert it["stopped"] == 0 and it["kl"] is None
    logged = [json.loads(line) for line in
              (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert logged == res.iterations


# ------------------------------------------------------------------------------ reward sources


def test_function_reward_shape_and_values():
    src = FunctionReward(lambda p, c: len(c) + (10.0 if p == "b" else 0.0))
    out = src(["a", "b"], [["x", "yy", ""], ["zzz", "", "w"]])
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert out.tolist() == [[1, 2, 0], [13, 10, 11]]
    with pytest.raises(ValueError, match="same number of completions"):
        src(["a", "b"], [["x"], ["y", "z"]])


def test_model_reward_on_sampled_ids_equals_the_text_path(small):
    model, tok, info = small
    rm, rm_tok = RewardModel.from_spec(info["path"], head="scalar", seed=1)
    assert rm_tok.get_vocab() == tok.get_vocab()
    ps = prompts(8, seed=4)
    ro = collect_rollout(TransformersBackend(SamplingSettings(max_new_tokens=16)), model, tok,
                         ps, n=4, seed=9)
    by_ids = ModelReward(rm, tok)(ro.prompts, ro.completions, ro.prompt_ids, ro.completion_ids)
    by_text = ModelReward(rm, tok, same_tokenizer=False, separator=" ")(
        ro.prompts, ro.completions, ro.prompt_ids, ro.completion_ids)
    assert by_ids.shape == by_text.shape == (8, 4)
    assert by_ids.std() > 1e-3  # a random head still separates the samples
    same = torch.zeros(8, 4, dtype=torch.bool)
    for i, (p, pid) in enumerate(zip(ro.prompts, ro.prompt_ids, strict=True)):
        for j, (c, cid) in enumerate(zip(ro.completions[i], ro.completion_ids[i],
                                         strict=True)):
            ex = tokenize_example(tok, p, [" " + c])
            same[i, j] = ex.prompt_ids == pid and ex.response_ids[0] == cid
    # the word-level tokenizer round-trips most samples (not those with a sampled special
    # token such as a pad mid-completion, or without EOS: the text path appends EOS)
    assert same.float().mean() >= 0.75
    torch.testing.assert_close(by_ids[same], by_text[same], atol=1e-5, rtol=0)
    # the id path needs no text at all, and batch_size does not matter
    small_batches = ModelReward(rm, tok, batch_size=3)(ro.prompts, [[""] * 4] * 8,
                                                       ro.prompt_ids, ro.completion_ids)
    torch.testing.assert_close(small_batches, by_ids, atol=1e-5, rtol=0)


def _by_length(prompt, a, b):
    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def _biased(prompt, a, b):
    """Prefers the longer answer and, by +0.1, whichever comes first."""
    return 0.9 if len(a) > len(b) else 0.3 if len(a) < len(b) else 0.6


@pytest.mark.parametrize("symmetric", [False, True])
def test_pairwise_judge_round_robin(symmetric):
    src = PairwiseJudgeReward(_by_length, symmetric=symmetric)
    out = src(["p", "q"], [["aaa", "a", "aa", "a"], ["b", "b", "b", "b"]])
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.5 / 3, 2 / 3, 0.5 / 3],
                                                  [0.5, 0.5, 0.5, 0.5]]))


def test_pairwise_judge_symmetric_cancels_position_bias():
    cs = [["xx", "x", "x"]]
    # one order: (0,1): 0.9, (0,2): 0.9, (1,2): tie judged 0.6 for the first
    one_order = PairwiseJudgeReward(_biased, symmetric=False)(["p"], cs)
    torch.testing.assert_close(one_order, torch.tensor([[0.9, 0.35, 0.25]]))
    # both orders: longer wins (0.9 + 1 - 0.3) / 2 = 0.8, a tie (0.6 + 1 - 0.6) / 2 = 0.5
    both = PairwiseJudgeReward(_biased, symmetric=True)(["p"], cs)
    torch.testing.assert_close(both, torch.tensor([[0.8, 0.35, 0.35]]))
    assert float(both.sum()) == pytest.approx(1.5)  # G (G - 1) / 2 wins over G - 1 games


def test_pairwise_judge_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 completions"):
        PairwiseJudgeReward(_by_length)(["p"], [["a"]])
    with pytest.raises(ValueError, match="not a probability"):
        PairwiseJudgeReward(lambda p, a, b: 1.5)(["p"], [["a", "b"]])


def test_reward_shaping():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
    lengths = torch.tensor([[1.0, 4.0, 2.0], [3.0, 0.0, 10.0]])
    pen = RewardShaping(length_penalty=0.1)(r, lengths)
    torch.testing.assert_close(pen, r - 0.1 * lengths)
    with pytest.raises(ValueError, match="lengths"):
        RewardShaping(length_penalty=0.1)(r)
    batch = RewardShaping(normalize="batch")(r)
    assert float(batch.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(batch.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(batch, (r - r.mean()) / r.std(unbiased=False))
    clip = RewardShaping(clip=1.5)(r)
    assert clip.tolist() == [[1.0, 1.5, 1.5], [0.0, -1.0, 1.5]]
    # order: penalty, then normalization, then clipping
    both = RewardShaping(length_penalty=0.1, normalize="batch", clip=0.5)(r, lengths)
    x = r - 0.1 * lengths
    torch.testing.assert_close(both, ((x - x.mean()) / x.std(unbiased=False)).clamp(-0.5, 0.5))
    with pytest.raises(ValueError, match="normalize"):
        RewardShaping(normalize="layer")


def test_running_normalization_uses_the_moments_of_all_batches():
    b1 = torch.tensor([[1.0, 2.0], [4.0, 7.0]])
    b2 = torch.tensor([[10.0, -3.0, 0.5]])
    shaping = RewardShaping(normalize="running")
    out1 = shaping(b1)
    torch.testing.assert_close(out1, (b1 - b1.mean()) / b1.std(unbiased=False))
    out2 = shaping(b2)
    both = torch.cat([b1.flatten(), b2.flatten()]).double()
    expected = (b2.double() - both.mean()) / both.std(unbiased=False)
    torch.testing.assert_close(out2.double(), expected, atol=1e-6, rtol=0)
    assert shaping.moments.count == 7


# ------------------------------------------------------------------------------ helpers


def test_west_of_n_pairs_on_hand_data():
    ps = ["p1", "p2", "p3", "p4"]
    cs = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"], ["same", "x", "same"]]
    scores = torch.tensor([[0.1, 0.9, 0.5], [1.0, 1.0, 1.0], [0.2, 0.3, -0.1],
                           [2.0, 1.0, 0.0]])
    rows = west_of_n_pairs(ps, cs, scores)
    assert rows == [{"prompt": "p1", "chosen": "b", "rejected": "a"},
                    {"prompt": "p3", "chosen": "h", "rejected": "i"}]  # ties / same text: none


def test_best_of_n_returns_the_best_sample_per_prompt(small):
    model, tok, _ = small
    ps = prompts(6, seed=3)
    settings = SamplingSettings(max_new_tokens=12)
    texts, scores = best_of_n(model, tok, ps, FunctionReward(gold), n=4, settings=settings,
                              seed=13)
    ro = collect_rollout(TransformersBackend(settings), model, tok, ps, n=4, seed=13)
    expected = torch.tensor([[gold(p, c) for c in cs] for p, cs in zip(ps, ro.completions,
                                                                         strict=True)])
    torch.testing.assert_close(scores, expected)
    assert texts == [cs[int(s.argmax())] for cs, s in zip(ro.completions, scores, strict=True)]
    assert [gold(p, t) for p, t in zip(ps, texts, strict=True)] == pytest.approx(
        scores.max(dim=1).values.tolist())
    assert scores.max(dim=1).values.mean() > scores.mean()  # the selection helps


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "ppo"])
def test_on_policy_step_logs_ratio_one(small, tmp_path, algo):
    """One optimizer step per rollout: the step sees the sampling policy, so the logged
    importance ratio is 1 and nothing is clipped -- for every loss aggregation (Dr. GRPO's
    sum-normalized loss included: metrics are per-token means)."""
    model, tok, _ = small
    cfg = config(tmp_path, algo=algo, iterations=2, logging_steps=1)
    res = train_online(cfg, reward=FunctionReward(gold), prompts=prompts(16),
                       model=copy.deepcopy(model), tokenizer=tok)
    logged = [h for h in res.fit.history if "ratio" in h]
    assert len(logged) == 2
    for h in logged:
        assert h["ratio"] == pytest.approx(1.0, abs=1e-5), (algo, h)
        assert h["clipfrac"] == 0.0
    assert res.iterations[0]["kl"] == 0.0
    assert res.iterations[1]["kl"] != 0.0  # the policy moved (a k1 mean: either sign)


# ------------------------------------------------------------------------------ failures


def test_nan_reward_stops_with_iteration_prompt_and_last_checkpoint(small, tmp_path):
    model, tok, _ = small
    calls = []

    def reward(ps, cs, pids, cids):
        out = FunctionReward(gold)(ps, cs)
        calls.append(list(ps))
        if len(calls) == 2:  # iteration 1
            out[1, 2] = float("nan")
        return out

    cfg = config(tmp_path, iterations=3, save_steps=1, save_total_limit=None)
    with pytest.raises(OnlineTrainingError) as exc:
        train_online(cfg, reward=reward, prompts=prompts(32), model=copy.deepcopy(model),
                     tokenizer=tok)
    msg = str(exc.value)
    assert "iteration 1" in msg
    assert repr(calls[1][1]) in msg  # the prompt
    assert "last checkpoint" in msg and "checkpoint-1" in msg
    assert "1 of 32 rewards" in msg
    assert len(calls) == 2


def test_kl_blow_up_stops_after_the_first_iteration(small, tmp_path):
    model, tok, _ = small
    policy = copy.deepcopy(model)
    cfg = config(tmp_path, iterations=4, learning_rate=1e-2, max_kl=1e-9)
    with pytest.raises(OnlineTrainingError, match=r"KL blow-up at iteration 1\b") as exc:
        train_online(cfg, reward=FunctionReward(gold), prompts=prompts(32), model=policy,
                     tokenizer=tok)
    assert "max_kl=1e-09" in str(exc.value) and "Last checkpoint: none" in str(exc.value)
    logged = [json.loads(line) for line in
              (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert [it["iteration"] for it in logged] == [0, 1]
    assert logged[0]["kl"] == 0.0  # policy == reference before the first update
    assert logged[1]["kl"] > 1e-9
    params = list(policy.parameters())
    assert all(torch.isfinite(p).all() for p in params)
    moved = any(not torch.equal(p, q) for p, q in zip(params, model.parameters(), strict=True))
    assert moved  # the error came after one update, not before


# ------------------------------------------------------------------------------ value head


def test_policy_with_value_head_one_value_per_completion_token(small):
    model, tok, _ = small
    module = PolicyWithValue(copy.deepcopy(model), value_head=True)
    groups = [PromptGroup([1, 4, 6, 7], [[6, 7, 2], [7, 2], [6, 6, 6, 6, 2]]),
              PromptGroup([1, 4, 9], [[9, 2]])]
    batch = pack_groups(groups, max_length=32, pad_id=tok.pad_token_id)
    lp, values = module(batch)
    n_tokens = 3 + 2 + 5 + 2
    assert lp.per_token.shape == values.shape == (n_tokens,)
    assert torch.equal(values, torch.zeros(n_tokens))  # the head starts at 0
    # values are the head on the hidden state before each completion token
    with torch.no_grad():
        module.value_head.weight.normal_()
        module.value_head.bias.fill_(0.5)
    lp, values = module(batch)
    torch.testing.assert_close(values, module.value_head(lp.hidden).squeeze(-1))
    assert values.std() > 0
    values.sum().backward()
    assert module.value_head.weight.grad is not None
    lp, none = PolicyWithValue(model, value_head=False)(batch)
    assert none is None and lp.hidden is None


# ------------------------------------------------------------------------------ learning (slow)

#: 10 iterations x 32 prompts x G=4 at lr 1e-4 (constant), ~2 s per algorithm on one thread.
#: Measured gain in mean gold reward of sampled answers (2 per held-out prompt) over the SFT
#: model (0.621), config seeds 42 / 1 / 2 / 3: ppo +.129/.141/.146/.126, reinforce
#: +.122/.137/.146/.130, rloo +.120/.132/.129/.130, grpo +.136/.145/.133/.138, dr_grpo
#: +.117/.132/.130/.127, remax +.104/.126/.123/.117, online_dpo +.130/.145/.133/.131, raft
#: +.149/.157/.138/.157, online_ipo (G=2) +.125/.120/.118/.128. After the on-policy update
#: stopped running a separate "old" forward and the last layer became position-pruned (same
#: maths, other float rounding, so other sampled trajectories), seed 42 on 2 threads: ppo
#: +.110, reinforce +.105, rloo +.110, grpo +.118, dr_grpo +.110, remax +.075, online_dpo
#: +.108, raft +.142, online_ipo +.117 -- the spread between trajectories is ~0.03, so the
#: margin is 0.05 (the evaluation's standard error of a difference is ~0.02).
LEARNING_MARGIN = 0.05


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """The lab's default SFT model of the sort task and its held-out evaluation."""
    return sort_sft_world(tmp_path_factory.mktemp("sft"))


def _learn(sft, tmp_path, algo, reward, **kw):
    model, tok, train_prompts, evaluate, base = sft
    cfg = config(tmp_path, algo=algo, iterations=10, prompts_per_iteration=32,
                 max_new_tokens=32, **kw)
    res = train_online(cfg, reward=reward, prompts=train_prompts, model=copy.deepcopy(model),
                       tokenizer=tok)
    assert len(res.iterations) == 10 and res.fit.steps == 10
    assert all(math.isfinite(it["reward"]) for it in res.iterations)
    return evaluate(res.model) - base, res


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax",
                                  "online_dpo", "raft"])
def test_every_algorithm_raises_gold_reward(sft, tmp_path, algo):
    gain, res = _learn(sft, tmp_path, algo, FunctionReward(gold))
    print(f"{algo}: gold {sft[4]:.3f} -> +{gain:.3f}")
    assert gain > LEARNING_MARGIN, (algo, gain, res.iterations[-1])


@pytest.mark.slow
def test_online_ipo_with_a_general_preference_raises_gold_reward(sft, tmp_path):
    def preference(ps, cs, pids=None, cids=None):
        """P(sample 0 beats sample 1) = sigmoid((gold_0 - gold_1) / 0.1)."""
        g = torch.tensor([[gold(p, c) for c in pair] for p, pair in zip(ps, cs, strict=True)])
        p0 = torch.sigmoid((g[:, 0] - g[:, 1]) / 0.1)
        return torch.stack([p0, 1.0 - p0], dim=1)

    gain, res = _learn(sft, tmp_path, "online_ipo", preference, num_generations=2)
    print(f"online_ipo: gold {sft[4]:.3f} -> +{gain:.3f}")
    assert gain > LEARNING_MARGIN, (gain, res.iterations[-1])


# ----------------------------------------------------------------------------- GPM and self


def test_gpm_preference_is_the_head_logit(small):
    """P(sample 0 beats 1) = sigmoid(scale * <R e0, e1>) from the GPM embeddings, computed
    here from a direct forward; the two columns sum to 1."""
    from prefkit.rewards.sources import GPMPreference

    model, tok, info = small
    rm, _ = RewardModel.from_spec(info["path"], head="gpm", gpm_dim=4, seed=3)
    ps = prompts(5)
    ro = collect_rollout(TransformersBackend(SamplingSettings(max_new_tokens=8)), model, tok,
                         ps, n=2, seed=4)
    got = GPMPreference(rm, tok)(ro.prompts, ro.completions, ro.prompt_ids, ro.completion_ids)
    assert got.shape == (5, 2)
    assert torch.allclose(got.sum(1), torch.ones(5))
    groups = ro.groups()
    batch = pack_groups(groups, max_length=max(g.packed_length for g in groups), pad_id=0)
    with torch.no_grad():
        e = rm(batch).embeddings.float()
        a, b = e[:, 0].unflatten(-1, (-1, 2)), e[:, 1].unflatten(-1, (-1, 2))
        logit = rm.head.scale * (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).sum(-1)
    assert torch.allclose(got[:, 0], torch.sigmoid(logit), atol=1e-5)
    assert (got[:, 0] - 0.5).abs().max() > 1e-4  # a random head still has preferences


def test_self_reward_is_the_current_policys_implicit_reward(small):
    """reward='self': beta * (log pi - log pi_ref) of the live policy, recomputed as it
    changes."""
    from prefkit.models.logprobs import sequence_logps
    from prefkit.train.online import self_reward

    model, tok, _ = small
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ps = prompts(4)
    ro = collect_rollout(TransformersBackend(SamplingSettings(max_new_tokens=8)), policy, tok,
                         ps, n=3, seed=2)
    source = self_reward(policy, model, tok, beta=0.2)
    got = source(ro.prompts, ro.completions, ro.prompt_ids, ro.completion_ids)
    groups = ro.groups()
    batch = pack_groups(groups, max_length=max(g.packed_length for g in groups), pad_id=0)
    with torch.no_grad():
        want = 0.2 * (sequence_logps(policy, batch).sum - sequence_logps(model, batch).sum)
    assert torch.allclose(got, want, atol=1e-4)
    with torch.no_grad():  # the policy moves: so does its reward
        next(policy.parameters()).add_(0.1)
    assert not torch.allclose(source(ro.prompts, ro.completions, ro.prompt_ids,
                                     ro.completion_ids), got, atol=1e-4)


def test_self_rewarding_online_dpo_runs_from_a_moved_policy(small, tmp_path):
    """The self-rewarding loop: online DPO labelled by the policy's own implicit reward
    against the SFT reference; pairs are decisive (non-zero rewards) and the policy moves."""
    model, tok, _ = small
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    start = [p.detach().clone() for p in policy.parameters()]
    cfg = OnlineConfig(algo="online-dpo", iterations=2, prompts_per_iteration=8,
                       num_generations=4, learning_rate=1e-3, max_new_tokens=8,
                       output_dir=str(tmp_path), save_steps=0, save_final=False,
                       progress=False, lr_scheduler="constant")
    assert cfg.algo == "online_dpo"
    res = train_online(cfg, reward="self", prompts=prompts(16), model=policy, tokenizer=tok,
                       reference=model)
    assert all(it["reward"] != 0.0 for it in res.iterations)
    assert res.fit.metrics["examples"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(start, policy.parameters(), strict=True))
    with pytest.raises(ValueError, match="reward 'gold'"):
        train_online(cfg, reward="gold", prompts=prompts(16), model=policy, tokenizer=tok)


def test_cli_train_online(small, tmp_path):
    from typer.testing import CliRunner

    from prefkit.cli import app

    _, _, info = small
    base = ["train", "online", "--model", info["path"], "--prompts", "lab:sort:16",
            "--output-dir", str(tmp_path / "run"), "--set", "save_steps=0",
            "--set", "max_new_tokens=8", "--json"]
    ok = CliRunner().invoke(app, [*base, "--reward", "gold:sort", "--algo", "rloo",
                                  "--iterations", "2", "--prompts-per-iteration", "8",
                                  "--save-model", str(tmp_path / "policy")])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["algo"] == "rloo" and out["steps"] == 2 and len(out["iterations"]) == 2
    assert (tmp_path / "policy" / "config.json").exists()
    bad = CliRunner().invoke(app, [*base, "--reward", "nope", "--algo", "grpo"])
    assert bad.exit_code == 2 and "KIND:ARGUMENT" in json.loads(bad.stdout)["error"]
    missing = CliRunner().invoke(app, ["train", "online", "--model", info["path"], "--json"])
    assert missing.exit_code == 2 and "--prompts" in json.loads(missing.stdout)["error"]
    wrong = CliRunner().invoke(app, [*base, "--reward", "gold:sort", "--algo", "grpo",
                                     "--set", "num_generations=1"])
    assert wrong.exit_code == 2 and "G=1" in json.loads(wrong.stdout)["error"]


def test_pairwise_judge_record_on_identical_answers_is_a_tie():
    """A judge returning comparison records (the lab's annotators) that always picks its first
    argument: two copies of one answer tie instead of the first copy winning."""
    from types import SimpleNamespace

    def first_wins(prompt, a, b):
        return SimpleNamespace(chosen=a, outcome=SimpleNamespace(is_tie=False))

    got = PairwiseJudgeReward(first_wins, symmetric=False)(["p"], [["x", "x", "y"]])
    assert torch.allclose(got, torch.tensor([[0.75, 0.75, 0.0]]))  # x-x tie, x beats y twice


def test_read_prompts_names_file_line_and_field(tmp_path):
    """--prompts goes through prefkit's readers: their messages name file, line and field."""
    from prefkit.data.errors import RecordError
    from prefkit.train.online import read_prompts

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{bad\n')
    with pytest.raises(RecordError, match=r"p\.jsonl:2: \[malformed_json\]"):
        read_prompts(str(bad))
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(RecordError, match=r"p\.jsonl:2: \[missing_field\] field 'prompt'"):
        read_prompts(str(bad))
    bad.write_text('{"prompt": "a"}\n{"prompt": 7}\n')
    with pytest.raises(RecordError, match=r"p\.jsonl:2: \[wrong_type\] field 'prompt'"):
        read_prompts(str(bad))
    bad.write_text("\n")
    with pytest.raises(ValueError, match=r"p\.jsonl.*(no prompts|no_records)"):
        read_prompts(str(bad))
    good = tmp_path / "p.txt"
    good.write_text("one\n\ntwo\n")
    assert read_prompts(str(good)) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_prompts(str(tmp_path / "missing.jsonl"))


def test_read_prompts_from_every_reader(tmp_path):
    """JSONL, JSON arrays, Parquet, dataset folders (FOLDER::split) and conversational prompts
    (issue 12 item 10: Parquet failed with a UTF-8 error, folders and messages were refused)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefkit.train.online import read_prompts, resolve_prompts

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sort: 2 1"}]
    rows = [{"prompt": "sort: 3 1 2", "chosen": "1 2 3", "rejected": "3 2 1"},
            {"prompt": "sort: 5 4", "chosen": "4 5", "rejected": "5 4"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}
                         ).save_to_disk(str(tmp_path / "ds"))
    texts = ["sort: 3 1 2", "sort: 5 4"]
    for name in ("a.jsonl", "a.json", "a.parquet", "ds::train"):
        assert read_prompts(str(tmp_path / name)) == texts, name
        assert resolve_prompts(str(tmp_path / name)) == texts, name
    assert read_prompts(f"{tmp_path / 'ds'}::test") == texts[:1]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"prompt": chat}) + "\n"
                                         + json.dumps({"prompt": "plain"}) + "\n")
    assert read_prompts(str(tmp_path / "chat.jsonl")) == [chat, "plain"]
    (tmp_path / "badchat.jsonl").write_text(json.dumps({"prompt": [{"role": "user"}]}) + "\n")
    with pytest.raises(ValueError, match=r"badchat\.jsonl:1: .*field 'prompt\[0\]\.content'"):
        read_prompts(str(tmp_path / "badchat.jsonl"))


def test_conversational_prompts_are_sampled_through_the_chat_template(small):
    model, tok, _ = small
    tok = copy.deepcopy(tok)
    tok.chat_template = ("{% for m in messages %}{{ m.content }} {% endfor %}"
                         "{% if add_generation_prompt %}{% endif %}")
    chat = [{"role": "user", "content": "sort: 3 1 2"}]
    backend = TransformersBackend(SamplingSettings(max_new_tokens=6))
    as_chat = collect_rollout(backend, model, tok, [chat], n=2, seed=4)
    as_text = collect_rollout(backend, model, tok, ["sort: 3 1 2"], n=2, seed=4)
    assert as_chat.prompts == [chat]
    assert as_chat.prompt_ids == as_text.prompt_ids  # the template renders the same text here
    assert as_chat.completion_ids == as_text.completion_ids


def test_long_prompts_are_cut_to_max_prompt_length_and_counted(small, tmp_path):
    """A prompt of ~200k words is sampled from its last max_prompt_length tokens; the cut
    prompts are counted per iteration and in the result (issue 12 item 2)."""
    model, tok, _ = small
    rng = random.Random(5)
    huge = "sort: " + " ".join(str(rng.randint(0, 9)) for _ in range(200_000)) + " 3 1 2"
    ps = [huge] + prompts(7)
    seen = []

    def reward(prompt, completion):
        seen.append(prompt)
        return gold(prompt, completion) if len(prompt) < 1000 else 0.0

    cfg = config(tmp_path, algo="reinforce", iterations=2, max_new_tokens=4, kl_coef=0.0,
                 max_prompt_length=8)
    with pytest.warns(UserWarning, match="2 sampled prompts were longer than "
                      "max_prompt_length=8"):
        res = train_online(cfg, reward=FunctionReward(reward), prompts=ps,
                           model=copy.deepcopy(model), tokenizer=tok)
    assert [it["prompts_truncated"] for it in res.iterations] == [1, 1]  # 8 prompts / iteration
    out = res.to_dict()
    assert out["truncation"]["max_prompt_length"] == 8
    assert out["truncation"]["prompts_truncated"] == 2
    assert huge in seen  # the reward sees the prompt as given
    ro = collect_rollout(TransformersBackend(SamplingSettings(max_new_tokens=2,
                                                              max_prompt_length=8)),
                         model, tok, [huge], n=1, seed=0)
    assert bool(ro.prompt_truncated[0]) and len(ro.prompt_ids[0]) == 8
    assert ro.prompt_ids[0][1:] == tok.convert_tokens_to_ids(huge.split()[-7:])


def test_default_max_prompt_length_comes_from_the_model(small):
    model, _, _ = small
    limit = model.config.max_position_embeddings
    assert OnlineConfig(max_new_tokens=10).resolved_max_prompt_length(model) == min(
        1024, limit - 10)
    assert OnlineConfig(max_prompt_length=5).resolved_max_prompt_length(model) == 5
    with pytest.raises(ConfigError, match="max_prompt_length"):
        OnlineConfig(max_prompt_length=0)


def test_python_reward_module_in_the_current_folder(tmp_path, monkeypatch):
    """python:module:function finds a module in the working folder without PYTHONPATH=.
    (issue 12 item 10); a missing module or function is a clear error."""
    from prefkit.specs import reward_from_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    (tmp_path / "my_reward_mod.py").write_text(
        "def length(prompt, completion):\n    return float(len(completion))\n")
    src = reward_from_spec("python:my_reward_mod:length")
    assert src(["p"], [["ab", "abcd"]]).tolist() == [[2.0, 4.0]]
    by_file = reward_from_spec("python:my_reward_mod.py:length")
    assert by_file(["p"], [["abc"]]).tolist() == [[3.0]]
    with pytest.raises(ValueError, match=r"no module named 'no_such_mod'.*current folder"):
        reward_from_spec("python:no_such_mod:f")
    with pytest.raises(ValueError, match=r"my_reward_mod.*has no function 'nope'"):
        reward_from_spec("python:my_reward_mod:nope")


def test_cli_train_online_python_reward_from_cwd_and_parquet_prompts(small, tmp_path,
                                                                      monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from prefkit.cli import app

    _, _, info = small
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cli_reward_mod.py").write_text(
        "def score(prompt, completion):\n    return float(len(completion))\n")
    pq.write_table(pa.Table.from_pylist([{"prompt": p} for p in prompts(8)]),
                   tmp_path / "p.parquet")
    base = ["train", "online", "--model", info["path"], "--prompts", "p.parquet",
            "--output-dir", str(tmp_path / "run"), "--set", "save_steps=0",
            "--set", "max_new_tokens=4", "--algo", "rloo", "--iterations", "1",
            "--prompts-per-iteration", "8", "--json"]
    ok = CliRunner().invoke(app, [*base, "--reward", "python:cli_reward_mod:score"])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["truncation"]["prompts_truncated"] == 0
    missing = CliRunner().invoke(app, [*base, "--reward", "python:cli_reward_mod:nope"])
    assert missing.exit_code == 2
    assert "has no function 'nope'" in json.loads(missing.stdout)["error"]


# ------------------------------------------------------------------ resume and identity


def _rollout_lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]


def test_resume_with_more_iterations_replays_exactly_without_duplicate_lines(small, tmp_path):
    """iterations is not part of the run identity: a finished 2-iteration run continues to 3
    with resume_from='latest', and ends where a straight 3-iteration run ends. A run killed
    after writing an iteration's rollouts.jsonl line but before its checkpoint replays that
    iteration on resume: its line is there once (it used to be appended twice)."""
    model, tok, _ = small
    ps = prompts(24)
    common = dict(algo="rloo", kl_coef=0.05, save_steps=1, save_final=True)

    def run(folder, **kw):
        policy = copy.deepcopy(model)
        train_online(config(tmp_path / folder, **common, **kw), reward=FunctionReward(gold),
                     prompts=ps, model=policy, tokenizer=tok)
        return policy, tmp_path / folder / "run"

    straight, straight_dir = run("straight", iterations=3)
    _, resumed_dir = run("resumed", iterations=2)
    resumed, _ = run("resumed", iterations=3, resume_from="latest")
    want = _rollout_lines(straight_dir)
    assert [r["iteration"] for r in want] == [0, 1, 2]
    assert _rollout_lines(resumed_dir) == want
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    # killed after iteration 2's line was written, before checkpoint-3: resume from checkpoint-2
    import shutil

    shutil.rmtree(resumed_dir / "checkpoint-3")
    again, _ = run("resumed", iterations=3, resume_from="latest")
    assert _rollout_lines(resumed_dir) == want  # iteration 2 once, the same numbers
    for a, b in zip(straight.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("change", [{"sampling_batch_size": 3}, {"chunk_size": 2}])
def test_sampling_batch_size_and_chunk_size_leave_the_run_unchanged(small, tmp_path, change):
    """The two settings a resume may change besides the length: the samples are a pure function
    of (seed, iteration, global row) whatever the generate batch, and the LM-head chunking
    changes how log-probs are computed, not their values (rollouts equal, weights within float
    rounding)."""
    model, tok, _ = small
    ps = prompts(16)
    finals = []
    for folder, kw in (("a", {}), ("b", change)):
        policy = copy.deepcopy(model)
        cfg = config(tmp_path / folder, **{"algo": "grpo", "sampling_batch_size": 64, **kw})
        train_online(cfg, reward=FunctionReward(gold), prompts=ps, model=policy, tokenizer=tok)
        finals.append((policy, _rollout_lines(tmp_path / folder / "run")))
    (a, lines_a), (b, lines_b) = finals
    assert [r["reward"] for r in lines_a] == [r["reward"] for r in lines_b]
    assert [r["length"] for r in lines_a] == [r["length"] for r in lines_b]
    moved = max(float((p - q).detach().abs().max())
                for p, q in zip(a.parameters(), model.parameters(), strict=True))
    assert moved > 1e-4  # training did change the weights
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_cli_summary_counts_truncated_prompts(small, tmp_path):
    from typer.testing import CliRunner

    from prefkit.cli import app

    _, _, info = small
    result = CliRunner().invoke(app, [
        "train", "online", "--model", info["path"], "--prompts", "lab:sort:16", "--reward",
        "gold:sort", "--algo", "rloo", "--iterations", "1", "--prompts-per-iteration", "8",
        "--max-prompt-length", "3", "--max-new-tokens", "4", "--output-dir",
        str(tmp_path / "run"), "--set", "save_steps=0", "--set", "progress=false"],
        env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert ("8 sampled prompts were longer than max_prompt_length=3 tokens and kept their "
            "last tokens") in result.stdout
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())["config"]
    assert config["max_prompt_length"] == 3 and config["max_new_tokens"] == 4
    short = CliRunner().invoke(app, [
        "train", "online", "--model", info["path"], "--prompts", "lab:sort:16", "--reward",
        "gold:sort", "--algo", "rloo", "--iterations", "1", "--prompts-per-iteration", "8",
        "--max-new-tokens", "4", "--output-dir", str(tmp_path / "run2"), "--set",
        "save_steps=0", "--set", "progress=false"], env={"COLUMNS": "250"})
    assert short.exit_code == 0 and "max_prompt_length" not in short.stdout


@pytest.mark.parametrize("settings", [
    {"algo": "ppo", "kl_coef": 0.05, "target_kl": 0.001, "kl_horizon": 50},
    # the KL in the loss, measured by the update itself (no separate "old" forward)
    {"algo": "grpo", "kl_coef": 0.05, "target_kl": 0.001, "kl_horizon": 50},
    {"algo": "rloo", "reward_normalization": "running"},
])
def test_resume_restores_the_kl_controller_and_running_reward_moments(small, tmp_path,
                                                                      settings):
    """The adaptive KL coefficient and the running reward moments change every iteration; a
    checkpoint keeps them, so a resumed run goes on with them (it restarted from kl_coef and
    from empty moments: other coefficients, other shaped rewards, other weights)."""
    model, tok, _ = small
    ps = prompts(24)

    def run(folder, **kw):
        policy = copy.deepcopy(model)
        cfg = config(tmp_path / folder, **settings, save_steps=1, save_final=True, **kw)
        train_online(cfg, reward=FunctionReward(gold), prompts=ps, model=policy,
                     tokenizer=tok)
        return policy, _rollout_lines(tmp_path / folder / "run")

    straight, want = run("straight", iterations=3)
    run("resumed", iterations=2)
    resumed, got = run("resumed", iterations=3, resume_from="latest")
    if "target_kl" in settings:
        assert len({r["kl_coef"] for r in want}) == 3  # the controller moved each iteration
    assert got == want
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_generation_backends_train_to_the_same_weights(small, tmp_path):
    """OnlineConfig.generation_backend reaches the rollouts, and prefkit's decode loop and
    transformers' generate sample the same tokens for the same seed (same min_new_tokens rule):
    two runs end with the same weights and rewards."""
    model, tok, _ = small
    runs = {}
    for backend in ("prefkit", "transformers"):
        cfg = config(tmp_path / backend, algo="grpo", iterations=2, min_new_tokens=3,
                     generation_backend=backend)
        policy = copy.deepcopy(model)
        res = train_online(cfg, reward=FunctionReward(gold), prompts=prompts(16),
                           model=policy, tokenizer=tok)
        runs[backend] = (torch.cat([p.detach().flatten() for p in policy.parameters()]),
                         [it["reward"] for it in res.iterations])
    assert runs["prefkit"][1] == runs["transformers"][1]
    assert torch.equal(runs["prefkit"][0], runs["transformers"][0])
    with pytest.raises(ValueError, match="generation_backend"):
        config(tmp_path, generation_backend="vllm-please")


def test_auto_generation_backend_compiles_only_long_runs(monkeypatch):
    """'auto' (the default) plans iterations x generate calls x max_new_tokens decode steps and
    compiles only from COMPILE_PAYS_AFTER on, and only with a compiler; the choice and the
    reason are in the result."""
    from prefkit.models import decode
    from prefkit.train.online import OnlineConfig, _generation_backend

    acc = type("Acc", (), {"num_processes": 2, "device": torch.device("cpu")})()
    real_check = decode.compiler_missing
    assert OnlineConfig().generation_backend == "auto"
    # 16 prompts / 2 processes x 4 samples = 32 rows, 2 calls of 16 rows, 32 tokens
    long = OnlineConfig(iterations=157, sampling_batch_size=16, max_new_tokens=32)
    short = OnlineConfig(iterations=156, sampling_batch_size=16, max_new_tokens=32)
    assert 157 * 2 * 32 >= decode.COMPILE_PAYS_AFTER > 156 * 2 * 32
    monkeypatch.setattr(decode, "compiler_missing", lambda device: None)
    assert _generation_backend(long, acc) == {
        "backend": "prefkit-compiled",
        "why": "auto: 10,048 decode steps planned (compiling pays after ~10,000)"}
    assert _generation_backend(short, acc)["backend"] == "prefkit"
    monkeypatch.setattr(decode, "compiler_missing", lambda device: "no C++ compiler")
    assert _generation_backend(long, acc) == {
        "backend": "prefkit", "why": "auto: 10,048 decode steps planned, but no C++ compiler"}
    assert _generation_backend(OnlineConfig(generation_backend="transformers"), acc) == {
        "backend": "transformers", "why": "configured"}
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert real_check("cpu") == \
        "no C++ compiler on PATH (g++, c++, clang++ or $CXX)"


def test_generation_choice_is_in_the_result(small, tmp_path):
    model, tok, _ = small
    res = train_online(config(tmp_path, algo="grpo", iterations=1), reward=FunctionReward(gold),
                       prompts=prompts(8), model=copy.deepcopy(model), tokenizer=tok)
    assert res.generation["backend"] == "prefkit"
    assert res.generation["why"].startswith("auto: ")
    assert res.to_dict()["generation"] == res.generation
