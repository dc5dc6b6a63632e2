"""GPU attention paths checked on the CPU: flex_attention with a block mask built from the pack's
segment ids == the dense sdpa mask; the padding-free FlashAttention-2 layout == padded rows;
automatic back-end selection."""

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from prefkit.models import attention as attn
from prefkit.models import logprobs
from prefkit.models.attention import (
    FLEX_IMPLEMENTATION,
    packed_block_mask,
    segment_mask_mod,
    select_attention,
    use_attention,
)
from prefkit.models.load import tiny_llama_config
from prefkit.models.logprobs import model_attention_mask, sequence_logps, sequence_logps_padded
from prefkit.models.packing import (
    PromptGroup,
    document_segments,
    pack_groups,
    pack_sequences,
    packed_groups,
    pad_groups,
    segment_mask,
)

VOCAB = 300
PAD = 0
TOL = 1e-5

# several prompts per row, K = 1..4 responses, rows of 40 so the last row ends in padding
SHAPE = [(5, [3, 4]), (9, [2]), (3, [5, 1, 2, 7]), (12, [6, 6]), (1, [4]), (7, [2, 2, 3]),
         (20, [9, 1, 8])]


@pytest.fixture(autouse=True)
def _quiet_flex():
    # eager flex_attention on the CPU warns once that it is not compiled (expected here)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
        yield


def _groups(shape=SHAPE, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=gen).tolist()

    return [PromptGroup(ids(p), [ids(r) for r in rs]) for p, rs in shape]


def _model(kv_heads=4, seed=0):
    torch.manual_seed(seed)
    config = tiny_llama_config(
        VOCAB, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
        max_position_embeddings=256,
    )  # fmt: skip
    config.num_key_value_heads = kv_heads
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def _tile_sets(num, idx):
    return [[sorted(idx[r, 0, m, : num[r, 0, m]].tolist()) for m in range(num.shape[2])]
            for r in range(num.shape[0])]


@pytest.mark.parametrize("block_size", [4, 8, 16])
def test_block_structure_equals_dense_evaluation(block_size):
    """The tiles built from segment boundaries are exactly those torch's create_block_mask
    finds by evaluating the mask densely (partial tiles and full tiles, per row and query
    tile), and mask_mod evaluated on every (query, key) is the dense sdpa mask."""
    batch = pack_groups(_groups(), max_length=40, pad_id=PAD, mask_dtype=torch.bool)
    rows, width = batch.input_ids.shape
    assert rows >= 3 and int((batch.token_group[-1] < 0).sum()) > 0  # last row ends in padding
    ours = packed_block_mask(batch.token_group, batch.token_part, block_size=block_size)
    mod = segment_mask_mod(batch.token_group, batch.token_part)
    ref = create_block_mask(mod, rows, None, width, width, device="cpu", BLOCK_SIZE=block_size)
    assert _tile_sets(ours.kv_num_blocks, ours.kv_indices) == _tile_sets(
        ref.kv_num_blocks, ref.kv_indices)
    assert _tile_sets(ours.full_kv_num_blocks, ours.full_kv_indices) == _tile_sets(
        ref.full_kv_num_blocks, ref.full_kv_indices)
    assert int(ours.full_kv_num_blocks.sum()) > 0 or block_size > 8
    b, q, k = (torch.arange(n) for n in (rows, width, width))
    dense = mod(b[:, None, None], 0, q[None, :, None], k[None, None, :])
    assert torch.equal(dense, batch.attention_mask[:, 0])


