"""Generative reward model (prefkit.rewards.generative): loss, calibration, learning, saving."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefkit.lab.tasks import get_task
from prefkit.models.load import tiny_llama_config
from prefkit.models.tokenizer import word_level_tokenizer
from prefkit.rewards.generative import (
    GenerativeRewardModel,
    balanced_preference,
    verdict_logits,
    verdict_loss,
)
from prefkit.train.genrm import GenRMConfig, train_genrm


def _tiny(hidden: int = 32, layers: int = 1, seed: int = 0):
    tok = word_level_tokenizer(get_task("sort").vocabulary(), add_bos=True)
    cfg = tiny_llama_config(len(tok), hidden_size=hidden, num_layers=layers, num_heads=2,
                            intermediate_size=2 * hidden, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa"), tok


def test_verdict_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    loss, m = verdict_loss(logits, torch.tensor([2, 2]), a_id=1, b_id=2)
    z = math.log(1 + math.e + math.e ** 2)
    assert loss[0].item() == pytest.approx(z - 2.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(math.log(1 + math.e ** 3 + math.e) - 1.0, abs=1e-6)
    assert m["accuracy"].tolist() == [1.0, 0.0]  # row 2 puts more mass on A, target B
    assert m["verdict_mass"][0].item() == pytest.approx((math.e + math.e ** 2) / math.exp(z),
                                                        abs=1e-6)


def test_loss_masks_everything_but_the_verdict_token():
    model, tok = _tiny()
    genrm = GenerativeRewardModel(model, tok)
    assert tok.convert_ids_to_tokens([genrm.a_id, genrm.b_id]) == ["A", "B"]
    ids = genrm.encode("sort: 3 1 2", " 1 2 3", " 3 1")
    assert tok.unk_token_id not in ids
    full = torch.tensor([[*ids, genrm.b_id]])
    labels = torch.full_like(full, -100)
    labels[0, -1] = genrm.b_id  # only the verdict is supervised
    hf = model(input_ids=full, labels=labels).loss
    by_hand = -torch.log_softmax(model(input_ids=full).logits[0, -2], -1)[genrm.b_id]
    logits = verdict_logits(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    ours, _ = verdict_loss(logits, torch.tensor([genrm.b_id]), a_id=genrm.a_id, b_id=genrm.b_id)
    assert ours[0].item() == pytest.approx(hf.item(), abs=1e-5)
    assert ours[0].item() == pytest.approx(by_hand.item(), abs=1e-5)
    # changing the (masked) response tokens changes the loss only through the context
    assert ours[0].item() > 0


def test_left_padding_changes_nothing():
    model, tok = _tiny()
    genrm = GenerativeRewardModel(model, tok)
    rows = [("sort: 3 1 2", " 1 2 3", " 3 1"), ("sort: 9 8 7 6 5", " 5 6 7 8 9", " 9"),
            ("sort: 4", " 4", " 4 4")]
    batched = genrm.first_wins(*zip(*rows, strict=True), batch_size=3)
    single = torch.cat([genrm.first_wins([p], [a], [b]) for p, a, b in rows])
    assert torch.allclose(batched, single, atol=1e-5)


def test_balanced_position_calibration():
    assert balanced_preference(torch.tensor(0.9), torch.tensor(0.7)).item() == pytest.approx(0.6)
    model, tok = _tiny(seed=3)
    genrm = GenerativeRewardModel(model, tok)
    with torch.no_grad():  # distinct verdict rows, so the two orders differ
        model.get_output_embeddings().weight[genrm.a_id].normal_()
    p, a, b = "sort: 5 2 8", " 2 5 8", " 8 5"
    q_ab, q_ba = genrm.first_wins([p, p], [a, b], [b, a]).tolist()
    assert q_ab != pytest.approx(1 - q_ba)  # a position bias exists
    assert genrm.preference(p, a, b) == pytest.approx((q_ab + 1 - q_ba) / 2, abs=1e-6)
    assert genrm.preference(p, a, b) + genrm.preference(p, b, a) == pytest.approx(1.0, abs=1e-6)


def _length_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """The full sorted answer beats a sorted answer with numbers missing."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
        good = sorted(nums)
        bad = sorted(rng.sample(nums, rng.randint(1, len(nums) - 2)))
        out.append((f"sort: {' '.join(map(str, nums))}", " " + " ".join(map(str, good)),
                    " " + " ".join(map(str, bad))))
    return out


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
def test_learns_a_simple_preference_and_round_trips(tmp_path):
    model, tok = _tiny(hidden=64, layers=2)
    config = GenRMConfig(output_dir=str(tmp_path / "run"), max_steps=150, batch_size=32,
                         learning_rate=3e-3, lr_scheduler="constant", save_steps=0,
                         save_final=False, progress=False, logging_steps=50, cpu=True)
    result = train_genrm(config, pairs=_length_pairs(600, 0), model=model, tokenizer=tok)
    genrm = result.genrm
    assert result.data["examples"] == 1200
    held = _length_pairs(200, 1)
    acc = genrm.accuracy(held)
    assert acc > 0.8, acc
    genrm.save_pretrained(tmp_path / "genrm")
    loaded = GenerativeRewardModel.from_pretrained(tmp_path / "genrm")
    p = [x for x, _, _ in held[:20]]
    c = [y for _, y, _ in held[:20]]
    r = [z for _, _, z in held[:20]]
    assert torch.allclose(loaded.preferences(p, c, r), genrm.preferences(p, c, r), atol=1e-5)


