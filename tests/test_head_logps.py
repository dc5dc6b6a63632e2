"""prefkit.models.head_logps: the LM head's target log-probs with their own backward equal the
autograd path (``token_logps(head(hidden))``) in values and in the gradients of the hidden
states, the weight and the bias -- kept logits or recomputed, tied weights, bf16 autocast, a
second backward -- and ``torch.autograd.gradcheck`` in float64; sequence_logps uses it for a
plain linear head and falls back for other heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prefkit.models.head_logps import _logsumexp_, fused_head, linear_token_logps, pack_head
from prefkit.models.logprobs import token_logps
from prefkit.models.packed_linear import packing_unsupported


def _case(n=37, hidden=16, vocab=50, bias=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) * 0.5)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    h = torch.randn(n, hidden, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    weights = torch.randn(n, generator=g, dtype=dtype)  # a loss that weighs every row
    return head, h, targets, weights


def _grads(fn, head, h, weights):
    out = fn()
    (out * weights).sum().backward()
    grads = [h.grad.clone(), head.weight.grad.clone()] + \
        ([head.bias.grad.clone()] if head.bias is not None else [])
    h.grad = None
    head.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_the_autograd_path(recompute, bias):
    head, h, t, w = _case(bias=bias)
    want, want_grads = _grads(lambda: token_logps(head(h), t), head, h, w)
    weight_bias = fused_head(head)
    got, got_grads = _grads(lambda: linear_token_logps(h, *weight_bias, t,
                                                       recompute=recompute), head, h, w)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(packing_unsupported(nn.Linear(2, 2)) is not None,
                    reason="no oneDNN packed linear in this torch build")
@pytest.mark.parametrize("bias", [False, True])
def test_the_packed_forward_product_equals_the_autograd_path(bias):
    """The head weight packed for oneDNN (float32, CPU): the same values and gradients as the
    autograd head to float32 rounding, and a recomputed chunk's logits are the forward's own
    (the same packed product): kept and recomputed give the same gradients."""
    head, h, t, w = _case(n=300, hidden=256, vocab=257, bias=bias)  # sums in another order
    want, want_grads = _grads(lambda: token_logps(head(h), t), head, h, w)
    packed = pack_head(head.weight, h, 128)
    assert packed is not None
    kept, kept_grads = _grads(lambda: linear_token_logps(
        h, *fused_head(head), t, recompute=False, packed=packed), head, h, w)
    again, again_grads = _grads(lambda: linear_token_logps(
        h, *fused_head(head), t, recompute=True, packed=packed), head, h, w)
    for got, got_grads in ((kept, kept_grads), (again, again_grads)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
        for a, b in zip(got_grads, want_grads, strict=True):  # logits ~8: sums of 256 terms
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(again_grads, kept_grads, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_head_is_packed_only_for_float32_on_the_cpu_outside_autocast(monkeypatch):
    """...for enough rows, and for a head that is not too large to copy."""
    from prefkit.models import head_logps

    head = nn.Linear(8, 11)
    h = torch.randn(head_logps.PACK_HEAD_MIN_ROWS, 8)
    if packing_unsupported(head) is None:
        assert pack_head(head.weight, h) is not None
    assert pack_head(head.weight, h[:-1]) is None  # too few rows to pay for the packing
    assert pack_head(head.weight.double(), h.double()) is None
    assert pack_head(head.weight, h.bfloat16()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pack_head(head.weight, h) is None
    monkeypatch.setattr(head_logps, "PACK_HEAD_MAX_BYTES", head.weight.nbytes - 1)
    assert pack_head(head.weight, h) is None


def test_in_place_logsumexp_has_the_bits_of_torch_logsumexp():
    """The recomputed path's log-sum-exp works in place on the logits; it must be
    torch.logsumexp bit for bit, also for rows with masked (-inf) or infinite entries, and the
    two paths' forward values must be identical."""
    g = torch.Generator().manual_seed(3)
    for vocab in (7, 4096, 4099):
        x = torch.randn(9, vocab, generator=g) * 4
        x[1] = float("-inf")  # every token masked
        x[2, : vocab // 2] = float("-inf")
        x[3, 0] = float("inf")
        assert torch.equal(_logsumexp_(x.clone()), torch.logsumexp(x, dim=-1))
    head, h, t, _ = _case(n=64, vocab=300)
    kept = linear_token_logps(h, head.weight, head.bias, t, recompute=False)
    recomputed = linear_token_logps(h, head.weight, head.bias, t, recompute=True)
    assert torch.equal(kept, recomputed)


@pytest.mark.parametrize("recompute", [False, True])
def test_gradcheck_in_float64(recompute):
    head, h, t, _ = _case(n=5, hidden=4, vocab=7, dtype=torch.float64)
    weight = head.weight.detach().clone().requires_grad_()
    bias = head.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h_, w_, b_: linear_token_logps(h_, w_, b_, t, recompute=recompute),
        (h, weight, bias))