def test_windowed_block_mask_is_the_windowed_dense_mask():
    batch = pack_groups(_groups(), max_length=40, pad_id=PAD, mask_dtype=torch.bool)
    rows, width = batch.input_ids.shape
    window = (batch.position_ids, 5)
    mod = segment_mask_mod(batch.token_group, batch.token_part, window=window)
    b, q, k = (torch.arange(n) for n in (rows, width, width))
    dense = mod(b[:, None, None], 0, q[None, :, None], k[None, None, :])
    distance = batch.position_ids[:, :, None] - batch.position_ids[:, None, :]
    expect = batch.attention_mask[:, 0] & ((distance < 5) | torch.eye(width, dtype=torch.bool))
    assert torch.equal(dense, expect)
    ours = packed_block_mask(batch.token_group, batch.token_part, block_size=8, window=window)
    ref = create_block_mask(mod, rows, None, width, width, device="cpu", BLOCK_SIZE=8)
    assert int(ours.full_kv_num_blocks.sum()) == 0  # every touched tile is evaluated
    touched = _tile_sets(ours.kv_num_blocks, ours.kv_indices)
    needed = _tile_sets(ref.kv_num_blocks, ref.kv_indices)
    full = _tile_sets(ref.full_kv_num_blocks, ref.full_kv_indices)
    for r in range(rows):
        for m in range(len(touched[r])):
            assert set(needed[r][m]) | set(full[r][m]) <= set(touched[r][m])


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_flex_forward_equals_sdpa_on_prefix_shared_packs(kv_heads, monkeypatch):
    """Summed completion log-probs per response, per-token log-probs and the logits at the
    completion positions: flex (block mask from segment ids, no dense mask in the batch) ==
    sdpa (dense mask) to 1e-5; 4 query heads over 2 key/value heads for GQA."""
    monkeypatch.setattr(attn, "DEFAULT_BLOCK_SIZE", 8)  # several tiles per row
    groups = _groups()
    model = _model(kv_heads)
    dense = pack_groups(groups, max_length=40, pad_id=PAD)
    sparse = pack_groups(groups, max_length=40, pad_id=PAD, mask_dtype=None)
    assert sparse.attention_mask is None and dense.input_ids.shape[0] >= 3
    rows, cols = dense.logit_positions.T
    with torch.no_grad():
        ref = sequence_logps(model, dense)
        ref_logits = model(input_ids=dense.input_ids, attention_mask=dense.attention_mask,
                           position_ids=dense.position_ids).logits[rows, cols]
        padded = sequence_logps_padded(model, pad_groups(groups, pad_id=PAD))
        assert use_attention(model, "flex", "cpu") == "flex"
        assert model.config._attn_implementation == FLEX_IMPLEMENTATION
        out = sequence_logps(model, sparse)
        mask = model_attention_mask(model, sparse)
        assert type(mask).__name__ == "BlockMask"
        logits = model(input_ids=sparse.input_ids, attention_mask=mask,
                       position_ids=sparse.position_ids).logits[rows, cols]
    assert torch.allclose(out.sum, ref.sum, atol=TOL, rtol=0)
    assert torch.allclose(out.per_token, ref.per_token, atol=TOL, rtol=0)
    assert torch.allclose(out.sum, padded.sum, atol=TOL, rtol=0)
    assert torch.allclose(logits, ref_logits, atol=TOL, rtol=0)
    assert torch.equal(out.count, ref.count) and torch.all(ref.sum[ref.mask] < 0)
    # back to sdpa on the CPU
    assert use_attention(model, "auto") == "sdpa" and model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2"])
def test_flex_with_sliding_windows_and_softcapping(family):
    """Sliding-window layers (all layers: Mistral; mixed per layer type: Qwen2, Gemma 2) with a
    window of 4, shorter than the rows, get a windowed block mask; Gemma 2's attention logit
    soft-capping runs as a score_mod. Flex == the dense path == plain padded rows, 1e-5."""
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=128, sliding_window=4)
    config = {"mistral": lambda: MistralConfig(**common),
              "qwen2": lambda: Qwen2Config(**common, use_sliding_window=True,
                                           max_window_layers=1),
              "gemma2": lambda: Gemma2Config(**common, attn_logit_softcapping=5.0,
                                             final_logit_softcapping=3.0)}[family]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager" if family == "gemma2" else "sdpa").eval()
    groups = _groups(SHAPE[:5])
    with torch.no_grad():
        padded = sequence_logps_padded(model, pad_groups(groups, pad_id=PAD))
        dense = sequence_logps(model, pack_groups(groups, max_length=40, pad_id=PAD))
        use_attention(model, "flex", "cpu")
        flex = sequence_logps(model, pack_groups(groups, max_length=40, pad_id=PAD,
                                                 mask_dtype=None))
    for out in (dense, flex):
        assert torch.allclose(out.sum, padded.sum, atol=TOL, rtol=0)
        assert torch.allclose(out.per_token, padded.per_token, atol=TOL, rtol=0)


