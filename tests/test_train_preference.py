"""Direct preference training end to end on a tiny Llama with a word-level tokenizer:
learning, every loss moving its own objective the right way, the reference cache, LoRA as its
own reference, accumulation invariance, truncation and bad input."""

import json
import random
import warnings

import pytest
import torch
import yaml
from typer.testing import CliRunner

from prefkit import losses
from prefkit.cli import app
from prefkit.models.tokenizer import word_level_tokenizer
from prefkit.train.preference import PreferenceConfig, train_preference

GOOD = [f"a{i}" for i in range(12)]
BAD = [f"b{i}" for i in range(12)]
PROMPT = [f"p{i}" for i in range(12)]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _tokenizer(folder):
    tokenizer = word_level_tokenizer(GOOD + BAD + PROMPT)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _model(folder, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(SPECIALS) + 36, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)


def _words(rng, pool, n):
    return " ".join(rng.choice(pool) for _ in range(n))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pref")
    _tokenizer(folder / "model")
    _model(folder / "model")
    rng = random.Random(0)
    pairs, rankings, binary = [], [], []
    for i in range(32):
        prompt = _words(rng, PROMPT, 3)
        good, bad = " " + _words(rng, GOOD, 4), " " + _words(rng, BAD, 4)
        pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
        mixed = " " + " ".join(rng.choice(GOOD if j % 2 else BAD) for j in range(4))
        rankings.append({"prompt": prompt, "responses": [bad, good, mixed],
                         "ranking": [1, 2, 0]})
        binary.append({"prompt": prompt, "completion": good if i % 2 else bad,
                       "label": bool(i % 2)})
    return {"model": str(folder / "model"), "folder": folder,
            "pairs": _write(folder / "pairs.jsonl", pairs),
            "pairs8": _write(folder / "pairs8.jsonl", pairs[:8]),
            "rankings": _write(folder / "rankings.jsonl", rankings[:8]),
            "binary": _write(folder / "binary.jsonl", binary[:8])}


def _config(world, tmp_path, **kw):
    base = dict(model=world["model"], data=world["pairs8"], output_dir=str(tmp_path / "out"),
                max_steps=10, batch_size=8, learning_rate=3e-3, lr_scheduler="constant",
                logging_steps=1, save_steps=0, save_final=False, progress=False,
                reference_cache=str(tmp_path / "cache"), shuffle=False, seed=0)
    base["overwrite"] = "resume_from" not in kw  # scratch folders, reused within a test
    base.update(kw)
    return PreferenceConfig(**base)


def _train_records(result):
    return [h for h in result.fit.history if "loss" in h and not any(
        k.startswith("eval/") for k in h)]


def test_dpo_learns_the_preference(world, tmp_path):
    cfg = _config(world, tmp_path, data=world["pairs"], eval_data=world["pairs"], max_steps=60,
                  batch_size=8, shuffle=True, learning_rate=3e-3)
    result = train_preference(cfg)
    records = _train_records(result)
    assert result.fit.metrics["eval/rewards/accuracies"] > 0.9
    assert records[-1]["loss"] < 0.45 < records[0]["loss"]
    assert result.reference["groups"] == 32


DATA_FOR_KIND = {"pairwise": "pairs8", "listwise": "rankings", "unpaired": "binary",
                 "sft": "pairs8"}


POLICY_LOSSES = sorted(n for n, s in losses.available().items() if s.kind != "reward")


@pytest.mark.parametrize("name", POLICY_LOSSES + ["dpo+0.2*sft"])
def test_every_loss_lowers_itself_and_moves_the_margin(world, tmp_path, name):
    kind = losses.build_loss(name).loss_spec.kind if "+" in name else losses.spec(name).kind
    cfg = _config(world, tmp_path, data=world[DATA_FOR_KIND[kind]], loss=name, max_steps=8)
    records = _train_records(train_preference(cfg))
    first, last = records[0], records[-1]
    assert last["loss"] < first["loss"] - 1e-4, (first["loss"], last["loss"])
    if kind == "sft":
        assert last["logps"] > first["logps"] if "logps" in last else True
        return
    if kind == "unpaired":
        # desirable completions gain on undesirable ones (mean reward per class)
        gap = lambda r: r["rewards/chosen"] - r["rewards/rejected"]  # noqa: E731
        assert gap(last) > gap(first)
        return
    key = "rewards/margins"
    if key not in first or first[key] == last[key] == 0.0:
        key = None
    if key:
        assert last[key] > first[key]
    else:
        assert (last["logps/chosen"] - last["logps/rejected"]
                > first["logps/chosen"] - first["logps/rejected"])


