"""Online algorithms as registered parts (prefkit.train.algorithms): the registry, an algorithm
defined in this file training without any edit to prefkit, the loop's freedom from algorithm
names, DAPO / GSPO / REINFORCE++ against hand-computed values, dynamic sampling keeping the
batch full, groups of different sizes, and reward status counts."""

from __future__ import annotations

import ast
import copy
import inspect
import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from online_helpers import SMALL, TASK, gold, online_config, prompts, sort_sft_world
from prefkit.lab.base_model import build_base_model
from prefkit.losses import rl
from prefkit.rewards.sources import FunctionReward
from prefkit.train import algorithms
from prefkit.train import online as online_mod
from prefkit.train.algorithms.critic_free import GRPO
from prefkit.train.algorithms.policy_gradient import CriticFree
from prefkit.train.config import ConfigError
from prefkit.train.loop import StepOutput
from prefkit.train.online import OnlineConfig, train_online

BUILTIN = ["ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax", "online_dpo", "online_ipo",
           "raft", "dapo", "gspo", "reinforce_pp"]


def config(tmp_path, **kw) -> OnlineConfig:
    return online_config(tmp_path, **{"learning_rate": 1e-3, "logging_steps": 1, **kw})

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_base_model(TASK, tmp_path_factory.mktemp("base"), **SMALL)



