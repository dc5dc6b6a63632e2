"""FSDP2 sharding (``sharding="fsdp2"``) on 2 CPU processes (torchrun, gloo) equals 1 process.

One torchrun launch (tests/_fsdp_worker.py) trains DPO, a Bradley-Terry reward model, GRPO and
PPO (its value head among the compared parameters), each with and without LoRA, and DPO against
a separate reference checkpoint, with micro-batch 2 x 2 accumulation steps per process (global
batch 8), plus a DPO run killed after step 3 and resumed from its sharded checkpoint-2. The DPO
runs' reference pass runs on a sharded reference (instrumented in the worker) and gives the
1-process reference log-probs. This file runs the 1-process references (batch 8, no
accumulation) in its own process and compares parameters. The quick tests check the wrapping
rule and the mixed-precision policy in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import _fsdp_worker as w
from prefkit.train import sharding

WORKER = Path(__file__).with_name("_fsdp_worker.py")


# --- quick: the wrapping rule, in one process ---------------------------------------------------


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=32)
    return LlamaForCausalLM(config)


def test_units_are_layers_then_the_model():
    model = _tiny_llama()
    units = sharding.shard_units(model)
    assert units[:3] == list(model.model.layers)
    assert units[3:] == [model]  # the root holds embeddings, norm and head


def test_lora_wrapper_stays_outside_the_sharded_base_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    units = sharding.shard_units(model)
    base = model.get_base_model()
    # layers, then the CausalLM (generate enters it directly); the peft wrapper owns no weights
    assert units == [*base.model.layers, base]


def test_root_with_own_parameters_is_a_unit_and_custom_stacks_are_found():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _tiny_llama().model  # a PreTrainedModel (LlamaModel)
            self.head = torch.nn.Linear(16, 1)

    m = Head()
    assert sharding.shard_units(m) == [*m.backbone.layers, m.backbone, m]

    class Stack(torch.nn.Module):  # no transformers: the largest ModuleList of one class
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(5))
            self.extra = torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.Linear(4, 4)])

    s = Stack()
    assert sharding.decoder_layers(s) == list(s.blocks)


def test_ppo_module_is_one_root_over_the_layers():
    """PPO under FSDP2: the policy-with-value root owns embeddings, norm, LM head and value head
    (no unit for the pretrained model), so the decoder path and generation run inside it."""
    from prefkit.train.online import PolicyWithValue

    module = PolicyWithValue(_tiny_llama(), value_head=True)
    units = sharding.shard_units(module, pretrained_units=False)
    assert units == [*module.policy.model.layers, module]
    assert sharding.shard_units(module) == [*module.policy.model.layers, module.policy, module]


def test_mixed_precision_policy_follows_the_loop_setting():
    none = sharding.mixed_precision_policy("no")
    assert none.param_dtype is None and none.reduce_dtype is None
    bf16 = sharding.mixed_precision_policy("bf16")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32
    with pytest.raises(ValueError, match="bf16"):
        sharding.mixed_precision_policy("fp16")


def test_fsdp2_with_one_process_trains_the_model_as_is(tmp_path):
    """One process: nothing to split; the result equals sharding='ddp' exactly."""
    from prefkit.train import LoopConfig, StepOutput, fit

    def step(model, batch):
        x = batch
        return StepOutput(loss_sum=(model(x) ** 2).sum(), n_examples=len(x))

    data = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    params = {}
    for mode in ("ddp", "fsdp2"):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        cfg = LoopConfig(output_dir=str(tmp_path / mode), max_steps=3, sharding=mode,
                         save_steps=0, save_final=False, progress=False, learning_rate=1e-2)
        fit(model, step, data, cfg)
        params[mode] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(params["ddp"], params["fsdp2"])


def _groups(n: int) -> list:
    from prefkit.models.packing import PromptGroup

    gen = torch.Generator().manual_seed(n)

    def ids(k: int) -> list[int]:
        return torch.randint(3, 32, (k,), generator=gen).tolist()

    return [PromptGroup(ids(2 + i % 3), [ids(1 + i % 4), ids(2 + i % 2)]) for i in range(n)]


@pytest.mark.parametrize("n_groups", [5, 2])
def test_sharded_reference_pass_splits_batches_and_pads_forwards(monkeypatch, n_groups):
    """compute_logps_sharded's rule, both ranks of W=2 simulated in one process (the all_reduce
    replaced by the identity, the ranks' tensors then summed): every rank runs the same number
    of forwards (5 groups in batches of 2: 3 batches -> 2 + 2 forwards, one a padding repeat;
    2 groups: 1 batch -> rank 1 repeats batch 0), and the summed rows equal compute_logps'."""
    import torch.distributed as dist

    from prefkit.train import reference

    model = _tiny_llama().eval()
    groups = _groups(n_groups)
    plain = reference.compute_logps(model, groups, pad_id=0, batch_groups=2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: None)
    calls: list[int] = []
    inner = reference._batch_logps

    def counted(m, chunk, **kw):
        calls.append(len(chunk))
        return inner(m, chunk, **kw)

    monkeypatch.setattr(reference, "_batch_logps", counted)
    parts, forwards = [], []
    for rank in (0, 1):
        calls.clear()
        parts.append(reference.compute_logps_sharded(model, groups, pad_id=0, rank=rank,
                                                     world_size=2, batch_groups=2))
        forwards.append(len(calls))
    n_batches = -(-n_groups // 2)
    assert forwards == [-(-n_batches // 2)] * 2
    assert torch.equal(parts[0] + parts[1], plain)  # each row from exactly one rank
    assert bool(((parts[0] != 0) & (parts[1] != 0)).any()) is False


def test_deepspeed_launch_is_refused(monkeypatch, tmp_path):
    from prefkit.train import ConfigError, LoopConfig, make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed is not supported.*--sharding fsdp2"):
        make_accelerator(LoopConfig(output_dir=str(tmp_path)))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate's plugin: prefkit shards
    with pytest.raises(ConfigError, match="FSDP plugin.*--sharding fsdp2"):
        make_accelerator(LoopConfig(output_dir=str(tmp_path)))


def test_sharding_flag_on_the_training_commands():
    from typer.testing import CliRunner

    from prefkit.cli import app

    runner = CliRunner()
    for command in (["train", "preference"], ["rm", "train"], ["train", "online"]):
        assert "--sharding" in runner.invoke(app, [*command, "--help"]).output
    bad = runner.invoke(app, ["train", "preference", "--model", "m", "--data", "d",
                              "--sharding", "zero3"])
    assert bad.exit_code == 2
    assert "ddp, fsdp2" in bad.output


# --- slow: 2 processes under torchrun ----------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("fsdp_world")
    built = w.build_world(folder)
    (folder / "world.json").write_text(json.dumps(built))
    return folder, built


@pytest.fixture(scope="module")
def two(tmp_path_factory, world) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("fsdp2")
    env = dict(os.environ, HF_HOME=str(out / "hf"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(WORKER), str(out), str(world[0])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [json.loads((out / f"result_{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def one(tmp_path_factory, world) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("one_process")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1)
    try:
        res = {}
        for name, (kind, lora) in w.SCENARIOS.items():
            got = w.run(out, world[1], name, kind, lora, 1)
            got.pop("_result", None)
            res[name] = got
        return res
    finally:
        torch.set_num_threads(before)


def tolerance(name: str) -> float:
    """Largest parameter difference allowed between 2 sharded processes and 1: 1e-5, and 2e-5
    for the full reward model. The two runs sum in different orders (micro-batches of 2 vs 8
    pairs; the segmented attention pads segments to the micro-batch's longest), and after 3
    AdamW steps at lr 3e-3 an entry whose gradient is near AdamW's eps (1e-8) turns that
    rounding noise into a visible update difference. Measured in the reward model: 2 entries of
    ~20,000 differ by more than 1e-6, the largest by 8.5e-6 with dense attention and 1.2e-5 with
    the segmented attention; every other entry agrees within 1e-6."""
    return 2e-5 if name == "rm" else 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", list(w.SCENARIOS))
def test_two_sharded_processes_equal_one_process(two, one, world, name):
    _, ranks = two
    ref = torch.tensor(one[name]["params"])
    kind, lora = w.SCENARIOS[name]
    for rank in (0, 1):
        got = ranks[rank]
        assert got["world_size"] == 2
        params = torch.tensor(got[name]["params"])
        assert params.shape == ref.shape
        diff = float((params - ref).abs().max())
        assert diff <= tolerance(name), (name, rank, diff)
        assert got[name]["probe"]["sharded"]  # trained as FSDP2 units, each rank half
        assert got[name]["probe"]["share"] == pytest.approx(0.5, abs=0.01)
        assert not got[name]["class"].startswith("FSDP")  # the caller's model, plain again
        train = [h for h in got[name]["history"] if "loss" in h]
        assert len(train) == w.STEPS
        ref_train = [h for h in one[name]["history"] if "loss" in h]
        assert [h["loss"] for h in train] == pytest.approx([h["loss"] for h in ref_train],
                                                           abs=1e-5)
    if name == "dpo":  # eval over 3 batches held 2 / 1 by the ranks (padded forwards)
        ev = [h for h in ranks[0][name]["history"] if "eval/loss" in h][-1]
        ref_ev = [h for h in one[name]["history"] if "eval/loss" in h][-1]
        assert ev["eval/examples"] == ref_ev["eval/examples"] == 5
        assert ev["eval/loss"] == pytest.approx(ref_ev["eval/loss"], abs=1e-5)


#: DPO scenarios and their reference: the starting policy, the LoRA model with adapters
#: disabled, a separate checkpoint; groups in the reference pass (train + eval), batches of 16
REFERENCE_RUNS = {"dpo": 37, "dpo_lora": 32, "dpo_ref": 37}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFERENCE_RUNS))
def test_sharded_reference_pass_equals_one_process(two, one, name):
    out, ranks = two
    ref = torch.tensor(one[name]["ref_sums"])
    n_batches = -(-REFERENCE_RUNS[name] // 16)
    for rank in (0, 1):
        got = ranks[rank][name]
        diff = float((torch.tensor(got["ref_sums"]) - ref).abs().max())
        assert diff <= 1e-5, (name, rank, diff)
        assert got["ref_key"] == one[name]["ref_key"]  # the same content hash: one cache file
        assert not got["ref_cached"]
        seen = got["ref_pass"]
        # every forward of the pass ran on a model whose every parameter is a DTensor holding
        # half of the elements; each rank ran as many forwards (the shorter one padded)
        assert seen["dtensor"] and seen["share"] == pytest.approx(0.5, abs=0.01)
        assert seen["forwards"] == -(-n_batches // 2)
        # the only causal LM with full weights on the process: the caller's policy (CPU);
        # a separate reference checkpoint was sharded as loaded
        assert seen["plain_models"] == 1
        assert got["probe"]["reference_freed"]  # gone before the first optimizer step ended
    files = sorted(p.name for p in (out / f"cache_{name}").iterdir())
    assert files == [f"ref-{one[name]['ref_key']}.pt"]  # written once, by the main process
    cached = torch.load(out / f"cache_{name}" / files[0], weights_only=True)
    assert cached.shape[0] == REFERENCE_RUNS[name]
    assert float((cached[: len(ref)] - ref).abs().max()) <= 1e-5


@pytest.mark.slow
def test_separate_reference_checkpoint_was_used(one):
    diff = torch.tensor(one["dpo_ref"]["ref_sums"]) - torch.tensor(one["dpo"]["ref_sums"])
    assert float(diff.abs().max()) > 1e-2


@pytest.mark.slow
def test_the_run_trained(one, world):
    """The 3 steps moved the weights (so the equality above is not trivially true)."""
    from prefkit.models.load import load_model

    start = torch.tensor(w.flat(load_model(world[1]["model"])[0]))
    for name in ("dpo", "grpo", "ppo"):
        trained = torch.tensor(one[name]["params"])
        assert float((trained[: len(start)] - start).abs().max()) > 1e-3, name
    value_head = torch.tensor(one["ppo"]["params"])[len(start):]  # zero-initialized
    assert value_head.numel() == 32 + 1 and float(value_head.abs().max()) > 1e-3


@pytest.mark.slow
def test_ppo_with_self_reward_is_refused_under_fsdp2(two):
    _, ranks = two
    for rank in (0, 1):
        message = ranks[rank]["ppo_self_reward"]
        assert message is not None and "algo=ppo does not support reward 'self'" in message
        assert "sharding='ddp'" in message


@pytest.mark.slow
def test_killed_run_resumes_from_its_sharded_checkpoint(two):
    _, ranks = two
    for rank in (0, 1):
        r = ranks[rank]["resume"]
        assert r["killed"]
        assert "fsdp2" in r["layout"] and "trainer_state.json" in r["layout"]
        diff = float((torch.tensor(r["resumed"]) - torch.tensor(r["full"])).abs().max())
        assert diff <= 1e-6, (rank, diff)
        assert r["resumed_loss"] == pytest.approx(r["full_loss"][2:], abs=1e-6)
        assert r["resumed_ref_cached"]  # the relaunch read the killed run's reference cache


@pytest.mark.slow
def test_saved_models_are_ordinary_checkpoints(two, one):
    from prefkit.models.load import load_model
    from prefkit.rewards import RewardModel

    out, _ = two
    policy, _ = load_model(str(out / "saved_dpo"))
    diff = (torch.tensor(w.flat(policy)) - torch.tensor(one["dpo"]["params"])).abs().max()
    assert float(diff) <= 1e-5
    rm = RewardModel.from_pretrained(str(out / "saved_rm"))
    diff = (torch.tensor(w.flat(rm)) - torch.tensor(one["rm"]["params"])).abs().max()
    assert float(diff) <= tolerance("rm")