def test_reference_cache_is_reused_and_keyed_by_content(world, tmp_path):
    one = train_preference(_config(world, tmp_path, max_steps=1))
    two = train_preference(_config(world, tmp_path, max_steps=1, loss="ipo"))
    assert not one.reference["from_cache"] and two.reference["from_cache"]
    assert one.reference["key"] == two.reference["key"]
    assert torch.equal(one.reference_sums, two.reference_sums)
    other = train_preference(_config(world, tmp_path, max_steps=1, data=world["pairs"]))
    assert other.reference["key"] != one.reference["key"]
    # the reference is the policy before training: sums equal a fresh model's log-probs
    from prefkit.data.io import read_records
    from prefkit.models.load import load_model
    from prefkit.models.packing import PromptGroup
    from prefkit.train.preference_data import records_to_examples
    from prefkit.train.reference import compute_logps

    model, tok = load_model(world["model"])
    groups = [PromptGroup(e.prompt_ids, e.response_ids)
              for e in records_to_examples(read_records(world["pairs8"]), tok)]
    fresh = compute_logps(model, groups, pad_id=0)
    assert torch.allclose(fresh, one.reference_sums, atol=1e-5)


def test_reference_free_loss_computes_no_reference(world, tmp_path):
    result = train_preference(_config(world, tmp_path, max_steps=1, loss="simpo"))
    assert result.reference is None and result.reference_sums is None


def test_lora_reference_is_the_base_model(world, tmp_path):
    cfg = _config(world, tmp_path, max_steps=5, lora=True, lora_r=4, lora_alpha=8,
                  learning_rate=1e-2, reference_cache="none")
    result = train_preference(cfg)
    full = train_preference(_config(world, tmp_path, max_steps=1, reference_cache="none"))
    assert torch.allclose(result.reference_sums, full.reference_sums, atol=1e-5)
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    records = _train_records(result)
    assert records[-1]["rewards/margins"] > records[0]["rewards/margins"]


def test_accumulation_gives_the_same_parameters(world, tmp_path):
    a = train_preference(_config(world, tmp_path / "a", max_steps=3, batch_size=8))
    b = train_preference(_config(world, tmp_path / "b", max_steps=3, batch_size=4,
                                 gradient_accumulation_steps=2))
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(),
                                 strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def test_truncation_skips_and_names_records_without_a_completion(world, tmp_path):
    rows = [json.loads(line) for line in open(world["pairs8"])]
    rows[3]["prompt"] = " ".join(["p1"] * 30)
    data = _write(tmp_path / "long.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_preference(_config(world, tmp_path, data=data, max_steps=1,
                                          max_length=12))
    assert result.truncation["skipped"] == 1
    assert result.truncation["skipped_records"][0]["index"] == 3
    assert any("long.jsonl" in str(w.message) for w in caught)
    kept = train_preference(_config(world, tmp_path, data=data, max_steps=1, max_length=12,
                                    max_prompt_length=4))
    assert kept.truncation["skipped"] == 0 and kept.data["train"] == 8


def test_bad_input_is_named(world, tmp_path):
    with pytest.raises(ValueError, match="listwise"):
        train_preference(_config(world, tmp_path, data=world["rankings"], loss="dpo"))
    with pytest.raises(ValueError, match="known losses"):
        train_preference(_config(world, tmp_path, loss="dpoo"))
    rows = [json.loads(line) for line in open(world["pairs8"])]
    ties = [{"prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"],
             "outcome": "tie"} for r in rows[:2]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"kind": "comparison", **t}) + "\n" for t in ties)
                    + "".join(json.dumps({"kind": "comparison", "prompt": r["prompt"],
                                          "response_a": r["chosen"],
                                          "response_b": r["rejected"], "outcome": "a"}) + "\n"
                              for r in rows))
    result = train_preference(_config(world, tmp_path, data=str(data), max_steps=1))
    assert result.data["skipped"] == {"comparison_tie": 2} and result.data["train"] == 8


