"""Worker for tests/test_fsdp.py, launched once as

    torchrun --standalone --nproc_per_node 2 tests/_fsdp_worker.py OUT_DIR WORLD_DIR

Every scenario trains with ``sharding="fsdp2"`` on 2 CPU processes (gloo) with the same global
batch as the 1-process run the test does in its own process (:func:`run` serves both); each rank
writes ``OUT_DIR/result_{rank}.json``. The DPO scenarios (reference: the starting policy, LoRA
with adapters disabled, a separate checkpoint) also report their reference log-probs and how the
reference pass held its model (:class:`RefPassProbe`). Rank 0 also saves the DPO policy and
the reward model as ordinary checkpoints (``OUT_DIR/saved_*``) for the test to load.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch

GOOD = [f"a{i}" for i in range(8)]
BAD = [f"b{i}" for i in range(8)]
PROMPT = [f"p{i}" for i in range(8)]
#: scenario -> (trainer, lora)
SCENARIOS: dict[str, tuple[str, bool]] = {
    "dpo": ("dpo", False), "dpo_lora": ("dpo", True), "dpo_ref": ("dpo", False),
    "rm": ("rm", False), "rm_lora": ("rm", True),
    "grpo": ("grpo", False), "grpo_lora": ("grpo", True),
    "ppo": ("ppo", False), "ppo_lora": ("ppo", True),
}
STEPS = 3


def build_world(folder: Path) -> dict[str, str]:
    """A tiny random Llama with a word-level tokenizer, preference pairs and prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefkit.models.tokenizer import word_level_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model_dir = folder / "model"
    tok = word_level_tokenizer(GOOD + BAD + PROMPT)
    tok.save_pretrained(model_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    ref_dir = folder / "ref"  # a separate reference checkpoint (other weights, same tokenizer)
    tok.save_pretrained(ref_dir)
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(ref_dir)
    rng = random.Random(0)

    def words(pool: list[str], n: int) -> str:
        return " ".join(rng.choice(pool) for _ in range(n))

    pairs = [{"prompt": words(PROMPT, 3), "chosen": " " + words(GOOD, rng.randint(2, 5)),
              "rejected": " " + words(BAD, rng.randint(2, 5))} for _ in range(40)]
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs[:32]))
    evals = folder / "eval.jsonl"  # 5 pairs: 3 eval batches of 2 -> ranks hold 2 and 1
    evals.write_text("".join(json.dumps(r) + "\n" for r in pairs[32:37]))
    return {"model": str(model_dir), "data": str(data), "eval": str(evals), "ref": str(ref_dir)}


def prompts() -> list[str]:
    rng = random.Random(3)
    return [" ".join(rng.choice(PROMPT) for _ in range(3)) for _ in range(12)]


def count_good(prompt: str, completion: str) -> float:
    """Deterministic: GOOD words in the answer, minus 0.1 per word."""
    words = completion.split()
    return sum(w in GOOD for w in words) - 0.1 * len(words)


def flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).tolist()


def _common(out: Path, name: str, world_size: int, **kw: Any) -> dict[str, Any]:
    base = dict(output_dir=str(out / name), max_steps=STEPS, learning_rate=3e-3,
                lr_scheduler="constant", logging_steps=1, save_steps=0, save_final=False,
                progress=False, seed=0, lora_r=4, lora_alpha=8)
    if world_size > 1:
        base["sharding"] = "fsdp2"
    base.update(kw)
    return base