class _Sizes(TorchDispatchMode):
    """Records the element count of every tensor an op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, tuple | list) else [out]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_no_dense_mask_on_the_flex_path():
    """What is asserted: while ``pack_groups(mask_dtype=None)`` packs the rows and
    ``packed_block_mask`` builds the BlockMask (with 16-token tiles), no op creates a tensor of
    L*L elements or more (L = row length; the largest is the [R, n_tiles, n_tiles + 1] tile
    count, R * (L/16)^2 << L^2), and the packed batch holds none; the same recorder sees
    R * L * L elements when the dense sdpa mask is built (so it would catch one). Not asserted:
    flex_attention's CPU reference kernel (the eager, uncompiled one these tests run) itself
    materializes the [R, H, L, L] scores and the mask_mod over all (query, key) pairs; the
    compiled GPU kernel evaluates mask_mod per tile and forms neither."""
    shape = SHAPE * 3
    groups = _groups(shape)
    width = 120
    with _Sizes() as sizes:
        batch = pack_groups(groups, max_length=width, pad_id=PAD, mask_dtype=None)
        rows, length = batch.input_ids.shape
        block = packed_block_mask(batch.token_group, batch.token_part, block_size=16)
    assert length > 100 and rows >= 2
    assert 0 < sizes.largest < length * length
    for value in vars(batch).values():
        assert not isinstance(value, torch.Tensor) or value.numel() < length * length
    assert block.kv_num_blocks.shape == (rows, 1, -(-length // 16))
    with _Sizes() as dense:
        segment_mask(batch.token_group, batch.token_part)
    assert dense.largest >= rows * length * length


def test_selection_picks_flex_on_cuda_and_sdpa_on_cpu(monkeypatch):
    assert select_attention("cpu") == "sdpa"
    assert select_attention(torch.device("cpu"), "auto") == "sdpa"
    assert select_attention(None) == "sdpa"
    monkeypatch.setattr(attn, "flex_available", lambda: True)
    assert select_attention(torch.device("cuda")) == "flex"
    assert select_attention("cuda:1", "auto") == "flex"
    assert select_attention("cuda", "sdpa") == "sdpa"
    assert select_attention("cpu", "flex") == "flex"
    with pytest.raises(ValueError, match="one of auto, sdpa, flex"):
        select_attention("cpu", "flash")
    monkeypatch.setattr(attn, "flex_available", lambda: False)
    assert select_attention("cuda") == "sdpa"
    with pytest.raises(ValueError, match="needs torch.nn.attention.flex_attention"):
        select_attention("cuda", "flex")
    # a model reported on a CUDA device is switched to flex (the weights stay where they are)
    monkeypatch.setattr(attn, "flex_available", lambda: True)
    model = _model()
    assert use_attention(model, "auto", torch.device("cuda")) == "flex"
    assert attn.uses_flex(model)
    assert use_attention(model, "auto") == "sdpa" and not attn.uses_flex(model)
    eager = AutoModelForCausalLM.from_config(model.config, attn_implementation="eager")
    assert use_attention(eager, "sdpa") == "sdpa"
    assert eager.config._attn_implementation == "eager"  # left as loaded


def test_attention_option_in_training_configs_and_cli():
    from typer.testing import CliRunner

    from prefkit.cli import app
    from prefkit.train.config import ConfigError, LoopConfig

    assert LoopConfig().attention == "auto"
    assert LoopConfig(attention="flex").attention == "flex"
    with pytest.raises(ConfigError, match="attention"):
        LoopConfig(attention="flash")
    runner = CliRunner()
    for command in (["train", "preference"], ["rm", "train"]):
        bad = runner.invoke(app, [*command, "--model", "m", "--data", "d.jsonl",
                                  "--attention", "flash", "--json"])
        assert bad.exit_code == 2
        assert "attention='flash': expected one of auto, sdpa, flex" in bad.output


def test_padding_free_layout_for_flash_attention(monkeypatch):
    """pack_sequences: one padding-free row, every (prompt, response) its own sequence with
    position_ids restarting at 0. Through a document mask built from the position restarts
    (dense for sdpa, a block mask for flex) and through transformers' own reading of the
    restarts (the FA2 dispatch: no mask, position_ids only; run here by sdpa, which detects
    the packed sequences from position_ids as FA2 does), the log-probs equal the padded
    forward's to 1e-5. A prefix-shared pack given to the FA2 dispatch is re-laid out this way
    first (packed_groups inverts pack_groups)."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    groups = _groups([(5, [4]), (9, [2]), (1, [7]), (12, [3]), (3, [5, 1, 2])])
    batch = pack_sequences(groups)
    model = _model(kv_heads=2)
    assert batch.input_ids.shape == (1, batch.n_tokens) and batch.attention_mask is None
    starts = [0]
    for group in groups:
        for resp in group.response_ids:
            starts.append(starts[-1] + len(group.prompt_ids) + len(resp))
    restarts = (batch.position_ids[0] == 0).nonzero().squeeze(1).tolist()
    assert restarts == starts[:-1] and starts[-1] == batch.n_tokens
    assert torch.equal(batch.token_group, document_segments(batch.position_ids))
    assert bool(_is_packed_sequence(batch.position_ids, 1))
    padded = pad_groups(groups, pad_id=PAD)
    assert batch.target_ids.tolist() == padded.target_ids.tolist()
    with torch.no_grad():
        ref = sequence_logps_padded(model, padded)
        dense = sequence_logps(model, batch)  # sdpa: dense document mask from the segments
        monkeypatch.setattr(logprobs, "_attn_implementation", lambda m: "flash_attention_2")
        assert model_attention_mask(model, batch) is None
        by_positions = sequence_logps(model, batch)
        shared = pack_groups(groups, max_length=32, pad_id=PAD)
        with pytest.raises(ValueError, match="pack_sequences"):
            model_attention_mask(model, shared)
        relaid = sequence_logps(model, shared)  # re-laid out without sharing for FA2
        monkeypatch.undo()
        use_attention(model, "flex", "cpu")
        flex = sequence_logps(model, batch)
    assert packed_groups(shared) == groups
    for out in (dense, by_positions, relaid, flex):
        assert torch.allclose(out.sum, ref.sum, atol=TOL, rtol=0)
        assert torch.allclose(out.per_token, ref.per_token, atol=TOL, rtol=0)
        assert torch.equal(out.count, ref.count)


