"""train_online on 2 CPU processes (torchrun, gloo) equals 1 process with the same global batch.

The samples are a pure function of (seed, iteration, global row), each process samples its
contiguous shard of the iteration's prompts and the loss reduction is invariant to sharding,
so the runs must end with the same parameters and log the same rollout statistics. One
torchrun launch (tests/_ddp_online_worker.py) runs every scenario; this file runs the
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

import _ddp_online_worker as w
from prefkit.lab.base_model import build_base_model

WORKER = Path(__file__).with_name("_ddp_online_worker.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    _, _, info = build_base_model(w.TASK, tmp_path_factory.mktemp("base"), **w.SMALL)
    return info["path"]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, model_dir) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_online")
    env = dict(os.environ, HF_HOME=str(out / "hf"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(WORKER), str(out), model_dir]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"result_{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_dir) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("one_process")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1)
    try:
        return {algo: w.run(out, model_dir, algo, algo) for algo in w.SCENARIOS}
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(w.SCENARIOS))
def test_two_processes_equal_one_process(ddp, one_process, model_dir, algo):
    ref = one_process[algo]
    start = torch.tensor(w.flat(w.load_model(model_dir)[0]))
    ref_params = torch.tensor(ref["params"])
    assert (ref_params - start).abs().max() > 1e-3  # the run did train
    assert [it["iteration"] for it in ref["iterations"]] == [0, 1, 2]
    for rank in (0, 1):
        got = ddp[rank]
        assert got["world_size"] == 2
        params = torch.tensor(got[algo]["params"])
        diff = float((params - ref_params).abs().max())
        assert diff <= 1e-5, (algo, rank, diff)
        # the stats are rounded (6 decimals): equal up to the last digit
        assert len(got[algo]["iterations"]) == 3
        for mine, theirs in zip(got[algo]["iterations"], ref["iterations"], strict=True):
            assert mine.keys() == theirs.keys()
            for key, value in theirs.items():
                if value is None:
                    assert mine[key] is None, (algo, key)
                else:
                    assert mine[key] == pytest.approx(value, abs=2e-6), (algo, rank, key)
        assert got[algo]["loss"] == pytest.approx(ref["loss"], abs=1e-5)


@pytest.mark.slow
def test_the_dapo_and_gspo_scenarios_exercise_refill_and_clipping(ddp, one_process):
    """What the 2 == 1 comparison covers: DAPO's dynamic sampling dropped groups and sampled
    refill rounds (whose groups move between processes), and GSPO's off-policy epochs clipped
    sequence ratios."""
    dapo = one_process["dapo"]["iterations"]
    assert all(it["dynamic_sampling/groups_dropped"] > 0 for it in dapo)
    assert any(it["dynamic_sampling/sampling_rounds"] > 1 for it in dapo)
    assert any(c > 0 for c in one_process["gspo"]["clipfrac"])
    assert ddp[0]["gspo"]["clipfrac"] == pytest.approx(one_process["gspo"]["clipfrac"],
                                                       abs=1e-6)