def test_cli_with_yaml_config(world, tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": world["model"], "data": world["pairs8"],
                                   "loss": "dpo+0.2*sft", "max_steps": 2, "batch_size": 4,
                                   "reference_cache": "none", "save_final": False,
                                   "output_dir": str(tmp_path / "o")}))
    result = runner.invoke(app, ["train", "preference", "--config", str(cfg), "--beta", "0.2",
                                 "--save-model", str(tmp_path / "policy"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["steps"] == 2 and out["loss"] == "dpo(beta=0.2)+0.2*sft"
    assert "sft/loss" in out["metrics"] and (tmp_path / "policy" / "config.json").exists()
    cfg.write_text(yaml.safe_dump({"model": world["model"], "data": world["pairs8"],
                                   "bogus_key": 1}))
    bad = runner.invoke(app, ["train", "preference", "--config", str(cfg), "--json"])
    assert bad.exit_code == 2
    message = json.loads(bad.stdout)["error"]
    assert "bogus_key" in message and "run.yaml" in message


def test_separate_reference_model(world, tmp_path):
    other = world["folder"] / "ref_model"
    if not other.exists():
        _tokenizer(other)
        _model(other, seed=1)
    result = train_preference(_config(world, tmp_path, max_steps=1, reference=str(other)))
    same = train_preference(_config(world, tmp_path, max_steps=1))
    assert not torch.allclose(result.reference_sums, same.reference_sums, atol=1e-2)
    from prefkit.data.io import read_records
    from prefkit.models.load import load_model
    from prefkit.models.packing import PromptGroup
    from prefkit.train.preference_data import records_to_examples
    from prefkit.train.reference import compute_logps

    model, tok = load_model(str(other))
    groups = [PromptGroup(e.prompt_ids, e.response_ids)
              for e in records_to_examples(read_records(world["pairs8"]), tok)]
    assert torch.allclose(compute_logps(model, groups, pad_id=0), result.reference_sums,
                          atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        train_preference(_config(world, tmp_path, reference=str(tmp_path / "no_such_model")))


def test_resume_continues_exactly(world, tmp_path):
    full = train_preference(_config(world, tmp_path / "full", data=world["pairs"], max_steps=6,
                                    batch_size=4, shuffle=True))
    _ = train_preference(_config(world, tmp_path / "cut", data=world["pairs"], max_steps=3,
                                 batch_size=4, shuffle=True, save_steps=3))
    resumed = train_preference(_config(world, tmp_path / "cut", data=world["pairs"],
                                       max_steps=6, batch_size=4, shuffle=True,
                                       resume_from="latest"))
    tail = [h["loss"] for h in _train_records(full) if h["step"] > 3]
    assert [h["step"] for h in _train_records(resumed)] == [4, 5, 6]
    assert [h["loss"] for h in _train_records(resumed)] == pytest.approx(tail, abs=1e-6)
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("loss,data", [("dpo", "pairs"), ("kto", "binary")])
def test_two_processes_train_like_one(world, tmp_path, loss, data):
    """`prefkit train preference` under torchrun (2 CPU processes, gloo, batch 4 each) ends
    with the parameters of one process with batch 8 (KTO: its batch KL estimate is gathered
    over the processes)."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    common = ["train", "preference", "--model", world["model"], "--data", world[data],
              "--loss", loss, "--max-steps", "3", "--learning-rate", "3e-3",
              "--set", "lr_scheduler=constant", "--set", "save_final=false",
              "--set", f"reference_cache={tmp_path / 'cache'}", "--json"]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "prefkit.cli", *common, "--batch-size", "4", "--output-dir",
         str(tmp_path / "two"), "--save-model", str(tmp_path / "two_model")],
        env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run(
        [sys.executable, "-m", "prefkit.cli", *common, "--batch-size", "8", "--output-dir",
         str(tmp_path / "one"), "--save-model", str(tmp_path / "one_model")],
        env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one_model")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two_model")
    start = AutoModelForCausalLM.from_pretrained(world["model"])
    moved = False
    for (name, p), q, s in zip(a.named_parameters(), b.parameters(), start.parameters(),
                               strict=True):
        assert torch.allclose(p, q, atol=1e-5), name
        moved |= not torch.allclose(p, s, atol=1e-4)
    assert moved


def test_reward_objectives_point_to_the_reward_trainer(world, tmp_path):
    with pytest.raises(ValueError, match="prefkit rm train"):
        train_preference(_config(world, tmp_path, loss="bt"))