def run(out: Path, world: dict[str, str], name: str, kind: str, lora: bool, world_size: int,
        callbacks=(), **kw: Any) -> dict[str, Any]:
    """One scenario; global batch 8 per optimizer step: 2 processes x micro-batch 2 x 2
    accumulation steps, or 1 process x 8 (DPO and RM)."""
    per_process = dict(batch_size=2, gradient_accumulation_steps=2) if world_size > 1 else dict(
        batch_size=8)
    if kind == "dpo":
        from prefkit.train.preference import PreferenceConfig, train_preference

        cfg = PreferenceConfig(**_common(out, name, world_size, **per_process, **kw),
                               model=world["model"], data=world["data"], lora=lora,
                               shuffle=False, reference_cache=str(out / f"cache_{name}"),
                               eval_data=None if lora else world["eval"],
                               reference=world["ref"] if name == "dpo_ref" else "auto")
        res = train_preference(cfg, callbacks=callbacks)
        return {"params": flat(res.model), "history": res.fit.history,
                "class": type(res.model).__name__, "_result": res,
                "ref_sums": res.reference_sums.tolist(), "ref_key": res.reference["key"],
                "ref_cached": res.reference["from_cache"]}
    if kind == "rm":
        from prefkit.train.reward import RewardConfig, train_reward

        cfg = RewardConfig(**_common(out, name, world_size, **per_process, **kw),
                           model=world["model"], data=world["data"], objective="bt",
                           lora=lora, shuffle=False)
        res = train_reward(cfg, callbacks=callbacks)
        return {"params": flat(res.model), "history": res.fit.history,
                "class": type(res.model).__name__, "_result": res}
    from prefkit.models.load import load_model
    from prefkit.rewards.sources import FunctionReward
    from prefkit.train.online import OnlineConfig, train_online

    model, tok = load_model(world["model"], lora=_lora(lora), seed=0)
    cfg = OnlineConfig(**_common(out, name, world_size, **kw), algo=kind, iterations=STEPS,
                       prompts_per_iteration=4, num_generations=4, batch_size=16,
                       max_new_tokens=6, kl_coef=0.05, lora=lora)
    res = train_online(cfg, reward=FunctionReward(count_good), prompts=prompts(), model=model,
                       tokenizer=tok, callbacks=callbacks)
    value = [] if res.value_head is None else flat(res.value_head)  # PPO: the value head too
    return {"params": flat(res.model) + value, "history": res.fit.history,
            "class": type(res.model).__name__, "iterations": res.iterations}


def _lora(lora: bool):
    from prefkit.models.load import LoraSettings

    return LoraSettings(r=4, alpha=8) if lora else None


class Probe:
    """Callback: after step 1, how the trained model is held -- sharded or not, and the share
    of its parameter elements this process stores -- and whether the model of the reference
    pass (``ref_probe``) is gone by then."""

    def __init__(self, ref_probe: RefPassProbe | None = None) -> None:
        self.seen: dict[str, Any] = {}
        self.ref_probe = ref_probe

    def on_log(self, record):
        pass

    def on_save(self, path, step):
        pass

    def on_step_end(self, step, model):
        if step == 1:
            from prefkit.train.sharding import is_sharded

            def local(p):
                return p.to_local() if hasattr(p, "to_local") else p

            total = sum(p.numel() for p in model.parameters())
            held = sum(local(p).numel() for p in model.parameters())
            self.seen = {"sharded": is_sharded(model), "share": held / total}
            if self.ref_probe is not None and self.ref_probe.model is not None:
                self.seen["reference_freed"] = self.ref_probe.model() is None
        return None


class RefPassProbe:
    """Context: records every forward of the reference pass (``reference._batch_logps``): how
    many, whether every parameter of the model it runs is a DTensor, the share of the elements
    this process holds, and (at the first forward) how many causal LMs with plain full weights
    are alive on this process (the caller's policy, on the CPU, is one)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {"forwards": 0, "dtensor": True, "share": None,
                                     "plain_models": None}
        self.model: Any = None  # a weak reference to the pass's model

    def __enter__(self) -> RefPassProbe:
        from prefkit.train import reference

        self.module, self.original = reference, reference._batch_logps

        def probed(model, chunk, **kw):
            import gc
            import warnings
            import weakref

            from torch.distributed.tensor import DTensor
            from transformers import PreTrainedModel

            params = list(model.parameters())
            self.model = weakref.ref(model)
            self.seen["forwards"] += 1
            self.seen["dtensor"] &= all(isinstance(p, DTensor) for p in params)
            held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel()
                       for p in params)
            self.seen["share"] = held / sum(p.numel() for p in params)
            if self.seen["plain_models"] is None:
                gc.collect()
                with warnings.catch_warnings():  # isinstance on deprecated torch objects
                    warnings.simplefilter("ignore")
                    models = [obj for obj in gc.get_objects()
                              if isinstance(obj, PreTrainedModel)
                              and type(obj).__name__.endswith("ForCausalLM")]
                self.seen["plain_models"] = sum(
                    not any(isinstance(p, DTensor) for p in m.parameters()) for m in models)
            return self.original(model, chunk, **kw)

        reference._batch_logps = probed
        return self

    def __exit__(self, *exc) -> None:
        self.module._batch_logps = self.original


class Kill(RuntimeError):
    """Raised by :class:`KillAfter` (a crash mid-run)."""


class KillAfter:
    """Callback: crash right after optimizer step ``step`` (a checkpoint was saved before)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, record):
        pass

    def on_save(self, path, step):
        pass

    def on_step_end(self, step, model):
        if step == self.step:
            raise Kill(f"killed after step {step}")
        return None


