"""prefkit.models.packed_linear: products through packed weights equal ``F.linear`` to float32
rounding, the layers' forwards are routed only inside the context (nested, raising, compiled),
a weight changed between calls is packed again, and the decode loop uses it with the same
tokens as without."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from online_helpers import tiny_sort_decoder
from prefkit.models.decode import DecodeSettings, StaticCacheBackend
from prefkit.models.packed_linear import (
    layer_forward_is_packed,
    packed_count,
    packed_linears,
    packing_unsupported,
)

pytestmark = pytest.mark.skipif(packing_unsupported(nn.Linear(2, 2)) is not None,
                                reason=str(packing_unsupported(nn.Linear(2, 2))))


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(48, 96), nn.SiLU(), nn.Linear(96, 40, bias=False))


def _plain(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The same network by ``F.linear`` directly (independent of the modules' forwards)."""
    h = F.silu(F.linear(x, net[0].weight, net[0].bias))
    return F.linear(h, net[2].weight)


@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (32, 48), (1, 48)])
def test_packed_product_equals_linear(shape):
    net = _net()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = _plain(net, x)
        with packed_linears(net, rows=32) as n:
            got = net(x)
    assert n == 2
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_forwards_routed_only_inside_and_restored_after_an_error():
    net = _net()
    layers = [net[0], net[2]]
    with packed_linears(net):
        assert all(layer_forward_is_packed(m) for m in layers)
        assert packed_count() == 2
        with packed_linears(net):  # nested: the outer context keeps its routing and packs
            assert packed_count() == 2
        assert all(layer_forward_is_packed(m) for m in layers)
        assert packed_count() == 2
    assert not any(layer_forward_is_packed(m) for m in layers)
    assert all("forward" not in m.__dict__ for m in layers)
    assert packed_count() == 0
    # overlapping contexts that end out of order (two threads generating with one model)
    first, second = packed_linears(net), packed_linears(net)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert all(layer_forward_is_packed(m) for m in layers) and packed_count() == 2
    with torch.no_grad():
        torch.testing.assert_close(net(torch.ones(2, 48)), _plain(net, torch.ones(2, 48)),
                                   rtol=1e-5, atol=1e-5)
    second.__exit__(None, None, None)
    assert not any(layer_forward_is_packed(m) for m in layers) and packed_count() == 0
    with pytest.raises(RuntimeError, match="boom"), packed_linears(net):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in layers) and packed_count() == 0


def test_gradients_inside_the_context_are_the_plain_ones():
    """A forward that wants gradients (another thread training meanwhile) is not routed
    through the packed copy, which has none."""
    net, x = _net(), torch.randn(5, 48)
    with packed_linears(net):
        net(x).pow(2).sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    _plain(net, x).pow(2).sum().backward()
    for a, b in zip(got, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_a_packing_failure_midway_releases_what_was_packed(monkeypatch):
    from prefkit.models import packed_linear

    net, calls = _net(), []
    real = packed_linear._pack

    def pack(weight, rows):  # the second weight fails (out of memory, say)
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("no room for the copy")
        return real(weight, rows)

    monkeypatch.setattr(packed_linear, "_pack", pack)
    with pytest.raises(MemoryError, match="no room"), packed_linears(net):
        pass
    assert packed_count() == 0 and all("forward" not in m.__dict__ for m in (net[0], net[2]))


def test_a_weight_changed_between_calls_is_packed_again():
    net, x = _net(), torch.randn(4, 48)
    with torch.no_grad():
        with packed_linears(net):
            before = net(x)
        net[2].weight.mul_(-2.0)  # what an optimizer step does between two generation calls
        with packed_linears(net):
            after = net(x)
        torch.testing.assert_close(after, _plain(net, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after, -2.0 * before, rtol=1e-5, atol=1e-5)


def test_only_plain_float32_cpu_linears_are_packed():
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.float64))
    with packed_linears(net) as n:
        assert n == 1
        assert layer_forward_is_packed(net[0]) and not layer_forward_is_packed(net[1])
    with packed_linears(net, max_bytes=8 * 8 * 4 - 1) as n:  # over the memory cap: no copies
        assert n == 0 and packed_count() == 0 and "forward" not in net[0].__dict__
    meta = nn.Linear(4, 4, device="meta")
    assert "meta" in packing_unsupported(meta)
    with packed_linears(meta) as n:
        assert n == 0 and "forward" not in meta.__dict__


def test_compiled_forward_uses_the_operator_and_is_not_recompiled():
    net, x = _net(), torch.randn(6, 48)
    graphs: list[str] = []

    def backend(gm, example_inputs):  # records each compiled graph, runs it as traced
        graphs.append(gm.code)
        return gm.forward

    compiled = torch.compile(net, backend=backend, dynamic=False)
    with torch.no_grad():
        for scale in (1.0, 3.0):  # two generation calls, weights updated in between
            net[0].weight.mul_(scale)
            with packed_linears(net):
                got = compiled(x)
            torch.testing.assert_close(got, _plain(net, x), rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1 and graphs[0].count("packed_linear") == 2
    torch._dynamo.reset()


def test_decode_loop_packs_and_draws_the_same_tokens_as_without():
    tok, rows, model = tiny_sort_decoder(6, 4)
    seen: list[bool] = []
    model.lm_head.register_forward_pre_hook(
        lambda mod, args: seen.append(layer_forward_is_packed(mod)))
    s = DecodeSettings(max_new_tokens=12, temperature=1.0, eos_id=tok.eos_token_id,
                       pad_id=tok.pad_token_id, batch_size=24)
    packed = StaticCacheBackend(pack_weights=True).generate(model, rows, s, seed=5,
                                                            logprobs=True)
    assert seen and all(seen)
    seen.clear()
    plain = StaticCacheBackend(pack_weights=False).generate(model, rows, s, seed=5,
                                                            logprobs=True)
    assert seen and not any(seen)
    assert packed.ids == plain.ids
    for a, b in zip(packed.logprobs, plain.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert packed_count() == 0 and "forward" not in model.lm_head.__dict__
