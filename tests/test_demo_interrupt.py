"""Ctrl-C during `make demo` (`prefkit demo`): the message names the step that stopped (and the
lab stage, in steps 10 and 11) and says that a rerun with the same --workdir resumes the lab
from its cached stages; exit 130. The slow steps are replaced by stubs (the data-layer steps
run)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import prefkit.demo as demo
import prefkit.lab.pipeline as pipeline
from prefkit.cli import app


@pytest.fixture
def quick_tour(monkeypatch):
    """Steps 6-9 as stubs; step 10's run_lab reports a cached stage and a finished one, then
    Ctrl-C arrives in the middle of the second method. ``state["at"]`` moves the Ctrl-C into
    step 8 instead."""
    state = {"at": "lab"}

    def alignment(console, work):
        if state["at"] == "alignment":
            raise KeyboardInterrupt
        return {}

    def run_lab(config=None, *, progress=None, **overrides):
        progress.cached("SFT base model", "cache/base/sort-abc")
        progress.stage_dir = f"{overrides['workdir']}/stages/0123"
        with progress.stage("method 1/2 dpo"):
            pass
        with progress.stage("method 2/2 grpo", "online"):
            raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_campaign_tour", lambda console, work: {})
    monkeypatch.setattr(demo, "_arena_tour", lambda console: {})
    monkeypatch.setattr(demo, "_alignment_tour", alignment)
    monkeypatch.setattr(demo, "_reward_model_tour", lambda console, work: {})
    monkeypatch.setattr(pipeline, "run_lab", run_lab)
    return state


def test_ctrl_c_in_the_lab_step_names_the_stage_and_how_to_resume(tmp_path, quick_tour):
    work = tmp_path / "demo-out"
    res = CliRunner().invoke(app, ["demo", "--workdir", str(work)])
    assert res.exit_code == 130, res.output
    message = " ".join(res.stderr.split())
    assert (f"demo interrupted in step 10 of 11 (the loop: prefkit lab run), during method 2/2 "
            f"grpo; the lab's finished stages (SFT base model, method 1/2 dpo) are cached in "
            f"{work}/lab/stages/0123: run prefkit demo --workdir {work} again to resume the lab "
            "from them") in message
    assert "Traceback" not in res.output
    as_json = CliRunner().invoke(app, ["demo", "--workdir", str(work), "--json"])
    assert as_json.exit_code == 130
    assert "during method 2/2 grpo" in as_json.stderr


def test_ctrl_c_before_the_lab_and_in_a_temporary_folder(tmp_path, quick_tour):
    quick_tour["at"] = "alignment"
    work = tmp_path / "w"
    res = CliRunner().invoke(app, ["demo", "--workdir", str(work)])
    assert res.exit_code == 130, res.output
    message = " ".join(res.stderr.split())
    assert ("demo interrupted in step 8 of 11 (direct alignment of a tiny Llama); run prefkit "
            f"demo --workdir {work} again to continue (steps 1-9 run again; the labs of steps "
            "10-11 resume from their cached stages once they exist)") in message
    # without --workdir the files live in a temporary folder that is deleted: nothing to resume
    quick_tour["at"] = "lab"
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 130
    message = " ".join(res.stderr.split())
    assert "during method 2/2 grpo" in message
    assert ("this demo ran in a temporary folder, now deleted: run prefkit demo --workdir DIR "
            "(as make demo does) so that a rerun resumes the lab from its cached stages"
            ) in message


def test_ctrl_c_in_the_verifiable_reward_step(tmp_path, quick_tour, monkeypatch):
    """Step 11 (DAPO on a checkable task) runs its own lab in ``lab-rlvr``: the message names
    it and where its finished stages are."""
    monkeypatch.setattr(demo, "_lab_tour", lambda console, work, keep=True, position=None: {})
    work = tmp_path / "demo-out"
    res = CliRunner().invoke(app, ["demo", "--workdir", str(work)])
    assert res.exit_code == 130, res.output
    message = " ".join(res.stderr.split())
    assert ("demo interrupted in step 11 of 11 (RL with a verifiable reward (DAPO)), during "
            "method 2/2 grpo; the lab's finished stages (SFT base model, method 1/2 dpo) are "
            f"cached in {work}/lab-rlvr/stages/0123") in message