def resume_runs(out: Path, world: dict[str, str], world_size: int) -> dict[str, Any]:
    """DPO, 4 steps, a checkpoint every 2: uninterrupted vs. killed after step 3 and relaunched
    with resume_from='latest' (it goes on from checkpoint-2)."""
    kw = dict(max_steps=4, save_steps=2, save_total_limit=None, lr_scheduler="linear")
    full = run(out, world, "resume_full", "dpo", False, world_size, **kw)
    try:
        run(out, world, "resume_killed", "dpo", False, world_size, callbacks=[KillAfter(3)],
            **kw)
        killed = False
    except Kill:
        killed = True
    layout = sorted(p.name for p in (out / "resume_killed" / "checkpoint-2").iterdir())
    resumed = run(out, world, "resume_killed", "dpo", False, world_size, resume_from="latest",
                  **kw)
    return {"killed": killed, "layout": layout, "full": full["params"],
            "resumed_ref_cached": resumed["ref_cached"], "ref_key": full["ref_key"],
            "resumed": resumed["params"],
            "full_loss": [h["loss"] for h in full["history"] if "loss" in h],
            "resumed_loss": [h["loss"] for h in resumed["history"] if "loss" in h]}


def ppo_self_reward(out: Path, world: dict[str, str], world_size: int) -> str | None:
    """PPO with the implicit self-reward under FSDP2: the refusal's message (None: ran)."""
    from prefkit.models.load import load_model
    from prefkit.train.config import ConfigError
    from prefkit.train.online import OnlineConfig, train_online

    model, tok = load_model(world["model"], seed=0)
    cfg = OnlineConfig(**_common(out, "ppo_self", world_size), algo="ppo", iterations=1,
                       prompts_per_iteration=4, num_generations=2, batch_size=8,
                       max_new_tokens=4)
    try:
        train_online(cfg, reward="self", prompts=prompts(), model=model, tokenizer=tok)
    except ConfigError as err:
        return str(err)
    return None


def main(out: Path, world_dir: Path) -> None:
    faulthandler.enable()
    world = json.loads((world_dir / "world.json").read_text())
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    res: dict[str, Any] = {"world_size": world_size}
    for name, (kind, lora) in SCENARIOS.items():
        ref_probe = RefPassProbe()
        probe = Probe(ref_probe)
        with ref_probe:
            got = run(out, world, name, kind, lora, world_size, callbacks=[probe])
        got["probe"] = probe.seen
        got["ref_pass"] = ref_probe.seen
        result = got.pop("_result", None)
        if rank == 0 and name in ("dpo", "rm"):
            if kind == "dpo":
                from prefkit.train.preference import save_policy

                save_policy(result, out / "saved_dpo")
            else:
                result.model.save_pretrained(out / "saved_rm", result.tokenizer)
        res[name] = got
        del result  # no model of a finished scenario stays alive into the next one
    res["resume"] = resume_runs(out, world, world_size)
    res["ppo_self_reward"] = ppo_self_reward(out, world, world_size)
    (out / f"result_{rank}.json").write_text(json.dumps(res))
    if torch.distributed.is_initialized():  # a clean exit (no abort while a peer tears down)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    # as tests/_ddp_worker.py: skip the static destructors (gloo teardown rarely aborts)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
