"""`prefkit rm score` / `rm eval` (issue 12): every reader and FOLDER::split, bad rows named by
file, row and field (exit 2), a token budget with truncation counts, a readable eval summary,
and a loud reference-free --implicit."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.models.packing import PromptGroup
from prefkit.models.tokenizer import word_level_tokenizer
from prefkit.rewards import RewardModel
from prefkit.rewards.scoring import fit_group, score_prompt_groups, tokenize_groups

WORDS = [f"w{i}" for i in range(40)]
ROWS = [  # responses start with a space: prompt + response is tokenized as one string
    {"prompt": "w1 w2 w3", "chosen": " w4 w5", "rejected": " w6", "subset": "alpacaeval-easy"},
    {"prompt": "w7 w8", "chosen": " w9", "rejected": " w10 w11 w12",
     "subset": "alpacaeval-easy"},
    {"prompt": "w13", "chosen": " w14 w15 w16", "rejected": " w17", "subset": "math-prm"},
    {"prompt": "w18 w19", "chosen": " w20", "rejected": " w21 w22", "subset": "my-subset"},
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved random reward model (max_position_embeddings 128) and its policy spec."""
    root = tmp_path_factory.mktemp("rmcli")
    word_level_tokenizer(WORDS).save_pretrained(str(root / "tok"))
    spec = root / "tiny.json"
    spec.write_text(json.dumps({"tokenizer": "tok", "hidden_size": 32, "num_layers": 2,
                                "num_heads": 4, "intermediate_size": 64,
                                "max_position_embeddings": 128}))
    model, tok = RewardModel.from_spec(spec, head="scalar", seed=3)
    model.save_pretrained(root / "rm", tokenizer=tok)
    return {"root": root, "rm": str(root / "rm"), "spec": str(spec), "model": model, "tok": tok}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_score_and_eval_read_parquet_and_dataset_splits(world, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = _jsonl(tmp_path / "pairs.jsonl", ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "pairs.parquet")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS),
                          "train": datasets.Dataset.from_list(ROWS[:1])}
                         ).save_to_disk(str(tmp_path / "ds"))
    rewards = {}
    for name in (src, tmp_path / "pairs.parquet", f"{tmp_path / 'ds'}::test"):
        out = tmp_path / "scored.jsonl"
        res = invoke("rm", "score", world["rm"], name, "--out", out, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["scored"] == 4
        rewards[str(name)] = [v for r in map(json.loads, out.read_text().splitlines())
                              for v in (r["chosen_reward"], r["rejected_reward"])]
        ev = invoke("rm", "eval", world["rm"], name, "--json")
        assert ev.exit_code == 0, ev.output
        assert json.loads(ev.stdout)["n"] == 4
    first = rewards[src]
    assert all(v == pytest.approx(first) for v in rewards.values())
    expected = world["model"].score([r["prompt"] for r in ROWS], [r["chosen"] for r in ROWS])
    assert first[::2] == pytest.approx(expected.tolist(), abs=1e-5)


def test_bad_rows_exit_2_naming_file_row_and_field(world, tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], {**ROWS[1], "chosen": 5}])
    for command in ("score", "eval"):
        res = invoke("rm", command, world["rm"], bad, "--json")
        assert res.exit_code == 2, res.output
        error = json.loads(res.stdout)["error"]
        assert "bad.jsonl:2" in error and "field 'chosen'" in error, error
    ragged = _jsonl(tmp_path / "ragged.jsonl", [ROWS[0], {"prompt": "w1", "chosen": " w2"}])
    res = invoke("rm", "eval", world["rm"], ragged, "--json")
    assert res.exit_code == 2 and "ragged.jsonl:2" in json.loads(res.stdout)["error"]
    assert "'rejected'" in json.loads(res.stdout)["error"]
    gold = _jsonl(tmp_path / "gold.jsonl", [{**ROWS[0], "g": True}, {**ROWS[1], "g": "yes"}])
    res = invoke("rm", "eval", world["rm"], gold, "--gold-column", "g", "--json")
    assert res.exit_code == 2 and "gold.jsonl:2" in res.stdout and "field 'g'" in res.stdout
    sets = _jsonl(tmp_path / "sets.jsonl", [{"prompt": "w1", "responses": [" w2", " w3"]}])
    res = invoke("rm", "eval", world["rm"], sets, "--json")
    assert res.exit_code == 2 and "field 'ranking'" in json.loads(res.stdout)["error"]
    res = invoke("rm", "score", world["rm"], f"{tmp_path / 'nope'}::test", "--json")
    assert res.exit_code == 2 and "nope" in json.loads(res.stdout)["error"]