@pytest.mark.slow
def test_lab_genrm_within_3_points_of_bt(tmp_path):
    """Done-when of issue 14 item 7 on the lab's sort data (seed 0: 435 training pairs, 204
    held-out gold-ordered pairs; measured GenRM 0.804 vs BT 0.784). ~3 min on 2 CPU cores."""
    from prefkit.lab.pipeline import run_lab
    from prefkit.report.html import lab_report_html

    res = run_lab(workdir=str(tmp_path / "lab"), methods=["dpo"], steps=1, best_of_n=1,
                  overopt_length_bias=0, curve_every=0, genrm=True)
    gen = res["reward_model"]["generative"]
    assert gen["heldout_pairs"] == res["data"]["heldout_pairs"] > 100
    assert gen["bt_rm_heldout_accuracy"] > 0.7
    assert gen["genrm_heldout_accuracy"] >= gen["bt_rm_heldout_accuracy"] - 0.03, gen
    assert 'id="rm-generative"' in lab_report_html(res)


def test_cli_train_genrm_then_judge_with_it(tmp_path, monkeypatch):
    """`prefkit rm train-genrm` on the bundled pairs, then `--judge genrm:PATH`: the judge's
    p_first is the saved model's calibrated preference."""
    import json as _json

    from typer.testing import CliRunner

    from prefkit.cli import app
    from prefkit.data.io import read_records
    from prefkit.judges.base import JudgeRequest, judge_all
    from prefkit.rewards.generative import GenerativeRewardModel
    from prefkit.specs import judge_from_spec

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("PREFKIT_JUDGE_CACHE", raising=False)
    runner = CliRunner()
    model = tmp_path / "m"
    assert runner.invoke(app, ["models", "init", str(model), "--json"]).exit_code == 0
    pairs = Path(__file__).resolve().parents[1] / "src" / "prefkit" / "examples" / "pairs.jsonl"
    saved = tmp_path / "genrm"
    result = runner.invoke(app, [
        "rm", "train-genrm", "--set", f"model={model}", "--set", f"data={pairs}",
        "--set", f"output_dir={tmp_path / 'run'}", "--set", "max_steps=3",
        "--set", "batch_size=2", "--set", "progress=false", "--save-model", str(saved),
        "--json"])
    assert result.exit_code == 0, result.output
    out = _json.loads(result.stdout)
    assert out["steps"] == 3 and out["saved_model"] == str(saved)
    genrm = GenerativeRewardModel.from_pretrained(saved)
    record = next(r for r in read_records(pairs) if isinstance(r.prompt, str))
    judge = judge_from_spec(f"genrm:{saved}")
    request = JudgeRequest("compare", record.prompt, (record.response_a, record.response_b))
    [j] = judge_all(judge, [request])
    assert j.ok and j.p_first == pytest.approx(
        genrm.preference(record.prompt, record.response_a, record.response_b), abs=1e-6)
    [g] = judge_all(judge, [JudgeRequest("grade", "p", ("x",))])
    assert g.status == "failed" and "only compares" in g.reason


def test_rm_evaluate_takes_a_generative_reward_model(tmp_path, monkeypatch):
    """`prefkit rm eval GENRM pairs`: accuracy = the share with p(chosen > rejected) > 1/2,
    computed here from the saved model directly."""
    import json as _json

    from typer.testing import CliRunner

    from prefkit.cli import app
    from prefkit.rewards.generative import GenerativeRewardModel

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = CliRunner()
    model = tmp_path / "m"
    assert runner.invoke(app, ["models", "init", str(model), "--json"]).exit_code == 0
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"sort: {i} 1", "chosen": f"1 {i}", "rejected": f"{i} 1"}
            for i in range(2, 12)]
    pairs.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    saved = tmp_path / "genrm"
    assert runner.invoke(app, [
        "rm", "train-genrm", "--set", f"model={model}", "--set", f"data={pairs}",
        "--set", f"output_dir={tmp_path / 'run'}", "--set", "max_steps=2",
        "--set", "batch_size=2", "--set", "progress=false", "--save-model", str(saved),
        "--json"]).exit_code == 0
    result = runner.invoke(app, ["rm", "eval", str(saved), str(pairs), "--json"])
    assert result.exit_code == 0, result.output
    report = _json.loads(result.stdout)
    genrm = GenerativeRewardModel.from_pretrained(saved)
    p = genrm.preferences([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                          [r["rejected"] for r in rows])
    assert report["model_kind"] == "generative" and report["n"] == len(rows)
    assert report["accuracy"] == pytest.approx(float((p > 0.5).float().mean()))
