"""The architecture matrix: prefkit's packed prefix-shared forward, completion log-probs, reward
pooling, one DPO step and the last-layer pruning on tiny random configs of nine decoder
families, each checked against a plain transformers forward of one unpadded sequence at a time.

The configs make the families' differences matter: sliding windows shorter than the sequences
(Mistral, Qwen2, Phi-3 and the Gemmas, whose last layer is a sliding one), Gemma 2's attention
and final logit soft-capping, GQA, partial rotary (GPT-NeoX, Phi-3), weights large enough
(``initializer_range``) that every layer moves the log-probs far from uniform.
"""

import logging
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prefkit.losses import get as get_loss
from prefkit.models import prune
from prefkit.models.attention import packed_block_mask, use_attention
from prefkit.models.load import with_attention_fallback
from prefkit.models.logprobs import model_attention_mask, sequence_logps
from prefkit.models.packing import PromptGroup, pack_groups
from prefkit.rewards.heads import ScalarHead
from prefkit.rewards.model import RewardModel

VOCAB = 160
WINDOW = 6  # shorter than prompt + response below, so the window binds
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
              tie_word_embeddings=False)
ARCHS = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2", use_sliding_window=True, sliding_window=WINDOW,
                  max_window_layers=1),
    "qwen3": dict(model_type="qwen3", head_dim=8),
    "mistral": dict(model_type="mistral", sliding_window=WINDOW),
    "gemma2": dict(model_type="gemma2", head_dim=8, sliding_window=WINDOW,
                   query_pre_attn_scalar=8, layer_types=["full_attention", "sliding_attention"],
                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gemma3": dict(model_type="gemma3_text", head_dim=8, sliding_window=WINDOW,
                   query_pre_attn_scalar=8, layer_types=["full_attention", "sliding_attention"]),
    "phi3": dict(model_type="phi3", sliding_window=WINDOW, partial_rotary_factor=0.5),
    "olmo2": dict(model_type="olmo2"),
    "gpt_neox": dict(model_type="gpt_neox", partial_rotary_factor=0.5, num_key_value_heads=4),
}
CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM",
           "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
           "olmo2": "Olmo2ForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}
#: None: the last layer is pruned; else the fallback reason logged (none of the nine today).
PRUNE_FALLBACK: dict[str, str | None] = dict.fromkeys(ARCHS)


def _model(arch: str, seed: int = 0, attention: str = "sdpa"):
    fields = {**COMMON, **ARCHS[arch]}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = with_attention_fallback(
        lambda impl: AutoModelForCausalLM.from_config(config, attn_implementation=impl),
        attention, arch)
    assert type(model).__name__ == CLASSES[arch]
    return model.float().eval()


def _groups(k: int = 2, seed: int = 0) -> list[PromptGroup]:
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    return [PromptGroup(ids(7), [ids(6), ids(4)][:k]), PromptGroup(ids(3), [ids(8), ids(1)][:k]),
            PromptGroup(ids(9), [ids(5), ids(7)][:k])]


def _plain_logps(model, groups):
    """Summed completion log-probs from ``model(ids)`` on each unpadded sequence alone."""
    out = torch.zeros(len(groups), max(g.k for g in groups))
    per_token = []
    for i, group in enumerate(groups):
        for k, resp in enumerate(group.response_ids):
            ids = torch.tensor([group.prompt_ids + resp])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            n = len(group.prompt_ids)
            token = logp[n - 1:n - 1 + len(resp)].gather(1, torch.tensor(resp)[:, None])[:, 0]
            per_token.append(token)
            out[i, k] = token.sum()
    return out, torch.cat(per_token)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_packed_logps_equal_plain_forward(arch, attention):
    """Eager attention ADDS the mask: a bool mask is converted (it would be silently wrong)."""
    model = _model(arch, attention=attention)
    groups = _groups()
    with torch.no_grad():
        want, tokens = _plain_logps(model, groups)
        # the check is sensitive: the random model is far from uniform over the vocabulary
        assert tokens.std() > 0.3 and (tokens + math.log(VOCAB)).abs().max() > 1.0
        for mask_dtype in (torch.float32, torch.bool):
            batch = pack_groups(groups, max_length=64, pad_id=0, mask_dtype=mask_dtype)
            assert batch.input_ids.shape[0] == 1  # several prompts share the row
            got = sequence_logps(model, batch)
            assert torch.allclose(got.sum, want, atol=1e-5), (mask_dtype, got.sum - want)