def test_a_huge_prompt_is_cut_to_the_budget_and_counted(world, tmp_path):
    huge = " ".join(WORDS[i % 30] for i in range(300_000))  # ~1 MB, 300k tokens
    rows = [{**ROWS[0], "prompt": huge}, ROWS[1]]
    src = _jsonl(tmp_path / "huge.jsonl", rows)
    out = tmp_path / "s.jsonl"
    res = invoke("rm", "score", world["rm"], src, "--out", out, "--max-length", 32, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["truncation"] == {"max_length": 32, "max_prompt_length": None, "groups": 2,
                                    "prompts": 1, "responses": 0}
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    # the same as scoring the prompt's last 32 - 3 tokens (room for the longest response + EOS)
    tok = world["tok"]
    tail = tok.convert_tokens_to_ids(huge.split()[-29:])
    groups = [PromptGroup(tail, [tok.convert_tokens_to_ids(["w4", "w5"]) + [tok.eos_token_id],
                                 tok.convert_tokens_to_ids(["w6"]) + [tok.eos_token_id]])]
    want, _ = score_prompt_groups(world["model"], groups, pad_id=tok.pad_token_id)
    assert [scored[0]["chosen_reward"], scored[0]["rejected_reward"]] == pytest.approx(
        want[0].tolist(), abs=1e-5)
    # default budget: the model's max_position_embeddings (128)
    res = invoke("rm", "eval", world["rm"], src, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["truncation"]["max_length"] == 128
    assert json.loads(res.stdout)["truncation"]["prompts"] == 1
    text = invoke("rm", "eval", world["rm"], src)
    assert "1 of 2 prompts" in text.stderr


def test_fit_group_budget_rule():
    group = PromptGroup(list(range(100)), [[1] * 5, [2] * 40])
    fitted, prompt_cut, n_cut = fit_group(group, 32)
    # the prompt keeps 32 - min(40, 16) = 16 tokens; responses get the other 16
    assert prompt_cut and n_cut == 1
    assert fitted.prompt_ids == list(range(84, 100))
    assert fitted.response_ids == [[1] * 5, [2] * 16]
    fitted, prompt_cut, n_cut = fit_group(PromptGroup(list(range(20)), [[1] * 5]), 32)
    assert fitted.prompt_ids == list(range(20)) and not prompt_cut and n_cut == 0
    fitted, _, _ = fit_group(PromptGroup(list(range(40)), [[1] * 5]), 32)
    assert fitted.prompt_ids == list(range(13, 40))  # room for the 5-token response
    fitted, _, n_cut = fit_group(PromptGroup(list(range(40)), [[1] * 5]), 32,
                                 max_prompt_length=30)
    assert fitted.prompt_ids == list(range(10, 40)) and fitted.response_ids == [[1, 1]]
    with pytest.raises(ValueError, match="max_length"):
        fit_group(group, 1)


def test_tokenize_groups_only_tokenizes_a_window(world):
    class Spy:
        def __init__(self, tok):
            self._tok, self.longest = tok, 0

        def __call__(self, text, *args, **kwargs):
            self.longest = max(self.longest, len(text))
            return self._tok(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._tok, name)

    spy = Spy(world["tok"])
    huge = " ".join(WORDS[i % 30] for i in range(300_000))
    groups, report = tokenize_groups(spy, [huge], [[" " + huge, " w1"]], max_length=64)
    assert spy.longest < 20_000 and report.prompts == 1 and report.responses == 1
    assert len(groups[0].prompt_ids) == 32 and len(groups[0].response_ids[0]) == 32
    assert groups[0].response_ids[0] == world["tok"].convert_tokens_to_ids(huge.split()[:32])


def test_eval_prints_a_readable_summary(world, tmp_path):
    src = _jsonl(tmp_path / "rb.jsonl", ROWS)
    res = invoke("rm", "eval", world["rm"], src)
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert not text.lstrip().startswith("{")
    assert len(text.splitlines()) < 40
    full = json.loads(invoke("rm", "eval", world["rm"], src, "--json").stdout)
    assert f"accuracy {full['accuracy']:.3f}" in text
    assert "ECE" in text and "Chat" in text and "my-subset" in text and "longer" in text


def test_implicit_without_reference_says_it_is_reference_free(world, tmp_path):
    src = _jsonl(tmp_path / "pairs.jsonl", ROWS[:2])
    res = invoke("rm", "eval", world["spec"], src, "--implicit", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["reference"] is None and "reference-free" in report["note"]
    assert "reference-free" in res.stderr
    res = invoke("rm", "eval", world["spec"], src, "--implicit", "--reference", world["spec"],
                 "--json")
    report = json.loads(res.stdout)
    assert report["reference"] == world["spec"] and "note" not in report
    # policy == reference: every implicit reward is 0
    assert report["mean_margin"] == 0.0
    res = invoke("rm", "score", world["spec"], src, "--implicit", "--out", tmp_path / "o.jsonl",
                 "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["reference"] is None
    assert "reference-free" in res.stderr
    assert torch.isfinite(torch.tensor(json.loads(
        (tmp_path / "o.jsonl").read_text().splitlines()[0])["chosen_reward"]))


def test_comparison_formats_with_ties_score_and_eval_skips_ties(world, tmp_path):
    """prefkit's own comparisons (response_a/b, outcome): `score` writes rewards in a, b order
    (ties too); `eval` orders each pair by its winner and skips ties, counting them."""
    rows = [{"kind": "comparison", "prompt": "w1 w2", "response_a": " w3", "response_b": " w4 w5",
             "outcome": "b"},
            {"kind": "comparison", "prompt": "w6", "response_a": " w7", "response_b": " w8",
             "outcome": "tie"},
            {"kind": "comparison", "prompt": "w9", "response_a": " w10 w11", "response_b": " w12",
             "outcome": "a"}]
    src = _jsonl(tmp_path / "native.jsonl", rows)
    out = tmp_path / "s.jsonl"
    res = invoke("rm", "score", world["rm"], src, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    scored = [json.loads(line)["rewards"] for line in out.read_text().splitlines()]
    model = world["model"]
    for row, rewards in zip(rows, scored, strict=True):
        want = model.score([row["prompt"]] * 2, [row["response_a"], row["response_b"]])
        assert rewards == pytest.approx(want.tolist(), abs=1e-5)
    res = invoke("rm", "eval", world["rm"], src, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["n"] == 2 and report["skipped_ties"] == 1
    margins = [scored[0][1] - scored[0][0], scored[2][0] - scored[2][1]]
    assert report["mean_margin"] == pytest.approx(sum(margins) / 2, abs=1e-4)
    assert "1 tied pairs skipped" in res.stderr


def test_conversations_need_a_chat_template(world, tmp_path):
    rows = [{"prompt": "w1", "chosen": " w2", "rejected": " w3"},
            {"prompt": [{"role": "user", "content": "w1"}], "chosen": " w2", "rejected": " w3"}]
    res = invoke("rm", "score", world["rm"], _jsonl(tmp_path / "chat.jsonl", rows), "--json")
    assert res.exit_code == 2
    assert "row 2" in json.loads(res.stdout)["error"]
    assert "chat template" in json.loads(res.stdout)["error"]


def test_eval_ranked_sets_summary(world, tmp_path):
    rows = [{"prompt": "w1", "responses": [" w2", " w3 w4", " w5"], "ranking": [1, 0, 2]},
            {"prompt": "w6", "responses": [" w7", " w8"], "ranking": [0, 1]}]
    src = _jsonl(tmp_path / "sets.jsonl", rows)
    full = json.loads(invoke("rm", "eval", world["rm"], src, "--json").stdout)
    assert full["n_sets"] == 2 and full["k"] == 3 and full["chance"] == pytest.approx(
        (1 / 3 + 1 / 2) / 2, abs=1e-4)
    text = invoke("rm", "eval", world["rm"], src).stdout
    assert f"best-of-K accuracy {full['best_of_k_accuracy']:.3f}" in text


def test_output_paths_are_checked_before_the_model_loads(world, tmp_path):
    src = _jsonl(tmp_path / "pairs.jsonl", ROWS)
    (tmp_path / "file").write_text("")
    res = invoke("rm", "score", world["rm"], src, "--out", tmp_path / "file" / "x.jsonl",
                 "--json")
    assert res.exit_code == 2 and "is a file" in json.loads(res.stdout)["error"]
    res = invoke("rm", "eval", world["rm"], src, "--plot", tmp_path / "file" / "p.png",
                 "--json")
    assert res.exit_code == 2 and "is a file" in json.loads(res.stdout)["error"]
    res = invoke("rm", "eval", world["rm"], src, "--plot", tmp_path, "--json")
    assert json.loads(res.stdout)["plot"] == str(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # a folder written with a trailing slash is made and gets reliability.png
    res = invoke("rm", "eval", world["rm"], src, "--plot", f"{tmp_path}/new/", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["plot"] == str(tmp_path / "new" / "reliability.png")
    assert (tmp_path / "new" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # one rule with arena rank --plot: no guessed extension (a bare name was given .png)
    for name in ("rel", "rel.pdf"):
        res = invoke("rm", "eval", "no-such-model", src, "--plot", tmp_path / name, "--json")
        assert res.exit_code == 2, res.output  # before the model loads
        error = json.loads(res.stdout)["error"]
        assert error.startswith(f"--plot: cannot write {tmp_path / name}: expected a file name "
                                "ending .png, or a folder")
        assert not (tmp_path / f"{name}.png").exists()
    # ranked sets have no reliability diagram: said, not ignored
    sets = _jsonl(tmp_path / "sets.jsonl", [{"prompt": "w1", "responses": [" w2", " w3"],
                                             "ranking": [1, 0]}])
    res = invoke("rm", "eval", world["rm"], sets, "--plot", tmp_path / "s.png", "--json")
    assert res.exit_code == 2 and "ranked sets" in json.loads(res.stdout)["error"]
    assert not (tmp_path / "s.png").exists()