def moved(a, b) -> float:
    return max(float((p - q).detach().abs().max())
               for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ------------------------------------------------------------------------------ the registry


def test_the_registry_lists_every_algorithm_and_the_config_takes_its_names():
    assert list(algorithms.available_algorithms())[:len(BUILTIN)] == BUILTIN
    assert list(online_mod.ALGORITHMS)[:len(BUILTIN)] == BUILTIN
    for name in BUILTIN:
        algo = algorithms.get_algorithm(name)
        assert algo.name == name and algo.summary
        cfg = OnlineConfig(algo=name, num_generations=2, save_steps=0)
        assert cfg.algorithm is algo
    help_text = OnlineConfig.__dataclass_fields__["algo"].metadata["help"]
    assert all(name in help_text for name in BUILTIN)
    with pytest.raises(ConfigError) as exc:
        OnlineConfig(algo="sac")
    assert str(exc.value).startswith("invalid OnlineConfig.algo='sac': expected one of "
                                     + ", ".join(BUILTIN))
    with pytest.raises(ValueError, match="unknown online algorithm 'sac'; available: ppo,"):
        algorithms.get_algorithm("sac")
    # the algorithms' own defaults and checks
    assert OnlineConfig(algo="dapo").resolved_clip_eps_high() == 0.28
    assert OnlineConfig(algo="dapo", clip_eps_high=0.3).resolved_clip_eps_high() == 0.3
    assert OnlineConfig(algo="grpo").resolved_clip_eps_high() is None
    assert OnlineConfig(algo="dapo").resolved_dynamic_sampling()
    assert not OnlineConfig(algo="grpo").resolved_dynamic_sampling()
    assert OnlineConfig(algo="dapo", max_new_tokens=32).resolved_overlong_buffer() == 8
    assert OnlineConfig(algo="grpo", max_new_tokens=32).resolved_overlong_buffer() == 0
    assert OnlineConfig(algo="gspo").resolved_aggregation() == "seq_mean_token_mean"
    assert OnlineConfig(algo="dapo").resolved_kl_in() == "loss"
    assert OnlineConfig(algo="reinforce_pp").resolved_kl_in() == "reward"
    for name in ("dapo", "gspo"):
        with pytest.raises(ConfigError, match="group size G=1"):
            OnlineConfig(algo=name, num_generations=1)
    with pytest.raises(ConfigError, match="overlong_buffer=40 must be at most max_new_tokens=32"):
        OnlineConfig(algo="dapo", max_new_tokens=32, overlong_buffer=40)


def test_cli_algo_choices_come_from_the_registry(small, tmp_path):
    from typer.testing import CliRunner

    from prefkit.cli import app

    _, _, info = small
    bad = CliRunner().invoke(app, ["train", "online", "--model", info["path"], "--prompts",
                                   "lab:sort:8", "--reward", "gold:sort", "--algo", "sac",
                                   "--json"])
    assert bad.exit_code == 2
    assert "expected one of " + ", ".join(BUILTIN) in json.loads(bad.stdout)["error"]
    ok = CliRunner().invoke(app, [
        "train", "online", "--model", info["path"], "--prompts", "lab:sort:16", "--reward",
        "gold:sort", "--algo", "dapo", "--iterations", "1", "--prompts-per-iteration", "4",
        "--max-new-tokens", "6", "--output-dir", str(tmp_path / "run"), "--set",
        "save_steps=0", "--set", "progress=false", "--json"])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["algo"] == "dapo" and out["steps"] == 1
    assert "dynamic_sampling/sampling_rounds" in out["iterations"][0]


# ------------------------------------------------------------------------------ a new algorithm


class _SignedAdvantage(CriticFree):
    """A test algorithm: advantage = sign(reward - group mean), with its own loss (-A * log p,
    a per-token mean) -- it records what it saw."""

    seen: list = []

    def sequence_advantages(self, ctx, scores, data):
        out = torch.cat([torch.sign(s - s.mean()) for s in data.split(scores)])
        self.seen.append((scores.clone(), out.clone(), list(data.sizes)))
        return out

    def loss(self, ctx, logps, values, batch):
        mask = batch["mask"]
        total = -(batch["adv"] * logps * mask).sum()
        return StepOutput(loss_sum=total, n_examples=mask.sum().float(),
                          metrics_sum={"signed": total.detach()}, n_tokens=int(mask.sum()))


@pytest.fixture
def signed():
    algorithms.register("test_signed")(_SignedAdvantage)
    _SignedAdvantage.seen = []
    yield algorithms.get_algorithm("test_signed")
    algorithms.unregister("test_signed")


def test_an_algorithm_defined_in_this_file_trains(small, tmp_path, signed):
    model, tok, _ = small
    policy = copy.deepcopy(model)
    res = train_online(config(tmp_path, algo="test_signed", kl_coef=0.0),
                       reward=FunctionReward(gold), prompts=prompts(16), model=policy,
                       tokenizer=tok)
    assert res.fit.steps == 2 and [it["iteration"] for it in res.iterations] == [0, 1]
    assert moved(policy, model) > 1e-4
    assert len(signed.seen) == 2
    for (scores, adv, sizes), it in zip(signed.seen, res.iterations, strict=True):
        assert sizes == [4] * 8
        hand = scores.view(8, 4)
        hand = torch.sign(hand - hand.mean(dim=1, keepdim=True)).reshape(-1)
        assert torch.equal(adv, hand)
        assert it["shaped_reward"] == pytest.approx(float(scores.mean()), abs=1e-6)
    assert "test_signed" in online_mod.ALGORITHMS  # the config's choices are live
    assert any("signed" in h for h in res.fit.history)


# ------------------------------------------------------------------------------ no branching

#: AST node types whose condition / comparison is control flow
_CONTROL = (ast.If, ast.IfExp, ast.While, ast.Assert, ast.match_case)


def _branching_on_names(source: str, names) -> list[str]:
    """Where ``source`` decides on an algorithm name: a name string inside a condition, a
    comparison, a match case or a subscript key, or any comparison that reads ``.algo``."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, _CONTROL):
            parts.append(getattr(node, "test", None) or getattr(node, "pattern", None))
        if isinstance(node, ast.Compare | ast.BoolOp):
            parts.append(node)
            if any(isinstance(n, ast.Attribute) and n.attr == "algo" for n in ast.walk(node)):
                found.append(f"line {node.lineno}: compares .algo")
        if isinstance(node, ast.Subscript):
            parts.append(node.slice)
        if isinstance(node, ast.Dict):
            parts.extend(k for k in node.keys if k is not None)
        for part in parts:
            for n in ast.walk(part) if part is not None else ():
                if isinstance(n, ast.Constant) and n.value in names:
                    found.append(f"line {n.lineno}: {n.value!r}")
    return found


def test_the_loop_has_no_branching_on_algorithm_names():
    names = set(algorithms.available_algorithms())
    # the checker finds the shapes the loop used to have
    probe = ('if cfg.algo == "ppo":\n    pass\nx = 1 if algo in ("grpo", "dr_grpo") else 2\n'
             'y = {"remax": 1}[name]\nmatch a:\n    case "raft":\n        pass\n')
    assert len(_branching_on_names(probe, names)) >= 5
    source = inspect.getsource(online_mod)
    assert _branching_on_names(source, names) == []
    # and no algorithm name is written anywhere in the loop's code (docstrings aside)
    loop = inspect.getsource(online_mod._Online) + inspect.getsource(online_mod.train_online)
    tree = ast.parse(loop)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.body
                  and isinstance(n.body[0], ast.Expr)}
    constants = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                 and isinstance(n.value, str) and id(n) not in docstrings]
    assert not [c for c in constants if any(name == c for name in names)]


# ------------------------------------------------------------------------------ DAPO maths


def test_dapo_overlong_penalty_by_hand():
    lengths = torch.tensor([10.0, 24.0, 26.0, 28.0, 32.0, 40.0])
    got = rl.overlong_penalty(lengths, max_length=32, buffer=8)
    # 0 up to 32 - 8 = 24, then (24 - L) / 8, -1 past 32
    assert got.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert rl.overlong_penalty(lengths, max_length=32, buffer=0).tolist() == [0.0] * 6
    with pytest.raises(ValueError, match="buffer must be in"):
        rl.overlong_penalty(lengths, max_length=32, buffer=33)


def test_dapo_decoupled_clip_and_token_level_loss_by_hand():
    logps = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -0.1, -2.0], [-0.2, -2.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # ratios: e^0.5 = 1.6487 (A=+1: clipped at 1.28), e^-0.4 = 0.6703 (A=+1: unclipped, the
    # min), 1 ; 1, e^-1 = 0.3679 (A=-1: clipped at 0.8 -> -0.8 is the min)
    hand = []
    for i in range(2):
        for t in range(3):
            if not mask[i, t]:
                continue
            r = math.exp(float(logps[i, t].detach() - old[i, t]))
            a = float(adv[i, t])
            hand.append(-min(r * a, min(max(r, 0.8), 1.28) * a))
    ctx = SimpleNamespace(cfg=OnlineConfig(algo="dapo", kl_coef=0.0, max_new_tokens=3),
                          needs_old=True, needs_reference=False, kl_in="loss", kl_kind="k3",
                          kl_ctl=rl.FixedKLController(0.0), aggregation="token_mean")
    batch = {"mask": mask, "old": old, "adv": adv, "ref": torch.zeros(2, 3),
             "scores": torch.zeros(2), "sizes": [2]}
    out = algorithms.get_algorithm("dapo").loss(ctx, logps, None, batch)
    # token-level: the sum over every token of the batch / the number of tokens
    assert float(out.n_examples) == 5
    assert float(out.loss_sum.detach()) / float(out.n_examples) == pytest.approx(sum(hand) / 5,
                                                                            abs=1e-6)
    assert hand[0] == pytest.approx(-1.28) and hand[4] == pytest.approx(0.8)
    assert float(out.metrics_sum["clipfrac"]) == pytest.approx(2.0)  # 2 clipped tokens


def test_dapo_dynamic_sampling_filter_and_fill_by_hand():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.5, 0.5, 0.5], [2.0, 0.0, 1.0]])
    assert rl.varied_groups(scores).tolist() == [False, True, False, True]
    assert rl.fill_batch([False, True, False, True, True, True], 3) == [1, 3, 4]
    # too few kept: the earliest dropped fill the batch
    assert rl.fill_batch([False, True, False, False], 3) == [0, 1, 2]
    with pytest.raises(ValueError):
        rl.fill_batch([True], 2)


# ------------------------------------------------------------------------------ GSPO maths


def test_gspo_sequence_ratio_and_loss_by_hand():
    logps = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, 0.0], [-1.0, -1.0, -1.0]],
                         requires_grad=True)
    old = torch.tensor([[-1.1, -0.6, -2.1], [-0.2, -2.9, 5.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    seq_adv = torch.tensor([0.7, -1.2, 0.3])
    adv = seq_adv[:, None] * mask
    eps_low, eps_high = 0.05, 0.08
    loss, metrics = rl.gspo(logps, old, adv, mask, clip_eps=eps_low, clip_eps_high=eps_high)
    hand = []
    for i in range(3):
        n = int(mask[i].sum())
        s = math.exp(sum(float(logps[i, t].detach() - old[i, t]) for t in range(n)) / n)
        a = float(seq_adv[i])
        hand.append(-min(s * a, min(max(s, 1 - eps_low), 1 + eps_high) * a))
        # row 0: s = e^0.1 = 1.105 > 1.08 (clipped); row 1: s = e^-0.05 = 0.951 (A < 0: the
        # clipped 0.95 * A is larger, so the unclipped term is the min); row 2: s = 1
        assert loss[i, :n].tolist() == pytest.approx([hand[i]] * n, abs=1e-6)
        assert float(metrics["ratio"][i, 0]) == pytest.approx(s, abs=1e-6)
    assert float(loss.detach()[1, 2]) == 0.0
    assert metrics["clipfrac"][:, 0].tolist() == [1.0, 0.0, 0.0]
    # the algorithm's aggregation: the mean over sequences
    total, count = rl.aggregate(loss, mask, "seq_mean_token_mean")
    assert float(total.detach() / count) == pytest.approx(sum(hand) / 3, abs=1e-6)
    # gradient of an unclipped sequence: d/dlogp_t of -s*A = -s*A/|y| on each token
    total.backward()
    s1 = math.exp(-0.05)
    assert logps.grad[1, :2].tolist() == pytest.approx([1.2 * s1 / 2] * 2, abs=1e-6)
    assert logps.grad[0].tolist() == [0.0, 0.0, 0.0]  # clipped: no gradient


# ------------------------------------------------------------------------------ REINFORCE++


def test_reinforce_pp_returns_and_global_normalization_by_hand():
    scores = torch.tensor([1.0, -0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    c = 0.5
    returns = rl.reinforce_pp_returns(scores, kl, mask, kl_coef=c)
    # reward-to-go of r_t = -c * kl_t, plus the score on the last valid token
    hand = [[1.0 - c * (0.1 + 0.2 + 0.3), 1.0 - c * (0.2 + 0.3), 1.0 - c * 0.3],
            [-0.5 - c * (0.4 + 0.5), -0.5 - c * 0.5, 0.0]]
    torch.testing.assert_close(returns, torch.tensor(hand), atol=1e-6, rtol=0)
    vals = [v for row, m in zip(hand, mask.tolist(), strict=True)
            for v, k in zip(row, m, strict=True) if k]
    mu = sum(vals) / 5
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / 5)
    adv = rl.reinforce_pp(returns, mask)
    want = [[(v - mu) / (sd + 1e-8) if k else 0.0 for v, k in zip(row, m, strict=True)]
            for row, m in zip(hand, mask.tolist(), strict=True)]
    torch.testing.assert_close(adv, torch.tensor(want), atol=1e-6, rtol=0)
    # with the global moments given (another process's tokens included)
    assert rl.reinforce_pp(returns, mask, mean=0.25, std=2.0)[0, 0] == pytest.approx(
        (hand[0][0] - 0.25) / 2.0)


class _Ctx(SimpleNamespace):
    def global_mean(self, x):
        return float(x.double().mean())

    def global_totals(self, x):
        return float(x.sum()), float(x.numel())


def test_reinforce_pp_targets_normalize_over_the_whole_batch_not_per_group():
    cfg = OnlineConfig(algo="reinforce_pp", kl_coef=0.5)
    ctx = _Ctx(cfg=cfg, kl_ctl=rl.FixedKLController(0.5), kl_in="reward", kl_kind="k1",
               needs_reference=True, needs_old=True, aggregation="token_mean")
    old = [torch.tensor([[-1.0, -2.0], [-0.5, 0.0]]), torch.tensor([[-0.3, -0.7, -0.1]])]
    ref = [torch.tensor([[-1.2, -1.0], [-0.5, 0.0]]), torch.tensor([[-0.3, -0.2, -0.4]])]
    masks = [torch.tensor([[True, True], [True, False]]), torch.tensor([[True, True, True]])]
    scores = torch.tensor([1.0, 0.0, 2.0])
    data = algorithms.RolloutData(sizes=[2, 1], scores=scores, baseline=None, old=old, ref=ref,
                                  values=[None, None], masks=masks, seq_kl=torch.zeros(3))
    adv = algorithms.get_algorithm("reinforce_pp").targets(ctx, data)["adv"]
    # by hand: k1 = old - ref per token, returns-to-go with -0.5 * k1, then one mean/std
    rows = [(1.0, [0.2, -1.0]), (0.0, [0.0]), (2.0, [0.0, -0.5, 0.3])]
    rets = []
    for score, kls in rows:
        r = [-0.5 * k for k in kls]
        r[-1] += score
        rets.append([sum(r[t:]) for t in range(len(r))])
    flat_r = [v for row in rets for v in row]
    mu = sum(flat_r) / len(flat_r)
    sd = math.sqrt(sum((v - mu) ** 2 for v in flat_r) / len(flat_r))
    assert adv[0][0, :2].tolist() == pytest.approx([(v - mu) / sd for v in rets[0]], abs=1e-6)
    assert adv[0][1, 0] == pytest.approx((rets[1][0] - mu) / sd, abs=1e-6)
    assert float(adv[0][1, 1]) == 0.0
    assert adv[1][0].tolist() == pytest.approx([(v - mu) / sd for v in rets[2]], abs=1e-6)


# ------------------------------------------------------------------------------ dynamic sampling


def _reward_some_groups_equal(prompt: str, completion: str) -> float:
    """Varies within a group only for prompts holding the digit 3 (others: all 0)."""
    return float(len(completion.split())) if "3" in prompt.split(":")[-1] else 0.0


def test_dapo_dynamic_sampling_keeps_the_batch_size_constant(small, tmp_path, monkeypatch):
    """The batch is the first 8 groups with varied rewards in sampling order; the monitor sees
    the first sampling round (every group, before any is dropped)."""
    import prefkit.train.online as online

    model, tok, _ = small
    ps = prompts(40, seed=4)
    assert 0.2 < sum("3" in p.split(":")[-1] for p in ps) / len(ps) < 0.8
    seen, calls, monitored = [], [], []
    log_iteration = online._Online._log_iteration

    def spy_log(self, iteration, batch, *args):
        seen.append([g.prompt for g in batch])
        return log_iteration(self, iteration, batch, *args)

    monkeypatch.setattr(online._Online, "_log_iteration", spy_log)

    def monitor(ro):
        monitored.append([p for p in ro.prompts])
        return {"groups": torch.full((len(ro.prompts), 4), float(len(ro.prompts)))}

    class Spy(FunctionReward):
        def __call__(self, ps, cs, pids=None, cids=None):
            out = super().__call__(ps, cs)
            calls.append((list(ps), out.clone()))
            return out

    policy = copy.deepcopy(model)
    res = train_online(config(tmp_path, algo="dapo", overlong_buffer=0, kl_coef=0.0,
                              max_sampling_rounds=6),
                       reward=Spy(_reward_some_groups_equal), prompts=ps,
                       model=policy, tokenizer=tok, monitor=monitor)
    at = 0
    for it, batch in zip(res.iterations, seen, strict=True):
        rounds = it["dynamic_sampling/sampling_rounds"]
        mine = calls[at:at + rounds]
        at += rounds
        assert rounds >= 2 and all(len(p) == 8 for p, _ in mine)
        # by hand: the first 8 groups with varied rewards, in sampling order
        varied = [p for ps_, r in mine for p, row in zip(ps_, r, strict=True)
                  if row.max() > row.min()]
        assert len(varied) >= 8 and batch == varied[:8]  # the batch stays full
        assert it["groups"] == 8
        assert it["dynamic_sampling/groups_dropped"] == 8 * rounds - len(varied)
    assert at == len(calls)
    # the monitor: each iteration's first round, dropped groups included
    firsts, at = [], 0
    for it in res.iterations:
        firsts.append(calls[at][0])
        at += it["dynamic_sampling/sampling_rounds"]
    assert monitored == firsts and monitored != seen
    assert moved(policy, model) > 1e-4
    # the attempt cap: one round, a warning, and the dropped groups fill the batch
    seen.clear()
    with pytest.warns(UserWarning, match="dynamic sampling: .* of 8 groups with varied rewards "
                                         "after 1 rounds"):
        train_online(config(tmp_path / "capped", algo="dapo", overlong_buffer=0, kl_coef=0.0,
                            max_sampling_rounds=1, iterations=1),
                     reward=FunctionReward(_reward_some_groups_equal), prompts=ps,
                     model=copy.deepcopy(model), tokenizer=tok, monitor=monitor)
    assert len(seen[0]) == 8


def test_dapo_overlong_shaping_enters_the_shaped_reward(small, tmp_path):
    model, tok, _ = small
    captured = []

    class Spy(FunctionReward):
        def __call__(self, ps, cs, pids=None, cids=None):
            out = super().__call__(ps, cs)
            captured.append((out.clone(), [[len(c) for c in g] for g in cids]))
            return out

    res = train_online(config(tmp_path, algo="dapo", overlong_buffer=4, max_new_tokens=8,
                              kl_coef=0.0, dynamic_sampling=False, iterations=1),
                       reward=Spy(gold), prompts=prompts(16), model=copy.deepcopy(model),
                       tokenizer=tok)
    raw, lengths = captured[0]
    pen = [[0.0 if n <= 4 else (4 - n) / 4 for n in row] for row in lengths]
    shaped = raw + torch.tensor(pen)
    assert res.iterations[0]["reward"] == pytest.approx(float(raw.mean()), abs=1e-6)
    assert res.iterations[0]["shaped_reward"] == pytest.approx(float(shaped.mean()), abs=1e-6)
    assert any(p < 0 for row in pen for p in row)


# ------------------------------------------------------------------------------ ragged groups


class _RaggedGRPO(GRPO):
    """GRPO with 2, 3 or 4 samples per prompt."""

    seen: list = []

    def group_sizes(self, cfg, prompts, iteration):
        return [2 + (i + iteration) % 3 for i in range(len(prompts))]

    def sequence_advantages(self, ctx, scores, data):
        adv = super().sequence_advantages(ctx, scores, data)
        self.seen.append((scores.clone(), adv.clone(), list(data.sizes)))
        return adv


@pytest.fixture
def ragged():
    algorithms.register("test_ragged")(_RaggedGRPO)
    _RaggedGRPO.seen = []
    yield algorithms.get_algorithm("test_ragged")
    algorithms.unregister("test_ragged")


def test_groups_of_different_sizes_train(small, tmp_path, ragged):
    model, tok, _ = small
    ps = prompts(16)
    rollouts = []

    def monitor(ro):
        rollouts.append(ro)
        return {}

    policy = copy.deepcopy(model)
    res = train_online(config(tmp_path, algo="test_ragged", kl_coef=0.1, batch_size=3),
                       reward=FunctionReward(gold), prompts=ps, model=policy, tokenizer=tok,
                       monitor=monitor)
    assert res.fit.steps == 2 and moved(policy, model) > 1e-4
    assert all(torch.isfinite(p.detach()).all() for p in policy.parameters())
    for it, (scores, adv, sizes) in enumerate(ragged.seen):
        assert sizes == [2 + (i + it) % 3 for i in range(8)]
        at = 0
        for k in sizes:  # GRPO by hand on each group: (r - mean) / (unbiased std + 1e-6)
            r = scores[at:at + k].tolist()
            mu = sum(r) / k
            sd = math.sqrt(sum((x - mu) ** 2 for x in r) / (k - 1))
            assert adv[at:at + k].tolist() == pytest.approx([(x - mu) / (sd + 1e-6) for x in r],
                                                            abs=1e-5)
            at += k
        assert len(rollouts[it].completion_ids[0]) == sizes[0]
        assert rollouts[it].truncated.shape == (sum(sizes),)
    # the samples are the first k of the 4 a uniform run draws (same seed, same rows)
    uniform = []
    train_online(config(tmp_path / "uniform", algo="grpo", kl_coef=0.1, iterations=1,
                        learning_rate=0.0), reward=FunctionReward(gold), prompts=ps,
                 model=copy.deepcopy(model), tokenizer=tok,
                 monitor=lambda ro: uniform.append(ro) or {})
    for cs_ragged, cs_full in zip(rollouts[0].completion_ids, uniform[0].completion_ids,
                                  strict=True):
        assert cs_ragged == cs_full[:len(cs_ragged)]


# ------------------------------------------------------------------------------ reward status


class _StatusReward(FunctionReward):
    """A fake verifiable reward: 1 for a correct sort, 0 otherwise; status ok / wrong, and
    'unparsed' for an empty answer; counts of its last call."""

    def __init__(self):
        super().__init__(gold)
        self.calls = []

    def __call__(self, ps, cs, pids=None, cids=None):
        out = super().__call__(ps, cs)
        statuses = Counter()
        for row_c, row_s in zip(cs, out.tolist(), strict=True):
            for c, s in zip(row_c, row_s, strict=True):
                statuses["unparsed" if not c.strip() else ("ok" if s == 1.0 else "wrong")] += 1
        self.last = statuses
        self.calls.append(statuses)
        return out

    def status_counts(self):
        return dict(self.last)


def test_reward_status_counts_are_logged_every_iteration(small, tmp_path):
    model, tok, _ = small
    source = _StatusReward()
    res = train_online(config(tmp_path, algo="remax", kl_coef=0.0), reward=source,
                       prompts=prompts(16), model=copy.deepcopy(model), tokenizer=tok)
    assert len(source.calls) == 4  # per iteration: the samples and the greedy answers
    for it, (samples, greedy) in zip(res.iterations, zip(source.calls[::2], source.calls[1::2],
                                                         strict=True), strict=True):
        want = samples + greedy
        logged = {k.split("/", 1)[1]: v for k, v in it.items() if k.startswith("reward_status/")}
        assert logged == dict(want)
        assert sum(logged.values()) == 8 * 4 + 8
    lines = [json.loads(x) for x in (tmp_path / "run" / "rollouts.jsonl").read_text()
             .splitlines()]
    assert lines == res.iterations
    # a source without status_counts logs none
    plain = train_online(config(tmp_path / "plain", algo="grpo", iterations=1),
                         reward=FunctionReward(gold), prompts=prompts(16),
                         model=copy.deepcopy(model), tokenizer=tok)
    assert not any(k.startswith("reward_status/") for k in plain.iterations[0])


# ------------------------------------------------------------------------------ learning (slow)


@pytest.mark.slow
def test_the_new_algorithms_raise_gold_reward(tmp_path_factory):
    """DAPO, GSPO and REINFORCE++ on the lab sort task, as tests/test_train_online.py's
    learning test runs the others (10 iterations x 32 prompts x G=4; margin 0.05 over the SFT
    model's mean gold reward of 2 sampled answers to 128 held-out prompts)."""
    model, tok, train_prompts, evaluate, base = sort_sft_world(tmp_path_factory.mktemp("sft"))
    for algo in ("dapo", "gspo", "reinforce_pp"):
        cfg = config(tmp_path_factory.mktemp(algo), algo=algo, iterations=10,
                     prompts_per_iteration=32, max_new_tokens=32, learning_rate=1e-4,
                     logging_steps=1000)
        res = train_online(cfg, reward=FunctionReward(gold), prompts=train_prompts,
                           model=copy.deepcopy(model), tokenizer=tok)
        gain = evaluate(res.model) - base
        print(f"{algo}: gold {base:.3f} -> +{gain:.3f}")
        assert len(res.iterations) == 10 and gain > 0.05, (algo, gain, res.iterations[-1])
