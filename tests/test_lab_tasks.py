"""Lab tasks (gold rewards, demonstrations) and the cached SFT base model."""

from __future__ import annotations

import random

import pytest
import torch

from prefkit.lab import base_model
from prefkit.lab.base_model import BaseModelSettings, build_base_model, evaluate_policy
from prefkit.lab.tasks import (
    TASKS,
    AttributeTask,
    ReviewTask,
    SortTask,
    Task,
    get_task,
    mean_gold_reward,
)

# ------------------------------------------------------------------------------------ sort


def test_sort_gold_on_hand_made_answers():
    task, prompt = SortTask(), "sort: 7 3 9 1"
    perfect = task.gold_reward(prompt, "1 3 7 9")
    one_filler = task.gold_reward(prompt, "1 3 7 9 ok")
    swapped = task.gold_reward(prompt, "1 7 3 9")
    very_verbose = task.gold_reward(prompt, "1 3 7 9 ok so well done")
    assert perfect == pytest.approx(1.0)
    assert one_filler == pytest.approx(0.85)
    assert swapped == pytest.approx(0.5)
    assert very_verbose == pytest.approx(0.4)
    assert perfect > one_filler > swapped > very_verbose
    assert task.gold_reward(prompt, "1 3") == pytest.approx(0.5)  # missing numbers count wrong
    assert task.gold_reward(prompt, "") == 0.0
    assert task.optimum(prompt) == 1.0


def test_sort_prompts_and_demonstrations():
    task = SortTask(min_len=3, max_len=5)
    rng = random.Random(0)
    for _ in range(50):
        nums = task.sample_prompt(rng).split()[1:]
        assert 3 <= len(nums) <= 5 and len(set(nums)) == len(nums)
    assert task.demonstration("sort: 7 3 9 1", rng, 1.0) == "1 3 7 9"
    with pytest.raises(ValueError):
        task.gold_reward("review: phone", "1")
    with pytest.raises(ValueError):
        task.demonstration("sort: 1 2", rng, 1.5)


# ---------------------------------------------------------------------------------- review


def test_review_lexicon_and_length_tradeoff():
    task, prompt = ReviewTask(), "review: phone"
    good = task.gold_reward(prompt, "phone superb great")
    bad = task.gold_reward(prompt, "phone awful bad")
    neutral = task.gold_reward(prompt, "phone it was")
    assert good > neutral > bad
    # mean lexicon score + 0.05 / word up to 8 words + 0.2 for naming the item
    assert good == pytest.approx((1.0 + 0.8) / 3 + 0.15 + 0.2)
    best = "phone " + " ".join(["superb"] * 7)
    short = "phone superb superb"
    long = "phone " + " ".join(["superb"] * 13)
    assert task.gold_reward(prompt, best) == pytest.approx(task.optimum(prompt))
    assert task.optimum(prompt) == pytest.approx(7 / 8 + 0.4 + 0.2)
    assert task.gold_reward(prompt, best) > task.gold_reward(prompt, short)
    assert task.gold_reward(prompt, best) > task.gold_reward(prompt, long)
    # same words without the item lose the mention bonus
    assert task.gold_reward(prompt, "superb " * 7) < task.gold_reward(prompt, best)
    assert task.attributes(prompt, "superb awful")["sentiment"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------ attributes


def test_attribute_task_scores():
    task, prompt = AttributeTask(), "ask: cooking"
    best = task.attributes(prompt, "salt heat knife because")
    assert best == {"helpfulness": 4.0, "correctness": 4.0, "verbosity": pytest.approx(4 / 3)}
    assert task.gold_reward(prompt, "salt heat knife because") == pytest.approx(1.0)
    assert task.optimum(prompt) == pytest.approx(1.0)
    wrong = task.attributes(prompt, "salt map")  # one right fact, one of another topic
    assert wrong["correctness"] == pytest.approx(2.0) and wrong["helpfulness"] == 1.0
    assert task.attributes(prompt, "well um")["correctness"] == 2.0  # no claim at all
    padded = "salt heat knife because " + " ".join(["well"] * 8)  # 12 words: verbosity 4
    assert task.attributes(prompt, padded)["verbosity"] == 4.0
    assert task.gold_reward(prompt, padded) == pytest.approx(0.5)


# -------------------------------------------------------------------------------- all tasks


@pytest.mark.parametrize("name", list(TASKS))
def test_demonstration_gold_increases_with_quality(name):
    task = get_task(name)
    rng = random.Random(1)
    prompts = [task.sample_prompt(rng) for _ in range(300)]
    means = []
    for q in (0.0, 0.3, 0.6, 0.8, 1.0):
        demo_rng = random.Random(2)
        demos = [[task.demonstration(p, demo_rng, q)] for p in prompts]
        means.append(mean_gold_reward(task, prompts, demos))
    assert all(a < b - 0.05 for a, b in zip(means, means[1:], strict=False)), means
    assert means[-1] == pytest.approx(sum(task.optimum(p) for p in prompts) / len(prompts))


@pytest.mark.parametrize("name", list(TASKS))
def test_vocabulary_covers_prompts_and_demonstrations_deterministically(name):
    task = get_task(name)
    vocab = set(task.vocabulary())
    assert len(vocab) == len(task.vocabulary())
    rng = random.Random(3)
    for _ in range(200):
        prompt = task.sample_prompt(rng)
        for q in (0.0, 0.5, 1.0):
            demo = task.demonstration(prompt, rng, q)
            assert set(prompt.split()) <= vocab and set(demo.split()) <= vocab
            assert task.gold_reward(prompt, demo) == task.gold_reward(prompt, demo)
    p = task.sample_prompt(random.Random(9))
    assert task.demonstration(p, random.Random(4), 0.5) == task.demonstration(
        p, random.Random(4), 0.5
    )


def test_registry_and_config():
    task = get_task("sort", max_len=4, verbosity_penalty=0.2)
    assert isinstance(task, SortTask) and isinstance(task, Task)
    assert task.config()["max_len"] == 4 and task.config()["verbosity_penalty"] == 0.2
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
    with pytest.raises(ValueError):
        mean_gold_reward(task, ["sort: 1 2"], [])


# ------------------------------------------------------------------------------ base model

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, sft_examples=64,
            steps=3, batch_size=16, row_length=128)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_base_model_cache_hit_and_miss(tmp_path, monkeypatch):
    task = SortTask(max_len=4)
    model, tok, info = build_base_model(task, tmp_path, **TINY)
    assert not info["cached"] and info["final_nll"] is not None
    trained: list[int] = []
    monkeypatch.setattr(base_model, "_train", lambda *a, **k: trained.append(1) or {})
    again, tok2, info2 = build_base_model(task, tmp_path, settings=BaseModelSettings(**TINY))
    assert trained == []  # a cache hit trains nothing
    assert info2["cached"] and info2["path"] == info["path"]
    assert _same_weights(model, again)
    assert tok2.get_vocab() == tok.get_vocab()
    # a changed SFT setting, task setting or seed trains a new model in a new folder
    _, _, other = build_base_model(task, tmp_path, **{**TINY, "seed": 1})
    _, _, other_task = build_base_model(SortTask(max_len=5), tmp_path, **TINY)
    assert not other["cached"] and not other_task["cached"] and trained == [1, 1]
    assert len({info["path"], other["path"], other_task["path"]}) == 3


