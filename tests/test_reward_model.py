"""RewardModel: packed == padded (left/right) == score at any batch size; heads; save/load."""

import json

import pytest
import torch
import torch.distributed as dist

from prefkit.models.load import LoraSettings
from prefkit.models.packing import PromptGroup, pack_groups, pad_groups
from prefkit.models.tokenizer import word_level_tokenizer
from prefkit.rewards import (
    EnsembleHead,
    GPMHead,
    MultiHead,
    OdinHead,
    RewardModel,
    RewardOutput,
    ScalarHead,
    build_head,
    gpm_logit,
)
from prefkit.train.preference_data import tokenize_example

TOL = 1e-5
WORDS = [f"w{i}" for i in range(40)]
VOCAB = len(WORDS) + 4
KINDS = ["scalar", "multi", "gpm", "odin", "ensemble"]
EXTRAS = {
    "scalar": [],
    "multi": ["attributes"],
    "gpm": ["embeddings"],
    "odin": ["length_rewards"],
    "ensemble": ["members", "rewards_min", "rewards_std"],
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """A tiny Llama model file (hidden 32, 2 layers) next to a saved word-level tokenizer."""
    root = tmp_path_factory.mktemp("rm")
    word_level_tokenizer(WORDS).save_pretrained(str(root / "tok"))
    path = root / "tiny.json"
    path.write_text(
        json.dumps(
            {"tokenizer": "tok", "hidden_size": 32, "num_layers": 2, "num_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 128}
        )
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def scalar(spec):
    return RewardModel.from_spec(spec, head="scalar", seed=1)


def _groups(shape, seed=0):
    """shape: list of (prompt_len, [response lens])."""
    gen = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(4, VOCAB, (n,), generator=gen).tolist()

    return [PromptGroup(ids(p), [ids(r) for r in rs]) for p, rs in shape]


SHAPES = {
    "k1": [(5, [4]), (9, [2]), (1, [7]), (12, [3])],
    "k2": [(5, [3, 4]), (8, [6, 1]), (3, [1, 5])],
    "k4": [(4, [2, 3, 1, 5]), (10, [4, 4, 2, 6])],
    "mixed": [(5, [3, 4]), (9, [1]), (3, [5, 1, 2, 7]), (12, [6, 6]), (1, [4]), (7, [2, 1, 3])],
}


def _left_pad(input_ids, mask, pad_id=0):
    """Move every right-padded row's tokens to the right end."""
    left_ids = torch.full_like(input_ids, pad_id)
    left_mask = torch.zeros_like(mask)
    width = input_ids.shape[1]
    for r, n in enumerate(mask.sum(1).tolist()):
        left_ids[r, width - n :] = input_ids[r, :n]
        left_mask[r, width - n :] = 1
    return left_ids, left_mask


def _assert_outputs_close(a: RewardOutput, b: RewardOutput, names) -> None:
    assert torch.equal(a.mask, b.mask)
    for name in ["rewards", *names]:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, atol=TOL, rtol=0), (name, (x - y).abs().max())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_equals_padded(scalar, shape):
    model, _ = scalar
    groups = _groups(SHAPES[shape])
    packed = pack_groups(groups, max_length=48, pad_id=0)
    padded = pad_groups(groups, pad_id=0)
    assert packed.input_ids.shape[0] < len(groups)  # several groups share a row
    with torch.no_grad():
        out_packed = model.forward_packed(packed)
        out_padded = model(padded)
        out_bool = model(pack_groups(groups, max_length=48, pad_id=0, mask_dtype=torch.bool))
    _assert_outputs_close(out_packed, out_padded, [])
    _assert_outputs_close(out_bool, out_padded, [])
    assert torch.equal(out_packed.mask, packed.response_mask)
    assert torch.all(out_packed.rewards[~out_packed.mask] == 0)
    # Each (group, response) equals its own unpadded row, read at its last token.
    with torch.no_grad():
        for g, group in enumerate(groups):
            for k, resp in enumerate(group.response_ids):
                ids = torch.tensor([group.prompt_ids + resp])
                alone = model.forward_padded(ids, torch.ones_like(ids)).rewards[0, 0]
                assert abs(float(alone - out_packed.rewards[g, k])) < TOL


@pytest.mark.parametrize("kind", ["scalar", "ensemble"])
def test_left_padding_equals_right_padding(spec, kind):
    model, _ = RewardModel.from_spec(spec, head=kind)
    padded = pad_groups(_groups(SHAPES["mixed"], seed=3), pad_id=0)
    left_ids, left_mask = _left_pad(padded.input_ids, padded.attention_mask)
    with torch.no_grad():
        right = model.forward_padded(padded.input_ids, padded.attention_mask)
        left = model.forward_padded(left_ids, left_mask)
    assert right.rewards.shape == (padded.input_ids.shape[0], 1)
    _assert_outputs_close(left, right, EXTRAS[kind])


def _texts(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(n):
        p, r = torch.randint(1, 12, (2,), generator=gen).tolist()
        pick = torch.randint(0, len(WORDS), (p + r,), generator=gen).tolist()
        prompts.append(" ".join(WORDS[i] for i in pick[:p]))
        responses.append(" " + " ".join(WORDS[i] for i in pick[p:]))  # texts are concatenated
    return prompts, responses


def test_score_batch_size_invariant_and_equals_padded(scalar):
    model, tok = scalar
    prompts, responses = _texts(23)
    scores = {b: model.score(prompts, responses, tokenizer=tok, batch_size=b) for b in (1, 7, 64)}
    assert scores[1].shape == (23,)
    assert torch.allclose(scores[1], scores[7], atol=TOL, rtol=0)
    assert torch.allclose(scores[1], scores[64], atol=TOL, rtol=0)
    # The same sequences (prompt + completion + EOS) as left- and right-padded rows.
    rows = []
    for p, r in zip(prompts, responses, strict=True):
        ex = tokenize_example(tok, p, [r])
        assert ex.response_ids[0][-1] == tok.eos_token_id and tok.unk_token_id not in ex.prompt_ids
        rows.append(ex.prompt_ids + ex.response_ids[0])
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        right = model.forward_padded(ids, mask).rewards[:, 0]
        left = model.forward_padded(*_left_pad(ids, mask)).rewards[:, 0]
    assert torch.allclose(scores[7], right, atol=TOL, rtol=0)
    assert torch.allclose(scores[7], left, atol=TOL, rtol=0)
    assert not model.training  # eval mode kept


def test_score_details(scalar):
    model, tok = scalar
    model.train()
    out = model.score_outputs(["w1 w2", "", "w3"], [" w4", "w5 w6", ""], tokenizer=tok)
    assert model.training  # the mode is restored
    model.eval()
    assert out.rewards.shape == (3, 1) and out.mask.all()
    assert torch.equal(model.score(["w1 w2"], [" w4"]), out.rewards[:1, 0])  # model.tokenizer
    assert 3 not in model._group(tok, "w1 w2", " w4", 0).prompt_ids  # no <unk>
    cut = model.score(["w1 w2 w3 w4 w5"], [" w6 w7 w8"], max_length=4)
    same = model.score(["w3 w4 w5"], [" w6"], max_length=None)  # EOS is cut off: no EOS here
    ids = torch.tensor([[tok.convert_tokens_to_ids(w) for w in ["w3", "w4", "w5", "w6"]]])
    with torch.no_grad():
        direct = model.forward_padded(ids, torch.ones_like(ids)).rewards[0]
    assert torch.allclose(cut, direct, atol=TOL) and not torch.allclose(cut, same, atol=TOL)
    with pytest.raises(ValueError):
        model.score(["a"], ["b", "c"])
    assert model.score([], []).shape == (0,)


@pytest.mark.parametrize("kind", KINDS)
def test_head_output_shapes(spec, kind):
    model, _ = RewardModel.from_spec(spec, head=kind, gpm_dim=6, ensemble_size=3)
    groups = _groups(SHAPES["mixed"], seed=5)
    batch = pack_groups(groups, max_length=48, pad_id=0)
    with torch.no_grad():
        out = model(batch, return_features=True)
        ref = model(pad_groups(groups, pad_id=0), return_features=True)
    shape = (len(groups), 4)
    dims = {"attributes": 5, "embeddings": 6, "members": 3, "features": 32}
    assert out.rewards.shape == shape and out.rewards.dtype == torch.float32
    for name in ["attributes", "embeddings", "length_rewards", "members", "rewards_min",
                 "rewards_std"]:  # fmt: skip
        value = getattr(out, name)
        if name not in EXTRAS[kind]:
            assert value is None
            continue
        assert value.shape == shape + ((dims[name],) if name in dims else ())
        assert torch.all(value[~out.mask] == 0)
    assert out.features.shape == (*shape, 32)
    _assert_outputs_close(out, ref, [*EXTRAS[kind], "features"])
    # The head alone maps the pooled features to the same outputs.
    present = out.features[out.mask]
    direct = model.head(present)
    assert torch.allclose(direct["rewards"], out.rewards[out.mask], atol=TOL)


def test_multi_head_weighted_sum():
    head = MultiHead(16, ["a", "b", "c"], [0.5, 2.0, -1.0])
    h = torch.randn(7, 16)
    out = head(h)
    assert out["attributes"].shape == (7, 3)
    manual = 0.5 * out["attributes"][:, 0] + 2.0 * out["attributes"][:, 1] - out["attributes"][:, 2]
    assert torch.allclose(out["rewards"], manual, atol=1e-6)
    uniform = MultiHead(16, ["a", "b"])
    assert torch.allclose(uniform(h)["rewards"], uniform(h)["attributes"].mean(-1), atol=1e-6)
    with pytest.raises(ValueError):
        MultiHead(16, ["a", "b"], [1.0])


def test_ensemble_mean_min_std():
    head = EnsembleHead(16, n=4, seed=3)
    h = torch.randn(2, 5, 16)
    out = head(h)
    members = torch.stack([m(h).squeeze(-1) for m in head.members], dim=-1)
    assert torch.allclose(out["members"], members, atol=1e-6)
    assert torch.allclose(out["rewards"], members.mean(-1), atol=1e-6)
    assert torch.allclose(out["rewards_min"], members.min(-1).values, atol=1e-6)
    assert torch.allclose(out["rewards_std"], members.std(-1), atol=1e-6)
    weights = [m.weight for m in head.members]  # different seeds -> different members
    assert not torch.allclose(weights[0], weights[1])
    assert torch.equal(EnsembleHead(16, n=4, seed=3).members[2].weight, weights[2])


@pytest.mark.parametrize("normalize", ["block", "vector"])
def test_gpm_logit_formula_and_antisymmetry(normalize):
    head = GPMHead(16, dim=6, normalize=normalize, init_scale=2.5)
    h = torch.randn(4, 16)
    out = head(h)
    e = out["embeddings"].detach()
    assert torch.all(out["rewards"] == 0)
    if normalize == "block":
        assert torch.allclose(e.view(4, 3, 2).norm(dim=-1), torch.ones(4, 3), atol=1e-6)
    else:
        assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-6)
    e1, e2 = e[:2], e[2:]
    logit = head.logit(e1, e2)
    assert torch.allclose(logit, -head.logit(e2, e1), atol=1e-6)
    assert torch.allclose(head.logit(e1, e1), torch.zeros(2), atol=1e-6)
    for n in range(2):
        by_hand = sum(
            float(e1[n, 2 * i] * e2[n, 2 * i + 1] - e1[n, 2 * i + 1] * e2[n, 2 * i])
            for i in range(3)
        )
        assert abs(float(logit[n]) - 2.5 * by_hand) < 1e-5
    # <R e1, e2> with R block-diagonal [[0, -1], [1, 0]].
    rot = torch.block_diag(*[torch.tensor([[0.0, -1.0], [1.0, 0.0]])] * 3)
    assert torch.allclose(gpm_logit(e1, e2), ((e1 @ rot.T) * e2).sum(-1), atol=1e-6)
    assert torch.allclose(logit, head.scale * gpm_logit(e1, e2), atol=1e-6)
    assert head.log_scale.requires_grad


def test_odin_and_scalar_heads():
    h = torch.randn(3, 16)
    odin = OdinHead(16)
    out = odin(h)
    assert torch.allclose(out["rewards"], odin.quality(h).squeeze(-1), atol=1e-6)
    assert torch.allclose(out["length_rewards"], odin.length(h).squeeze(-1), atol=1e-6)
    assert odin.orthogonality() >= 0
    scalar = ScalarHead(16)
    assert torch.allclose(scalar(h)["rewards"], scalar.score(h).squeeze(-1), atol=1e-6)
    # bfloat16 features still give float32 rewards
    assert scalar(h.bfloat16())["rewards"].dtype == torch.float32
    with pytest.raises(ValueError):
        build_head("nope", 16)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(spec, tmp_path, kind):
    model, tok = RewardModel.from_spec(
        spec, head=kind, attributes=["x", "y"], weights=[1.0, -0.5], seed=2
    )
    prompts, responses = _texts(5, seed=1)
    groups = _groups(SHAPES["k2"], seed=2)
    batch = pack_groups(groups, max_length=48, pad_id=0)
    with torch.no_grad():
        before = model(batch)
    scores = model.score(prompts, responses)
    model.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "reward_config.json").read_text())
    assert config["head"] == kind
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert loaded.head_kind == kind and loaded.head.config() == model.head.config()
    assert loaded.tokenizer is not None and not loaded.training
    with torch.no_grad():
        after = loaded(batch)
    _assert_outputs_close(before, after, EXTRAS[kind])
    assert torch.allclose(loaded.score(prompts, responses), scores, atol=TOL, rtol=0)