@pytest.fixture
def pruned_calls(monkeypatch) -> list[int]:
    """One entry per call of the pruned last layer."""
    calls: list[int] = []
    original = prune._LastLayerAt.forward
    monkeypatch.setattr(prune._LastLayerAt, "forward",
                        lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    return calls


@pytest.mark.parametrize("arch", list(ARCHS))
def test_flex_attention_prunes_from_the_block_mask(arch, monkeypatch, pruned_calls):
    """With flex attention (a BlockMask, windowed per layer type where needed) the last layer
    is still computed only at the read positions: the block mask's rule is evaluated for
    those query rows alone. Forward only (flex has no backward on the CPU). Pruning under
    flex is forced here (by default it is used only when at most 1/4 of a row is read)."""
    monkeypatch.setattr(prune, "FLEX_PRUNE_MAX_FRACTION_INV", 1)
    model = _model(arch)
    groups = _groups()
    calls = pruned_calls
    with torch.no_grad():
        _, want = _plain_logps(model, groups)
        assert use_attention(model, "flex") == "flex"
        batch = pack_groups(groups, max_length=64, pad_id=0, mask_dtype=None)  # no dense mask
        got = sequence_logps(model, batch).per_token
    assert prune.prune_fallback_reason(model.get_decoder()) is None and calls
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_flex_prunes_only_sparse_reads(pruned_calls, caplog, monkeypatch):
    """Under flex the pruned layer takes a dense [N, L] mask slice, so completion log-probs
    (most of a row read) run the full last layer (reason logged) and a reward model's reads
    (one position per response) are pruned; both exact."""
    monkeypatch.setattr(prune, "_logged", set())  # the reason is logged once per process
    model = _model("llama")
    groups = _groups()
    calls = pruned_calls
    with torch.no_grad():
        _, want = _plain_logps(model, groups)
        assert use_attention(model, "flex") == "flex"
        batch = pack_groups(groups, max_length=64, pad_id=0, mask_dtype=None)
        with caplog.at_level(logging.INFO, logger="prefkit.models.prune"):
            got = sequence_logps(model, batch).per_token
        assert not calls and "near L x L" in caplog.text
        assert torch.allclose(got, want, atol=1e-5)
        decoder = model.get_decoder()
        rows = torch.zeros(2, dtype=torch.long)
        cols = torch.tensor([5, 9])
        mask = packed_block_mask(batch.token_group[:1], batch.token_part[:1])
        hidden = prune.hidden_at(decoder, rows, cols, input_ids=batch.input_ids[:1],
                                 position_ids=batch.position_ids[:1], attention_mask=mask)
        assert calls  # two reads in a row of more than 8 positions: pruned
        full = decoder(input_ids=batch.input_ids[:1], position_ids=batch.position_ids[:1],
                       attention_mask=mask).last_hidden_state[0, [5, 9]]
        assert torch.allclose(hidden, full, atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_packed_rewards_equal_plain_forward(arch):
    model = _model(arch)
    decoder = model.get_decoder()
    torch.manual_seed(1)
    rm = RewardModel(decoder, ScalarHead(32)).eval()
    groups = _groups()
    with torch.no_grad():
        got = rm(pack_groups(groups, max_length=64, pad_id=0, mask_dtype=torch.bool)).rewards
        want = torch.zeros_like(got)
        for i, group in enumerate(groups):
            for k, resp in enumerate(group.response_ids):
                ids = torch.tensor([group.prompt_ids + resp])
                last = decoder(input_ids=ids).last_hidden_state[0, -1]
                want[i, k] = rm.head(last)["rewards"]
    assert want.std() > 0.1  # the rewards differ between responses
    assert torch.allclose(got, want, atol=1e-5), got - want
    # left-padded rows with a 2D mask: the model builds its own (windowed) masks
    rows = [g.prompt_ids + r for g in groups for r in g.response_ids]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        padded = rm.forward_padded(ids, mask).rewards[:, 0]
    assert torch.allclose(padded, want.flatten(), atol=1e-5), padded - want.flatten()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_dpo_step(arch):
    """Step 1 from a policy equal to its reference: loss log 2 exactly; the gradient is
    finite and an SGD step of size lr lowers the loss by lr * |g|^2 to first order."""
    model = _model(arch, seed=2).train()
    batch = pack_groups(_groups(seed=3), max_length=64, pad_id=0)
    dpo = get_loss("dpo")
    with torch.no_grad():
        ref = sequence_logps(model, batch).sum
    logps = sequence_logps(model, batch).sum
    loss = dpo(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=0.5)[0].mean()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    norm2 = sum(float(g.pow(2).sum()) for g in grads)
    assert norm2 > 0
    lr = 1e-3 / norm2 ** 0.5  # a step of length 1e-3 in parameter space
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
        logps = sequence_logps(model, batch).sum
        after = dpo(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta=0.5)[0].mean()
    drop = math.log(2) - after.item()
    assert drop == pytest.approx(lr * norm2, rel=0.05)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruning_used_or_fallback_logged(arch, caplog, monkeypatch, pruned_calls):
    model = _model(arch)
    decoder = model.get_decoder()
    batch = pack_groups(_groups(), max_length=64, pad_id=0)
    inputs = dict(input_ids=batch.input_ids, attention_mask=model_attention_mask(model, batch),
                  position_ids=batch.position_ids, use_cache=False)
    rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
    calls = pruned_calls
    monkeypatch.setattr(prune, "_logged", set())
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="prefkit.models.prune"):
        got = prune.hidden_at(decoder, rows, cols, **inputs)
        want = decoder(**inputs).last_hidden_state[rows, cols]
    assert torch.allclose(got, want, atol=1e-5)
    assert prune.prune_fallback_reason(decoder) == PRUNE_FALLBACK[arch]
    if PRUNE_FALLBACK[arch] is None:
        assert calls and "pruning off" not in caplog.text
    else:
        assert not calls and PRUNE_FALLBACK[arch] in caplog.text
    # a configuration it cannot prune: the reason is logged, naming the model
    caplog.clear()
    model.gradient_checkpointing_enable()
    model.train()
    with caplog.at_level(logging.INFO, logger="prefkit.models.prune"):
        prune.hidden_at(decoder, rows, cols, **inputs)
    assert f"pruning off for {type(decoder).__name__}: gradient checkpointing is on" in caplog.text


def test_gemma2_has_no_sdpa_and_gets_eager(caplog):
    with caplog.at_level(logging.INFO, logger="prefkit.models.load"):
        model = _model("gemma2")
    assert model.config._attn_implementation == "eager"
    assert "no sdpa attention" in caplog.text


#: the families the static decode loop runs with prompt-shared attention (the others have
#: sliding-window layers in these configs and decode through generate)
SHARED_DECODE = {"llama", "qwen3", "olmo2", "gpt_neox"}


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_loop_equals_one_row_recomputed(arch):
    """The default decode loop's tokens and log-probs for 3 prompts x 2 samples (mixed widths,
    temperature 1) equal the sampling rule on ONE unpadded row with the whole sequence
    recomputed at every step, and the families with full attention run their decode steps
    with prefix_attention's shared-prefix attention."""
    from prefkit.models.decode import DecodeSettings, StaticCacheBackend, sampling_scores
    from prefkit.models.prefix_attention import SharedPrefixCache

    model = _model(arch)
    prompts = [g.prompt_ids for g in _groups() for _ in range(2)]
    s = DecodeSettings(max_new_tokens=6, eos_id=None, pad_id=0)
    caches = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: caches.append(type(kw.get("cache"))), with_kwargs=True)
    try:
        gen = StaticCacheBackend().generate(model, prompts, s, seed=3, logprobs=True)
    finally:
        handle.remove()
    assert (SharedPrefixCache in caches) == (arch in SHARED_DECODE)
    with torch.no_grad():
        for row, (prompt, ids, lps) in enumerate(zip(prompts, gen.ids, gen.logprobs,
                                                     strict=True)):
            seq, want_lps = list(prompt), []
            for t in range(s.max_new_tokens):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1:].float()
                nxt = int(sampling_scores(logits, torch.tensor([row]), t, seed=3,
                                          temperature=1.0).argmax())
                want_lps.append(float(torch.log_softmax(logits[0], -1)[nxt]))
                seq.append(nxt)
            assert ids == seq[len(prompt):], (arch, row)
            assert lps == pytest.approx(want_lps, abs=1e-5), (arch, row)