def test_base_model_key_follows_the_code(tmp_path, monkeypatch):
    """A model cached by other code is never reused: the key covers the prefkit version and the
    source of every prefkit module the builder imports (not of the modules it does not)."""
    import shutil

    import prefkit
    from prefkit.lab import code_key

    task, settings = SortTask(max_len=4), BaseModelSettings(**TINY)
    key = base_model._cache_key(task, settings)
    assert base_model._cache_key(task, settings) == key
    assert {"prefkit.train.loop", "prefkit.models.logprobs", "prefkit.models.prune",
            "prefkit.lab.tasks", "prefkit.losses.sft"} <= set(
                code_key.imported_modules("prefkit.lab.base_model"))
    with monkeypatch.context() as m:
        m.setattr(prefkit, "__version__", "99.0")
        assert base_model._cache_key(task, settings) != key
    # a copy of the package to edit: a numerics change in the training loop changes the key
    copy = tmp_path / "prefkit"
    shutil.copytree(code_key._ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_key, "_ROOT", copy)
    assert base_model._cache_key(task, settings) == key  # same sources, same key
    (copy / "rank" / "bt.py").write_text("# not imported by the builder\n")
    code_key.code_hash.cache_clear()
    assert base_model._cache_key(task, settings) == key
    _, _, before = build_base_model(task, tmp_path / "cache", settings=settings)
    loop = copy / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\n# a numerics change\n")
    assert base_model._cache_key(task, settings) == key  # a running process keeps its hash
    code_key.code_hash.cache_clear()  # ... a new process reads the edited source
    assert base_model._cache_key(task, settings) != key
    _, _, after = build_base_model(task, tmp_path / "cache", settings=settings)
    assert not after["cached"] and after["path"] != before["path"]
    assert after["code"]["source"] != before["code"]["source"]


@pytest.mark.slow
def test_sft_raises_gold_reward_and_leaves_headroom(tmp_path):
    """Measured (sort, 3-5 numbers, defaults): untrained -0.72, SFT 0.61 (sampled, T=1),
    optimum 1.0; SFT takes ~6 s on the lab CPU."""
    task = SortTask(min_len=3, max_len=5)
    untrained, tok0, _ = build_base_model(task, tmp_path, steps=0)
    model, tok, info = build_base_model(task, tmp_path)
    assert info["n_params"] > 400_000
    before = evaluate_policy(untrained, tok0, task, n_prompts=96, k=4)
    after = evaluate_policy(model, tok, task, n_prompts=96, k=4)
    assert before["gold"] < -0.3
    assert after["gold"] > 0.45  # well above the untrained model ...
    assert after["gold"] < after["optimum"] - 0.2  # ... with headroom below the optimum (1.0)
    greedy = evaluate_policy(model, tok, task, n_prompts=96, k=1, temperature=0)
    assert greedy["gold"] > after["gold"]  # the mode is better than the average sample
