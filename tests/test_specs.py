"""prefkit.specs: the spec strings the CLI takes (``lab:...``, ``gold:...``, ``hf:lab:...``)
resolve to the same objects as before they moved out of judges / rewards / train, and the lower
layers refuse a lab spec with a message naming the function that resolves it."""

from __future__ import annotations

import random

import pytest
import torch

from prefkit.judges.jury import Jury
from prefkit.judges.local import TransformersJudge
from prefkit.judges.reward import RewardJudge
from prefkit.lab.simulated_judge import LAB_JUDGE_TEMPERATURE, SimulatedJudge
from prefkit.lab.tasks import get_task
from prefkit.specs import judge_from_spec, resolve_model, resolve_prompts, reward_from_spec
from prefkit.train import online
from prefkit.train.online import OnlineConfig


def test_lab_prompts_are_the_tasks_samples_under_the_seed(tmp_path):
    task = get_task("sort")
    rng = random.Random(3)
    assert resolve_prompts("lab:sort:5", seed=3) == [task.sample_prompt(rng) for _ in range(5)]
    assert len(resolve_prompts("lab:sort")) == 256
    with pytest.raises(ValueError, match=r"N in lab:TASK:N must be a positive integer, got '0'"):
        resolve_prompts("lab:sort:0")
    text = tmp_path / "prompts.txt"
    text.write_text("sort: 2 1\nsort: 3 1 2\n")
    assert resolve_prompts(str(text)) == online.read_prompts(str(text)) == ["sort: 2 1",
                                                                            "sort: 3 1 2"]


def test_the_train_and_judges_layers_name_the_spec_function_for_a_lab_spec():
    with pytest.raises(ValueError, match=r"prefkit\.specs\.resolve_prompts"):
        online.resolve_prompts("lab:sort:4")
    with pytest.raises(ValueError, match=r"prefkit\.specs\.resolve_model"):
        online.resolve_model(OnlineConfig(model="lab:sort"))
    with pytest.raises(ValueError, match=r"judge_from_spec\('hf:lab:sort'\)"):
        TransformersJudge.from_pretrained("lab:sort")


def test_lab_judges_from_specs():
    positional = judge_from_spec("lab:sort:positional")
    assert isinstance(positional, SimulatedJudge) and positional.name == "positional"
    assert positional.temperature == LAB_JUDGE_TEMPERATURE == 0.1
    assert positional.first_preference == 0.65
    jury = judge_from_spec("lab:sort:jury")
    assert isinstance(jury, Jury)
    assert [j.name for j in jury.members] == ["fair", "positional", "verbose", "self_preferring"]
    assert jury.aggregate == "majority"
    with pytest.raises(ValueError, match=r"NAME one of fair, positional, verbose, "
                                         r"self_preferring or jury"):
        judge_from_spec("lab:sort:nobody")


def test_gold_reward_spec_is_the_tasks_gold_reward():
    task = get_task("sort")
    prompts = ["sort: 3 1 2", "sort: 5 4"]
    completions = [["1 2 3", "3 2 1"], ["4 5", "4"]]
    source = reward_from_spec("gold:sort")
    expected = torch.tensor([[task.gold_reward(p, c) for c in cs]
                             for p, cs in zip(prompts, completions, strict=True)])
    assert torch.allclose(source(prompts, completions), expected, atol=1e-6)
    assert isinstance(judge_from_spec("gold:sort"), RewardJudge)
    with pytest.raises(ValueError, match=r"unknown kind 'lab'"):
        reward_from_spec("lab:sort")


def test_hf_lab_judge_and_lab_policy_use_the_labs_model(monkeypatch):
    """``hf:lab:TASK`` and ``--model lab:TASK`` both load :func:`prefkit.specs.models.lab_model`
    (stubbed here: building the lab's SFT model takes a minute)."""
    import prefkit.specs.models as spec_models
    from prefkit.models.load import tiny_llama_config
    from prefkit.models.tokenizer import word_level_tokenizer

    task = get_task("sort")
    tok = word_level_tokenizer(task.vocabulary(), add_bos=True)
    cfg = tiny_llama_config(len(tok), hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg)
    calls = []

    def fake_lab_model(name, *, seed=0):
        calls.append((name, seed))
        return model, tok

    monkeypatch.setattr(spec_models, "lab_model", fake_lab_model)
    judge = judge_from_spec("hf:lab:sort")
    assert isinstance(judge, TransformersJudge) and judge.name == "hf:lab:sort"
    assert judge.server.model is model and not model.training
    policy, tokenizer = resolve_model(OnlineConfig(model="lab:sort", seed=7))
    assert policy is model and tokenizer is tok
    assert calls == [("sort", 0), ("sort", 7)]