@pytest.mark.slow
def test_compiled_flex_uses_the_block_structure(monkeypatch):
    """The eager CPU kernel evaluates mask_mod everywhere and ignores the tiles; the compiled
    kernel (the GPU path's, here compiled for the CPU: ~20-60 s) skips untouched tiles and
    runs full tiles without mask_mod, so a wrong tile map would change its output."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention)
    monkeypatch.setattr(attn, "_flex_function", lambda device: compiled)
    monkeypatch.setattr(attn, "DEFAULT_BLOCK_SIZE", 16)
    groups = _groups(SHAPE * 2)
    model = _model(kv_heads=2)
    dense = pack_groups(groups, max_length=64, pad_id=PAD)
    sparse = pack_groups(groups, max_length=64, pad_id=PAD, mask_dtype=None)
    with torch.no_grad():
        ref = sequence_logps(model, dense)
        use_attention(model, "flex", "cpu")
        out = sequence_logps(model, sparse)
    assert torch.allclose(out.sum, ref.sum, atol=TOL, rtol=0)
    assert torch.allclose(out.per_token, ref.per_token, atol=TOL, rtol=0)


def test_preference_trainer_packs_without_dense_mask_when_flex_is_chosen(tmp_path, monkeypatch):
    """The trainer's ``attention`` option goes to use_attention with the run's device; when it
    answers flex the collated packs carry no dense mask (flex builds its block mask on the
    device). Run here with the model left on sdpa, which then builds the dense mask from the
    segment ids: the same parameters as the default run."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from prefkit.models.tokenizer import word_level_tokenizer
    from prefkit.train import preference
    from prefkit.train.preference import PreferenceConfig, train_preference

    words = [f"w{i}" for i in range(20)]
    word_level_tokenizer(words).save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=24, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)).save_pretrained(tmp_path / "model")
    rows = [{"prompt": f"w{i} w{i + 1}", "chosen": f" w{i + 2} w{i + 3}",
             "rejected": f" w{i + 4}"} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(name, attention):
        cfg = PreferenceConfig(
            model=str(tmp_path / "model"), data=str(data), output_dir=str(tmp_path / name),
            max_steps=2, batch_size=4, learning_rate=1e-2, save_steps=0, save_final=False,
            progress=False, reference_cache="none", shuffle=False, seed=0,
            attention=attention)
        return train_preference(cfg).model

    dtypes, calls = [], []
    original_pack, original_use = preference.pack_groups, preference.use_attention

    def pack(*args, **kwargs):
        dtypes.append(kwargs.get("mask_dtype", "default"))
        return original_pack(*args, **kwargs)

    def use(model, choice, device):
        calls.append((choice, torch.device(device).type))
        original_use(model, "sdpa", device)
        return "flex" if choice == "flex" else "sdpa"

    monkeypatch.setattr(preference, "pack_groups", pack)
    monkeypatch.setattr(preference, "use_attention", use)
    dense = run("dense", "auto")
    assert calls == [("auto", "cpu")] and set(dtypes) == {torch.float32}
    dtypes.clear()
    segments = run("segments", "flex")
    assert calls[-1] == ("flex", "cpu") and set(dtypes) == {None}
    for (name, p), (_, q) in zip(dense.named_parameters(), segments.named_parameters(),
                                 strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_reward_model_scores_under_flex_equal_sdpa(tmp_path):
    """Reward pooling on a prefix-shared pack: the backbone on flex (block mask, no dense mask
    in the batch; the last layer then runs whole) scores every response as on sdpa, 1e-5."""
    import json

    from prefkit.models.tokenizer import word_level_tokenizer
    from prefkit.rewards import RewardModel

    word_level_tokenizer([f"w{i}" for i in range(40)]).save_pretrained(str(tmp_path / "tok"))
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"tokenizer": "tok", "hidden_size": 32, "num_layers": 2,
                                "num_heads": 4, "intermediate_size": 64,
                                "max_position_embeddings": 128}))
    model, _ = RewardModel.from_spec(spec, head="scalar", seed=1)
    gen = torch.Generator().manual_seed(1)
    groups = [PromptGroup(torch.randint(4, 44, (p,), generator=gen).tolist(),
                          [torch.randint(4, 44, (r,), generator=gen).tolist() for r in rs])
              for p, rs in [(5, [3, 4]), (9, [2]), (3, [5, 1, 2]), (12, [6, 6]), (1, [4])]]
    with torch.no_grad():
        ref = model(pack_groups(groups, max_length=32, pad_id=PAD))
        use_attention(model.backbone, "flex", "cpu")
        out = model(pack_groups(groups, max_length=32, pad_id=PAD, mask_dtype=None))
    assert torch.equal(out.mask, ref.mask)
    assert torch.allclose(out.rewards, ref.rewards, atol=TOL, rtol=0)
    assert torch.all(out.rewards[out.mask] != 0)
