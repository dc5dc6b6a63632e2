"""Worker for tests/test_train_distributed.py, launched as

    torchrun --nproc_per_node 2 tests/_ddp_worker.py OUT_DIR

Each scenario trains with prefkit.train.fit on 2 CPU processes (gloo) and every rank writes
``OUT_DIR/result_{rank}.json``; the test compares against 1-process runs in its own process.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from prefkit.train import LoopConfig, NonFiniteLossError, StepOutput, fit

# 8 examples per global step; uneven per-process micro-batches: rank 0 gets the even-indexed
# batches (3, 6, 1 examples), rank 1 the odd ones (5, 2, 7)
UNEVEN = [[0, 1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15], [16], list(range(17, 24))]


def make_data(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = torch.sin(x @ torch.tensor([1.0, -2.0, 0.5])) + 0.1
    return TensorDataset(x, y)


def make_model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    )


def step_fn(model, batch) -> StepOutput:
    x, y = batch
    err = (model(x).squeeze(-1) - y) ** 2
    return StepOutput(
        loss_sum=err.sum(), n_examples=len(y), metrics_sum={"abs_err": err.detach().sqrt().sum()}
    )


def config(out: Path, name: str, **kw) -> LoopConfig:
    base = dict(
        output_dir=str(out / name),
        learning_rate=1e-2,
        lr_scheduler="constant",
        logging_steps=1,
        save_steps=0,
        save_final=False,
        progress=False,
    )
    base.update(kw)
    return LoopConfig(**base)


def flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def main(out: Path) -> None:
    faulthandler.enable()  # a C++ abort prints the Python stack of every thread
    rank = int(os.environ["RANK"])
    ds = make_data()
    res: dict = {"world_size": int(os.environ["WORLD_SIZE"])}

    # 2 x batch 4 (and 2 x 2 x accumulation 2) == 1 x batch 8, with eval over 5 uneven batches
    for name, bs, ga in [("even", 4, 1), ("ga", 2, 2)]:
        model = make_model()
        r = fit(
            model,
            step_fn,
            DataLoader(ds, batch_size=bs),
            config(out, name, max_steps=3, gradient_accumulation_steps=ga),
            eval_data=DataLoader(ds, batch_size=5),
        )
        res[name] = {"params": flat(model), "history": r.history}

    model = make_model()
    r = fit(
        model, step_fn, DataLoader(ds, batch_sampler=UNEVEN), config(out, "uneven", max_steps=3)
    )
    res["uneven"] = {"params": flat(model), "history": r.history}

    # exact resume with shuffling and dropout on 2 processes
    def loader():
        return DataLoader(ds, batch_size=2, shuffle=True)

    kw = dict(max_steps=8, save_steps=3, save_total_limit=None, lr_scheduler="linear")
    full = make_model(dropout=0.2)
    r_full = fit(full, step_fn, loader(), config(out, "full", **kw))
    resumed = make_model(dropout=0.2)
    ckpt = str(out / "full" / "checkpoint-3")
    r_res = fit(resumed, step_fn, loader(), config(out, "resumed", resume_from=ckpt, **kw))
    res["resume"] = {
        "full": r_full.history,
        "resumed": r_res.history,
        "params_full": flat(full),
        "params_resumed": flat(resumed),
    }

    # NaN on rank 1 only, step 2 micro-batch 0: every rank must raise (no hang)
    calls = {"n": 0}

    def nan_on_rank1(model, batch):
        o = step_fn(model, batch)
        if rank == 1 and calls["n"] == 1:
            o.loss_sum = o.loss_sum * float("nan")
        calls["n"] += 1
        return o

    try:
        fit(make_model(), nan_on_rank1, DataLoader(ds, batch_size=4), config(out, "nan"))
        res["nan"] = None
    except NonFiniteLossError as exc:
        res["nan"] = {"message": str(exc), "step": exc.step, "micro_batch": exc.micro_batch}

    (out / f"result_{rank}.json").write_text(json.dumps(res))
    if torch.distributed.is_initialized():  # a clean exit (no abort while a peer tears down)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # torch's C++ teardown of the gloo group at interpreter exit rarely aborts ("terminate
    # called without an active exception", ~1 run in 10 here) after all work is done and the
    # results are written: skip the static destructors
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
