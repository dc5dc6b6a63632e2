"""The last layer computed only at the positions that are read (prefkit.models.prune) equals
the full forward there, in values and gradients, for every mask form the models see."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefkit.models.load import LoraSettings, apply_lora, tiny_llama_config
from prefkit.models.logprobs import model_attention_mask, sequence_logps, sequence_logps_padded
from prefkit.models.packing import PromptGroup, pack_groups, pad_groups
from prefkit.models.prune import _LastLayerAt, hidden_at, last_layer_supported


def _model(kv_heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4,
                               intermediate_size=96, num_key_value_heads=kv_heads)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def _groups(seed: int = 0) -> list[PromptGroup]:
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, 97, (n,), generator=g).tolist()

    return [PromptGroup(ids(7), [ids(5), ids(3)]), PromptGroup(ids(4), [ids(6), ids(1), ids(2)]),
            PromptGroup(ids(9), [ids(4)])]


def _full_hidden(decoder, rows, cols, **inputs):
    return decoder(**inputs).last_hidden_state[rows, cols]


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_pruned_last_layer_equals_the_full_forward(kv_heads, mask_dtype):
    model = _model(kv_heads)
    decoder = model.get_decoder()
    assert last_layer_supported(decoder)
    batch = pack_groups(_groups(), max_length=40, pad_id=0, mask_dtype=mask_dtype)
    inputs = dict(input_ids=batch.input_ids, attention_mask=model_attention_mask(model, batch),
                  position_ids=batch.position_ids, use_cache=False)
    rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]  # with repeats
    got = hidden_at(decoder, rows, cols, **inputs)
    want = _full_hidden(decoder, rows, cols, **inputs)
    assert torch.allclose(got, want, atol=1e-5)
    assert not isinstance(decoder.layers[-1], _LastLayerAt)  # the layer is restored


def test_gradients_equal_the_full_forward():
    torch.manual_seed(1)
    weights = torch.randn(64) / 8
    grads = []
    for prune in (True, False):
        model = _model(seed=3).train()
        decoder = model.get_decoder()
        batch = pack_groups(_groups(2), max_length=40, pad_id=0)
        inputs = dict(input_ids=batch.input_ids, attention_mask=model_attention_mask(model, batch),
                      position_ids=batch.position_ids, use_cache=False)
        rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
        fn = hidden_at if prune else _full_hidden
        (fn(decoder, rows, cols, **inputs) @ weights).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        a, b = grads[0][name], grads[1][name]
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max()), (name, (a - b).abs().max())


def test_causal_mask_none_and_padded_rows():
    """Left-padded rows (a 2D mask the model turns into its own 4D mask) and no mask."""
    model = _model()
    decoder = model.get_decoder()
    batch = pad_groups(_groups(4), pad_id=0)
    assert torch.allclose(sequence_logps(model, batch).sum,
                          sequence_logps_padded(model, batch).sum, atol=1e-5)
    ids = torch.randint(3, 97, (2, 11))
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([3, 10, 7])
    got = hidden_at(decoder, rows, cols, input_ids=ids, use_cache=False)
    assert torch.allclose(got, _full_hidden(decoder, rows, cols, input_ids=ids), atol=1e-5)


def test_lora_and_unsupported_fall_back_or_prune_exactly():
    model = apply_lora(_model(), LoraSettings(r=4, alpha=8))
    batch = pack_groups(_groups(5), max_length=40, pad_id=0)
    assert last_layer_supported(model.get_base_model().get_decoder())
    assert torch.allclose(sequence_logps(model, batch).sum,
                          sequence_logps(model, batch, path="forward").sum, atol=1e-5)
    plain = _model()
    plain.gradient_checkpointing_enable()
    assert not last_layer_supported(plain.get_decoder())


def test_other_threads_see_the_whole_layer_while_one_prunes(monkeypatch):
    """While one thread's pruned forward is inside the last layer (held there), another thread
    runs a plain forward of the same model (it must get the full output, not the first
    thread's pruned rows) and its own pruned forward at other positions; both pruned results
    equal the full forward, and the real layer is back in place afterwards."""
    import threading

    from prefkit.models import prune

    model = _model()
    decoder = model.get_decoder()
    real_last = decoder.layers[-1]
    batch = pack_groups(_groups(), max_length=40, pad_id=0)
    inputs = dict(input_ids=batch.input_ids, attention_mask=model_attention_mask(model, batch),
                  position_ids=batch.position_ids, use_cache=False)
    rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
    full = decoder(**inputs).last_hidden_state

    inside, release = threading.Event(), threading.Event()
    finish = prune._finish

    def held_finish(*args, **kwargs):
        if threading.current_thread().name == "pruning":  # hold the first thread in the layer
            inside.set()
            assert release.wait(30)
        return finish(*args, **kwargs)

    monkeypatch.setattr(prune, "_finish", held_finish)
    got: dict[str, torch.Tensor] = {}
    worker = threading.Thread(target=lambda: got.update(a=hidden_at(decoder, rows, cols,
                                                                    **inputs)),
                              name="pruning")
    worker.start()
    try:
        assert inside.wait(30)
        assert isinstance(decoder.layers[-1], _LastLayerAt)  # the first thread's wrapper
        plain = decoder(**inputs).last_hidden_state  # this thread: the whole layer
        assert torch.allclose(plain, full, atol=1e-6)
        few_rows, few_cols = rows[::3], cols[::3]
        mine = hidden_at(decoder, few_rows, few_cols, **inputs)
        assert torch.allclose(mine, full[few_rows, few_cols], atol=1e-5)
    finally:
        release.set()
        worker.join(30)
    assert torch.allclose(got["a"], full[rows, cols], atol=1e-5)
    assert decoder.layers[-1] is real_last