def test_lora_save_merges_adapters(spec, tmp_path):
    model, tok = RewardModel.from_spec(spec, head="scalar", lora=LoraSettings(r=4), seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.score.weight", "head.score.bias"} <= trainable
    gen = torch.Generator().manual_seed(0)  # not the global generator: independent of test order
    with torch.no_grad():  # make the adapters matter (lora_B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=gen)
    prompts, responses = _texts(6, seed=4)
    scores = model.score(prompts, responses)
    model.save_pretrained(tmp_path / "lora", tokenizer=tok)
    assert torch.equal(model.score(prompts, responses), scores)  # the live model is untouched
    loaded = RewardModel.from_pretrained(tmp_path / "lora")
    assert not any("lora_" in n for n, _ in loaded.named_parameters())  # merged, plain
    assert torch.allclose(loaded.score(prompts, responses), scores, atol=TOL, rtol=0)
    # Fresh adapters on the restored model: same scores (B = 0), adapters + head trainable.
    again = RewardModel.from_pretrained(tmp_path / "lora", lora=LoraSettings(r=4))
    trainable = [n for n, p in again.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and "head.score.weight" in trainable
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    assert torch.allclose(again.score(prompts, responses), scores, atol=TOL, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_gradients_reach_head_and_backbone(spec, lora):
    settings = LoraSettings(r=4) if lora else None
    model, _ = RewardModel.from_spec(spec, head="odin", lora=settings)
    model.train()
    batch = pack_groups(_groups(SHAPES["mixed"]), max_length=48, pad_id=0)
    out = model(batch)
    (out.rewards[out.mask].sum() + out.length_rewards[out.mask].pow(2).sum()).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert lora and "lora_" not in name
            continue
        assert p.grad is not None, name
    assert model.head.quality.weight.grad.abs().sum() > 0
    assert model.head.length.weight.grad.abs().sum() > 0
    backbone = [p for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert backbone and any(float(p.grad.abs().sum()) > 0 for p in backbone)
    if lora:
        assert all("lora_" in n for n, p in model.backbone.named_parameters() if p.requires_grad)


def test_ddp_wrapper_dispatches_to_forward(spec, tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, _ = RewardModel.from_spec(spec, head="gpm")
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        groups = _groups(SHAPES["k2"])
        batch = pack_groups(groups, max_length=48, pad_id=0)
        for _ in range(2):  # a second step fails if a trainable parameter went unused
            out = ddp(batch)
            logit = gpm_logit(out.embeddings[:, 0], out.embeddings[:, 1], model.head.scale)
            torch.nn.functional.logsigmoid(logit).sum().neg().backward()
        padded = pad_groups(groups, pad_id=0)
        with torch.no_grad():
            rows = ddp(padded.input_ids, padded.attention_mask)
        assert rows.embeddings.shape == (padded.input_ids.shape[0], 1, 8)
    finally:
        dist.destroy_process_group()
