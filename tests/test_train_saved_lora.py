"""Training from a saved LoRA policy (a folder of adapters that load_model loads on its base).

The saved adapters are merged into the base weights when the folder loads: the model computes
exactly what the saved policy computes and its reference ("auto") is that policy's starting
point. With --lora, NEW adapters train on top of the merged weights and the reference is the
model with them disabled -- still the saved policy, not the bare base (before: the saved
adapters were silently replaced by fresh ones, so training restarted from the base model, and
without --lora nothing was trainable at all)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from prefkit.lab.wordworld import build_word_world
from prefkit.models.load import LoraSettings, load_model, reference_context, save_model
from prefkit.models.packing import PromptGroup
from prefkit.train.preference import PreferenceConfig, save_policy, train_preference
from prefkit.train.reference import compute_logps

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 4, 3]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A word-world base model and a LoRA policy on it whose adapters matter."""
    root = tmp_path_factory.mktemp("saved_lora")
    with contextlib.redirect_stderr(io.StringIO()):
        world = build_word_world(root / "world", n_train=16, n_eval=2)
    policy, tok = load_model(world["model"], lora=LoraSettings(r=4, alpha=8), seed=0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    save_model(policy, tok, root / "policy")
    return world, root / "policy", _logits(policy)


def test_a_saved_lora_policy_loads_as_itself_and_trains_all_weights(saved):
    world, folder, want = saved
    model, _ = load_model(folder)
    assert torch.allclose(_logits(model), want, atol=1e-5)
    assert not any("lora_" in n for n, _ in model.named_parameters())  # merged, plain
    assert all(p.requires_grad for p in model.parameters())  # full fine-tuning trains them
    with reference_context(model):  # nothing to disable: the reference is the policy itself
        assert torch.allclose(_logits(model), want, atol=1e-5)
    base, _ = load_model(world["model"])
    assert not torch.allclose(_logits(base), want, atol=1e-3)


def test_new_adapters_on_a_saved_lora_policy_start_from_it(saved):
    _, folder, want = saved
    model, _ = load_model(folder, lora=LoraSettings(r=4, alpha=8), seed=1)
    assert torch.allclose(_logits(model), want, atol=1e-5)  # new adapters start at zero
    with reference_context(model):  # adapters off: the saved policy, not the bare base
        assert torch.allclose(_logits(model), want, atol=1e-5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("lora", [False, True])
def test_preference_training_from_a_saved_lora_policy(saved, tmp_path, lora):
    """The reference log-probs are the saved policy's; the run trains and saves a policy that
    loads back as the trained model."""
    world, folder, _ = saved
    cfg = PreferenceConfig(model=str(folder), data=world["pairs"], output_dir=str(tmp_path / "r"),
                           max_steps=3, batch_size=8, learning_rate=1e-2,
                           lr_scheduler="constant", save_steps=0, save_final=False,
                           progress=False, reference_cache="none", shuffle=False, lora=lora,
                           lora_r=4, lora_alpha=8)
    result = train_preference(cfg)
    start, tok = load_model(folder)
    groups = [PromptGroup(e.prompt_ids, e.response_ids) for e in _examples(world, tok)]
    expected = compute_logps(start, groups, pad_id=tok.pad_token_id or 0)
    assert torch.allclose(result.reference_sums, expected[:len(result.reference_sums)],
                          atol=1e-4)
    trained = result.model.eval()
    assert not torch.allclose(_logits(trained), _logits(start), atol=1e-4)  # it trained
    save_policy(result, tmp_path / "again")
    again, _ = load_model(tmp_path / "again")
    assert torch.allclose(_logits(again), _logits(trained), atol=1e-5)


def _examples(world, tok):
    from prefkit.data.io import read_records
    from prefkit.train.preference_data import records_to_examples

    return records_to_examples(read_records(world["pairs"]), tok)
