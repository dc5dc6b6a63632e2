"""prefkit.train.fit on 2 CPU processes (torchrun, gloo) equals 1 process with the global batch.

One torchrun launch (tests/_ddp_worker.py) runs every scenario; this file computes the
1-process references in-process and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import _ddp_worker as w
from prefkit.train import fit

WORKER = Path(__file__).with_name("_ddp_worker.py")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, HF_HOME=str(out / "hf"), OMP_NUM_THREADS="1")
    # --standalone: rendezvous on a free local port (other jobs may hold the default 29500)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"result_{r}.json").read_text()) for r in (0, 1)]


def reference(tmp_path: Path, name: str, loader: DataLoader, **kw):
    model = w.make_model()
    res = fit(model, w.step_fn, loader, w.config(tmp_path, name, max_steps=3), **kw)
    return torch.tensor(w.flat(model)), res.history


@pytest.mark.slow
def test_two_processes_equal_one_process(ddp, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert [r["world_size"] for r in ddp] == [2, 2]
    ds = w.make_data()
    ref_params, ref_hist = reference(
        tmp_path, "ref", DataLoader(ds, batch_size=8), eval_data=DataLoader(ds, batch_size=5)
    )
    ref_train = [h for h in ref_hist if "loss" in h]
    ref_eval = [h for h in ref_hist if "eval/loss" in h]
    assert not torch.allclose(ref_params, torch.tensor(w.flat(w.make_model())), atol=1e-3)
    for scenario in ("even", "ga", "uneven"):
        for rank in (0, 1):
            got = ddp[rank][scenario]
            params = torch.tensor(got["params"])
            assert torch.allclose(params, ref_params, atol=1e-5, rtol=0), (scenario, rank)
            train = [h for h in got["history"] if "loss" in h]
            assert [h["examples"] for h in train] == [8, 8, 8]
            assert [h["loss"] for h in train] == pytest.approx(
                [h["loss"] for h in ref_train], abs=1e-5
            )
            assert [h["abs_err"] for h in train] == pytest.approx(
                [h["abs_err"] for h in ref_train], abs=1e-5
            )
    for rank in (0, 1):  # eval: 5 uneven batches split over ranks, no duplicates
        ev = [h for h in ddp[rank]["even"]["history"] if "eval/loss" in h]
        assert ev[-1]["eval/examples"] == 24
        assert ev[-1]["eval/loss"] == pytest.approx(ref_eval[-1]["eval/loss"], abs=1e-5)


@pytest.mark.slow
def test_two_process_resume_is_exact(ddp):
    for rank in (0, 1):
        r = ddp[rank]["resume"]
        tail = [h for h in r["full"] if h["step"] > 3]
        assert [h["step"] for h in r["resumed"]] == [4, 5, 6, 7, 8]
        assert [h["loss"] for h in r["resumed"]] == pytest.approx(
            [h["loss"] for h in tail], abs=1e-7
        )
        assert r["params_resumed"] == pytest.approx(r["params_full"], abs=1e-7)

    def untimed(hist):
        return [{k: v for k, v in h.items() if not k.endswith("_per_s")} for h in hist]

    assert untimed(ddp[0]["resume"]["full"]) == untimed(ddp[1]["resume"]["full"])  # same log


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(ddp):
    for rank in (0, 1):
        nan = ddp[rank]["nan"]
        assert nan is not None, f"rank {rank} did not raise"
        assert nan["step"] == 2 and nan["micro_batch"] == 0
        assert "step 2" in nan["message"] and "process 1" in nan["message"]