def test_tied_weight_gets_both_gradients():
    """A head tied to the input embedding: the weight's gradient is the sum of both uses."""
    head, h, t, w = _case(bias=False)
    ids = torch.tensor([1, 4, 4, 9])

    def loss(logps):
        return (logps * w).sum() + head.weight[ids].pow(2).sum()

    loss(token_logps(head(h), t)).backward()
    want = head.weight.grad.clone()
    head.zero_grad(set_to_none=True)
    loss(linear_token_logps(h, head.weight, None, t, recompute=True)).backward()
    torch.testing.assert_close(head.weight.grad, want, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_matches_and_a_second_backward_works():
    head, h, t, w = _case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_grads = _grads(lambda: token_logps(head(h), t), head, h, w)
        got, got_grads = _grads(lambda: linear_token_logps(h, head.weight, head.bias, t,
                                                           recompute=True), head, h, w)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)  # the same bf16 logits
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # bf16 products
    out = linear_token_logps(h, head.weight, head.bias, t)  # kept logits
    out.sum().backward(retain_graph=True)
    first = h.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(h.grad, 2 * first)  # the saved logits were not overwritten


def test_only_plain_linear_heads_are_fused():
    from prefkit.models.logprobs import SoftcappedHead

    assert fused_head(nn.Linear(4, 6)) is not None
    assert fused_head(SoftcappedHead(nn.Linear(4, 6), 3.0)) is None
    assert fused_head(nn.Sequential(nn.Linear(4, 6))) is None

    class LoraLinear(nn.Linear):  # a subclass may add to its forward (peft's layers do)
        pass

    assert fused_head(LoraLinear(4, 6)) is None


def test_sequence_logps_uses_it_and_matches_the_padded_reference(monkeypatch):
    """sequence_logps on a tiny Llama: the fused head is called (recomputing each of several
    chunks when the logits exceed the budget, keeping them when they do not), and per-token
    log-probs and the body's gradients equal the autograd head."""
    from transformers import AutoModelForCausalLM

    from prefkit.models import head_logps, logprobs
    from prefkit.models.load import tiny_llama_config
    from prefkit.models.packing import PromptGroup, pack_groups

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(
        40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32))
    g = torch.Generator().manual_seed(1)
    groups = [PromptGroup(torch.randint(3, 40, (n,), generator=g).tolist(),
                          [torch.randint(3, 40, (m,), generator=g).tolist() for m in ks])
              for n, ks in ((5, (4, 6)), (3, (7, 2)))]
    batch = pack_groups(groups, max_length=64, pad_id=0)
    calls = []
    original = head_logps.linear_token_logps
    monkeypatch.setattr(logprobs, "linear_token_logps",
                        lambda *a, **k: calls.append(k["recompute"]) or original(*a, **k))

    def run():
        out = logprobs.sequence_logps(model, batch, chunk_size=5)
        out.per_token.pow(2).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out.per_token.detach(), grads

    kept, kept_grads = run()
    assert len(calls) == 4 and not any(calls)  # 19 tokens x 40 words: far under the budget
    calls.clear()
    monkeypatch.setattr(logprobs, "KEEP_LOGITS_BYTES", 19 * 40 * 4 - 1)  # one byte too few
    got, got_grads = run()
    assert len(calls) == 4 and all(calls)  # 19 tokens in chunks of 5, each recomputed
    torch.testing.assert_close(got, kept, atol=0, rtol=0)
    for a, b in zip(got_grads, kept_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    monkeypatch.setattr(logprobs, "fused_head", lambda head: None)
    want, want_grads = run()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
