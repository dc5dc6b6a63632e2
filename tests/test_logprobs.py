"""sequence_logps: packed (prompt-shared) == padded == full log_softmax reference."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefkit.models.load import tiny_llama_config
from prefkit.models.logprobs import sequence_logps, sequence_logps_padded, token_logps
from prefkit.models.packing import PromptGroup, pack_groups, pad_groups

VOCAB = 300
PAD = 0
TOL = 1e-5


def _model(attn="sdpa", seed=0):
    torch.manual_seed(seed)
    config = tiny_llama_config(
        VOCAB, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
        max_position_embeddings=256,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _groups(shape, seed=0):
    """shape: list of (prompt_len, [response lens])."""
    gen = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=gen).tolist()

    return [PromptGroup(ids(p), [ids(r) for r in rs]) for p, rs in shape]


SHAPES = {
    "k1": [(5, [4]), (9, [2]), (1, [7]), (12, [3])],
    "k2": [(5, [3, 4]), (8, [6, 2]), (3, [1, 5])],
    "k4": [(4, [2, 3, 1, 5]), (10, [4, 4, 2, 6])],
    "mixed": [(5, [3, 4]), (9, [2]), (3, [5, 1, 2, 7]), (12, [6, 6]), (1, [4]), (7, [2, 2, 3])],
}


def _batches(groups, max_length=64, mask_dtype=torch.float32):
    packed = pack_groups(groups, max_length=max_length, pad_id=PAD, mask_dtype=mask_dtype)
    padded = pad_groups(groups, pad_id=PAD)
    return packed, padded


@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_equals_padded_equals_reference(model, shape):
    groups = _groups(SHAPES[shape])
    packed, padded = _batches(groups)
    assert packed.input_ids.shape[0] < len(groups)  # several groups share a row
    with torch.no_grad():
        ref = sequence_logps_padded(model, padded)
        fast_packed = sequence_logps(model, packed)
        fast_padded = sequence_logps(model, padded)
    for out in (fast_packed, fast_padded):
        assert torch.allclose(out.sum, ref.sum, atol=TOL, rtol=0)
        assert torch.allclose(out.per_token, ref.per_token, atol=TOL, rtol=0)
        assert torch.equal(out.count, ref.count)
        assert torch.equal(out.mask, ref.mask)
    # Absent responses are exactly zero; present ones are real log-probs.
    assert torch.all(ref.sum[~ref.mask] == 0)
    assert torch.all(ref.sum[ref.mask] < 0)
    # The values are sums of per-token log-probs of the right tokens.
    g0 = groups[0]
    ids = torch.tensor([g0.prompt_ids + g0.response_ids[0]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n_p = len(g0.prompt_ids)
    manual = sum(logp[n_p - 1 + j, t] for j, t in enumerate(g0.response_ids[0]))
    assert abs(float(manual) - float(fast_packed.sum[0, 0])) < TOL


@pytest.mark.parametrize(
    ("attn", "mask_dtype"),
    [("sdpa", torch.bool), ("eager", torch.float32), ("eager", torch.bool)],
)
def test_attention_implementations_and_mask_dtypes(attn, mask_dtype):
    """sdpa takes a bool mask; eager gets it converted to additive (bool would be wrong)."""
    model = _model(attn)
    groups = _groups(SHAPES["mixed"], seed=1)
    packed, padded = _batches(groups, mask_dtype=mask_dtype)
    with torch.no_grad():
        ref = sequence_logps_padded(model, padded)
        out = sequence_logps(model, packed)
    assert torch.allclose(out.sum, ref.sum, atol=TOL, rtol=0)
    if attn == "eager" and mask_dtype == torch.bool:
        # Negative control: handing eager the raw bool mask is silently wrong (it ADDS it).
        with torch.no_grad():
            logits = model(
                input_ids=packed.input_ids,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
            ).logits
        rows, cols = packed.logit_positions.T
        raw = torch.log_softmax(logits[rows, cols], -1)[torch.arange(len(rows)), packed.target_ids]
        assert (raw - ref.per_token).abs().max() > 1e-2


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_packed_equal_padded():
    model = _model(seed=3)
    groups = _groups(SHAPES["mixed"], seed=2)
    packed, padded = _batches(groups)
    weights = torch.randn(
        packed.completion_lengths.shape, generator=torch.Generator().manual_seed(0)
    )

    def loss(fn, batch, **kw):
        return lambda: (fn(model, batch, **kw).sum * weights).sum()

    ref = _grads(model, loss(sequence_logps_padded, padded))
    variants = {
        "packed": loss(sequence_logps, packed),
        "packed_chunk3_recompute": loss(sequence_logps, packed, chunk_size=3, recompute=True),
        "packed_chunk5_stored": loss(sequence_logps, packed, chunk_size=5, recompute=False),
        "packed_forward_path": loss(sequence_logps, packed, path="forward"),
        "padded_fast": loss(sequence_logps, padded),
    }
    scale = max(g.abs().max() for g in ref.values())
    assert scale > 1e-3  # gradients are not trivially zero
    for name, fn in variants.items():
        grads = _grads(model, fn)
        assert grads.keys() == ref.keys(), name
        diff = max((grads[n] - ref[n]).abs().max() for n in ref)
        assert diff < TOL, (name, float(diff))


def test_mask_isolates_sibling_responses_and_other_groups(model):
    groups = [
        PromptGroup([5, 6, 7], [[10, 11, 12], [20, 21, 22]]),
        PromptGroup([8, 9], [[30, 31], [40, 41, 42]]),
    ]
    packed = pack_groups(groups, max_length=64, pad_id=PAD)
    assert packed.input_ids.shape[0] == 1  # both groups in the same row

    def logps(gs):
        with torch.no_grad():
            return sequence_logps(model, pack_groups(gs, max_length=64, pad_id=PAD)).sum

    base = logps(groups)
    # Change a token of response 2 of group 0: response 1 unchanged, response 2 changed.
    changed = [PromptGroup([5, 6, 7], [[10, 11, 12], [20, 99, 22]]), groups[1]]
    out = logps(changed)
    assert out[0, 0] == base[0, 0]
    assert abs(float(out[0, 1] - base[0, 1])) > 1e-3
    assert torch.equal(out[1], base[1])
    # Change group 1 (prompt and a response): group 0 unchanged.
    changed = [groups[0], PromptGroup([8, 77], [[30, 31], [40, 88, 42]])]
    out = logps(changed)
    assert torch.equal(out[0], base[0])
    assert abs(float(out[1, 0] - base[1, 0])) > 1e-3
    # Negative control: a plain causal mask (no isolation) changes response 2 of group 0.
    causal = packed.attention_mask.clone()
    width = causal.shape[-1]
    causal[:] = torch.where(torch.ones(width, width, dtype=torch.bool).tril(), 0.0, causal.min())
    leaky = type(packed)(**{**vars(packed), "attention_mask": causal})
    with torch.no_grad():
        assert abs(float(sequence_logps(model, leaky).sum[0, 1] - base[0, 1])) > 1e-3


def test_chunk_sizes_agree_and_equal_full_log_softmax(model):
    groups = _groups(SHAPES["mixed"], seed=4)
    packed, padded = _batches(groups)
    with torch.no_grad():
        ref = sequence_logps_padded(model, padded)
        outs = [sequence_logps(model, packed, chunk_size=c) for c in (1, 7, 10_000)]
    for out in outs:
        assert torch.allclose(out.per_token, ref.per_token, atol=TOL, rtol=0)
        assert torch.allclose(out.sum, outs[0].sum, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps(model, packed, chunk_size=0)


def test_token_logps_matches_log_softmax():
    logits = torch.randn(13, 50, generator=torch.Generator().manual_seed(0)) * 5
    targets = torch.randint(0, 50, (13,), generator=torch.Generator().manual_seed(1))
    expected = torch.log_softmax(logits, -1)[torch.arange(13), targets]
    assert torch.allclose(token_logps(logits, targets), expected, atol=1e-6)
    half = token_logps(logits.bfloat16(), targets)
    assert half.dtype == torch.float32


def test_average_and_counts(model):
    groups = _groups(SHAPES["k2"], seed=5)
    packed, _ = _batches(groups)
    with torch.no_grad():
        out = sequence_logps(model, packed, average=True)
    lengths = torch.tensor([[len(r) for r in g.response_ids] for g in groups])
    assert torch.equal(out.count, lengths)
    assert torch.allclose(out.mean, out.sum / lengths)
    assert torch.equal(out.logps, out.mean)
    for g in range(len(groups)):
        for k in range(2):
            sel = out.segment == g * packed.k_max + k
            assert torch.allclose(out.per_token[sel].sum(), out.sum[g, k], atol=1e-5)
