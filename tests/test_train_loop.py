"""prefkit.train.loop: accumulation invariance, exact resume, NaN stop, schedule, clipping,
metrics.jsonl and config loading (tiny float64 models, deterministic data)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prefkit.train.loop
from prefkit.train import (
    Callback,
    ConfigError,
    LoopConfig,
    NonFiniteLossError,
    StepOutput,
    fit,
    load_config,
    parse_overrides,
)
from prefkit.train.checkpoint import list_checkpoints, resolve_resume
from prefkit.train.schedule import lr_factor


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def make_data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)) + 0.1
    return TensorDataset(x, y)


def make_model(seed: int = 0, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    ).double()


def step_fn(model, batch) -> StepOutput:
    x, y = batch
    err = (model(x).squeeze(-1) - y) ** 2
    return StepOutput(
        loss_sum=err.sum(),
        n_examples=len(y),
        metrics_sum={"abs_err": err.detach().sqrt().sum()},
        n_tokens=3 * len(y),
    )


def cfg(tmp_path, name: str = "run", **kw) -> LoopConfig:
    base = dict(
        output_dir=str(tmp_path / name),
        learning_rate=1e-2,
        lr_scheduler="constant",
        logging_steps=1,
        save_steps=0,
        save_final=False,
        progress=False,
    )
    base.update(kw)
    return LoopConfig(**base)


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


# --- invariance ----------------------------------------------------------------------------


def test_batch8_equals_4x2_equals_2x4(tmp_path):
    ds = make_data(24)
    finals, losses = [], []
    for bs, ga in [(8, 1), (4, 2), (2, 4)]:
        model = make_model()
        c = cfg(tmp_path, f"b{bs}", batch_size=bs, gradient_accumulation_steps=ga, max_steps=3)
        res = fit(model, step_fn, DataLoader(ds, batch_size=bs), c)
        assert res.steps == 3
        finals.append(flat(model))
        losses.append([h["loss"] for h in res.history])
    for f, l_ in zip(finals[1:], losses[1:], strict=True):
        assert torch.allclose(f, finals[0], atol=1e-6, rtol=0)
        assert l_ == pytest.approx(losses[0], abs=1e-9)
    assert not torch.allclose(finals[0], flat(make_model()), atol=1e-3)  # it trained


def test_uneven_micro_batches_equal_full_batch(tmp_path):
    """Micro-batches of 3 + 5 examples accumulate to the mean over 8 (not a mean of means)."""
    ds = make_data(24)
    ref = make_model()
    fit(ref, step_fn, DataLoader(ds, batch_size=8), cfg(tmp_path, "ref", max_steps=3))
    sampler = [[0, 1, 2], [3, 4, 5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19]]
    sampler += [[20, 21, 22, 23]]
    model = make_model()
    c = cfg(tmp_path, "uneven", gradient_accumulation_steps=2, max_steps=3)
    res = fit(model, step_fn, DataLoader(ds, batch_sampler=sampler), c)
    assert [h["examples"] for h in res.history] == [8, 8, 8]
    assert torch.allclose(flat(model), flat(ref), atol=1e-6, rtol=0)


def test_short_last_window_of_epoch(tmp_path):
    """5 batches with accumulation 2: the epoch's last step has one micro-batch."""
    ds = make_data(20)
    res = fit(
        make_model(),
        step_fn,
        DataLoader(ds, batch_size=4),
        cfg(tmp_path, gradient_accumulation_steps=2, num_epochs=2),
    )
    assert res.steps == 6
    assert [h["examples"] for h in res.history] == [8, 8, 4, 8, 8, 4]
    assert [h["epoch"] for h in res.history][:3] == pytest.approx([0.4, 0.8, 1.0])


# --- resume --------------------------------------------------------------------------------


class _Epochs:
    """Re-iterable train data whose batches depend on the epoch (``set_epoch``), as the online
    trainer's rollout stream: each epoch is made when iterated (recorded in ``made``);
    ``with_skip`` adds ``skip(n)``, a way to skip a resumed epoch's first n batches without
    making them."""

    def __init__(self, per_epoch: int = 3, with_skip: bool = False) -> None:
        self.per_epoch, self.epoch, self.made = per_epoch, 0, []
        if with_skip:
            self.skip = self._skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self):
        self.made.append(self.epoch)
        x, y = make_data(8 * self.per_epoch, seed=100 + self.epoch).tensors
        return [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(y), 8)]

    def __iter__(self):
        return iter(self._batches())

    def _skip(self, n: int):
        return [] if n >= self.per_epoch else self._batches()[n:]


@pytest.mark.parametrize("with_skip", [False, True])
@pytest.mark.parametrize("save_at", [3, 4])
def test_resume_of_epoch_dependent_data(tmp_path, with_skip, save_at):
    """A resume in (or at the end of) epoch 1 of an iterable with set_epoch continues with
    epoch 1's batches (the epoch used to be set on the islice wrapper, i.e. nowhere: the data
    made epoch 0 again); with ``skip`` a finished epoch is not made again at all."""
    full = make_model()
    fit(full, step_fn, _Epochs(with_skip=with_skip),
        cfg(tmp_path, "full", max_steps=6, save_steps=save_at, save_total_limit=None))
    data = _Epochs(with_skip=with_skip)
    resumed = make_model(seed=9)
    fit(resumed, step_fn, data,
        cfg(tmp_path, "resumed", max_steps=6, save_steps=save_at, save_total_limit=None,
            resume_from=str(tmp_path / "full" / f"checkpoint-{save_at}")))
    assert torch.allclose(flat(resumed), flat(full), atol=1e-12, rtol=0)
    # the checkpoint of step 3 holds epoch 0 with all its batches done: without skip the data
    # makes epoch 0 again only to drop it
    assert data.made == ([1] if with_skip or save_at == 4 else [0, 1])



@pytest.mark.parametrize(("ga", "save_at"), [(1, 5), (2, 4)])
def test_resume_is_exact(tmp_path, ga, save_at):
    ds = make_data(24)

    def loader():
        return DataLoader(ds, batch_size=4, shuffle=True)

    full = make_model(dropout=0.2)
    c = cfg(
        tmp_path,
        "full",
        max_steps=10,
        save_steps=save_at,
        gradient_accumulation_steps=ga,
        save_total_limit=None,
        lr_scheduler="linear",
        warmup_steps=2,
    )
    res_full = fit(full, step_fn, loader(), c)
    ckpt = tmp_path / "full" / f"checkpoint-{save_at}"
    assert ckpt.is_dir()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == save_at

    resumed = make_model(seed=123, dropout=0.2)  # different init: weights come from the ckpt
    c2 = cfg(
        tmp_path,
        "resumed",
        max_steps=10,
        save_steps=save_at,
        gradient_accumulation_steps=ga,
        save_total_limit=None,
        lr_scheduler="linear",
        warmup_steps=2,
        resume_from=str(ckpt),
    )
    res2 = fit(resumed, step_fn, loader(), c2)
    tail = [h for h in res_full.history if h["step"] > save_at]
    assert [h["step"] for h in res2.history] == [h["step"] for h in tail]
    for a, b in zip(res2.history, tail, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-7)
        assert a["lr"] == pytest.approx(b["lr"], abs=1e-12)
        assert a["epoch"] == pytest.approx(b["epoch"])
    assert torch.allclose(flat(resumed), flat(full), atol=1e-7, rtol=0)


def test_resume_latest_and_metrics_file_truncated(tmp_path):
    ds = make_data(16)
    c = cfg(tmp_path, "run", max_steps=6, save_steps=2, save_total_limit=2)
    fit(make_model(), step_fn, DataLoader(ds, batch_size=4), c)
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["checkpoint-4", "checkpoint-6"]  # pruned to 2
    shutil.rmtree(tmp_path / "run" / "checkpoint-6")
    (tmp_path / "run" / "checkpoint-9.tmp").mkdir()  # an interrupted save is ignored
    assert resolve_resume(tmp_path / "run", "latest").name == "checkpoint-4"
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
    c2 = cfg(tmp_path, "run", max_steps=6, save_steps=2, resume_from="latest")
    res = fit(make_model(), step_fn, DataLoader(ds, batch_size=4), c2)
    assert [h["step"] for h in res.history] == [5, 6]
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


# --- non-finite ----------------------------------------------------------------------------


class NanAt:
    """step_fn that returns a NaN loss on micro-batch call number ``call`` (0-based)."""

    def __init__(self, call: int) -> None:
        self.call, self.n = call, 0

    def __call__(self, model, batch) -> StepOutput:
        out = step_fn(model, batch)
        if self.n == self.call:
            out.loss_sum = out.loss_sum * float("nan")
        self.n += 1
        return out


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    ds = make_data(32)
    model = make_model()
    c = cfg(tmp_path, max_steps=8, gradient_accumulation_steps=2, save_steps=1)
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, NanAt(call=5), DataLoader(ds, batch_size=2), c)  # step 3, micro-batch 1
    msg = str(info.value)
    assert "step 3" in msg and "micro-batch 1" in msg
    assert info.value.step == 3 and info.value.micro_batch == 1
    assert torch.isfinite(flat(model)).all()
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names[-1] == "checkpoint-2" and "checkpoint-3" not in names
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())


def test_nan_loss_skipped_when_not_stopping(tmp_path):
    ds = make_data(16)
    model = make_model()
    before = []

    class Grab(Callback):
        def on_step_end(self, step, m):
            before.append(flat(m).clone())

    c = cfg(tmp_path, max_steps=4, stop_on_nonfinite=False)
    res = fit(model, NanAt(call=1), DataLoader(ds, batch_size=4), c, callbacks=[Grab()])
    assert res.history[1]["nonfinite_steps"] == 1
    assert torch.equal(before[0], before[1])  # the NaN step did not update
    assert torch.isfinite(flat(model)).all()


# --- schedule, clipping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "warm", "expected"),
    [
        ("constant", 3, [0, 1 / 3, 2 / 3, 1, 1, 1]),
        ("linear", 2, [0, 0.5, 1, 0.75, 0.5, 0.25]),
        ("cosine", 2, [0, 0.5] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]),
    ],
)
def test_warmup_schedule_logged(tmp_path, kind, warm, expected):
    c = cfg(tmp_path, max_steps=6, lr_scheduler=kind, warmup_steps=warm, learning_rate=0.1)
    res = fit(make_model(), step_fn, DataLoader(make_data(24), batch_size=4), c)
    assert [h["lr"] for h in res.history] == pytest.approx([0.1 * e for e in expected])
    assert [lr_factor(kind, i, warm, 6) for i in range(6)] == pytest.approx(expected)


def test_warmup_ratio(tmp_path):
    c = cfg(tmp_path, max_steps=10, lr_scheduler="constant", warmup_ratio=0.2, learning_rate=1.0)
    res = fit(make_model(), step_fn, DataLoader(make_data(40), batch_size=4), c)
    assert [h["lr"] for h in res.history][:3] == pytest.approx([0, 0.5, 1.0])


def test_grad_clipping_logs_preclip_norm_and_clips_update(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False).double()
    ds = make_data(8)
    x = ds.tensors[0]

    def huge(m, batch):
        xb, _ = batch
        return StepOutput(loss_sum=1e6 * m(xb).sum(), n_examples=len(xb))

    w0 = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    c = cfg(tmp_path, max_steps=1, max_grad_norm=1.0)
    res = fit(model, huge, DataLoader(ds, batch_size=8), c, optimizer=opt)
    expected_norm = float((1e6 * x.mean(0)).norm())
    assert res.history[0]["grad_norm"] == pytest.approx(expected_norm, rel=1e-9)
    delta = (model.weight.detach() - w0).norm().item()
    assert delta == pytest.approx(0.1 * 1.0, rel=1e-5)  # lr * max_grad_norm


# --- metrics.jsonl, eval -------------------------------------------------------------------


def test_metrics_jsonl_keys_values_and_eval(tmp_path):
    ds = make_data(16)
    model = make_model()
    with torch.no_grad():  # first logged loss = mean loss of the first batch at init
        x, y = ds.tensors
        first = float(((model(x[:4]).squeeze(-1) - y[:4]) ** 2).mean())
        eval_init = float(((model(x).squeeze(-1) - y) ** 2).mean())
    c = cfg(tmp_path, max_steps=4, logging_steps=2, eval_steps=2, learning_rate=0.0)
    res = fit(
        model, step_fn, DataLoader(ds, batch_size=2), c, eval_data=DataLoader(ds, batch_size=5)
    )
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows == json.loads(json.dumps(res.history))
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in evals] == [2, 4]
    keys = {"step", "epoch", "loss", "lr", "grad_norm", "abs_err", "examples"}
    keys |= {"examples_per_s", "tokens_per_s"}
    for r in train:
        assert keys <= set(r)
        assert r["examples"] == 4
    assert {"eval/loss", "eval/abs_err", "eval/examples"} <= set(evals[0])
    assert evals[0]["eval/examples"] == 16
    assert evals[0]["eval/loss"] == pytest.approx(eval_init, abs=1e-12)  # lr 0: no change
    c1 = cfg(tmp_path, "one", max_steps=1, learning_rate=0.0)
    res1 = fit(model, step_fn, DataLoader(ds, batch_size=4), c1)
    assert res1.history[0]["loss"] == pytest.approx(first, abs=1e-12)
    assert res.metrics["eval/loss"] == evals[-1]["eval/loss"]


def test_tensorboard_tracker_and_bf16(tmp_path):
    c = cfg(tmp_path, max_steps=2, log_with=["tensorboard"], mixed_precision="bf16")
    model = make_model().float()

    def step32(m, batch):
        x, y = batch
        err = (m(x.float()).squeeze(-1) - y.float()) ** 2
        return StepOutput(loss_sum=err.sum(), n_examples=len(y))

    res = fit(model, step32, DataLoader(make_data(8), batch_size=4), c)
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert list((tmp_path / "run").rglob("events.out.tfevents*"))
    # back to full precision in the same process
    res32 = fit(make_model(), step_fn, DataLoader(make_data(8), batch_size=4), cfg(tmp_path, "x"))
    assert res32.steps == 2
    assert res.history[0]["loss"] == pytest.approx(res32.history[0]["loss"], rel=2e-2)
    assert res.history[0]["loss"] != res32.history[0]["loss"]  # bf16 really ran


# --- config --------------------------------------------------------------------------------


def test_load_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(
        "learning_rate: 5e-7\nmax_steps: 100\nlog_with: [jsonl, tensorboard]\n"
        "max_grad_norm: null\nprogress: false\n"
    )
    c = load_config(path, max_steps="7", **parse_overrides(["lr-scheduler=cosine"]))
    assert c.learning_rate == 5e-7 and isinstance(c.learning_rate, float)
    assert c.max_steps == 7 and c.lr_scheduler == "cosine" and c.max_grad_norm is None
    assert c.log_with == ["jsonl", "tensorboard"] and c.progress is False
    assert load_config(None, log_with="tensorboard").log_with == ["jsonl", "tensorboard"]


def test_load_config_errors_name_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 1e-5\nlearnig_rate: 2\n")
    with pytest.raises(ConfigError, match=r"'learnig_rate'.*bad\.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match="'nope' in overrides"):
        load_config(None, nope=1)
    path.write_text("lr_scheduler: step\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*lr_scheduler"):
        load_config(path)
    path.write_text("max_steps: ten\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*max_steps"):
        load_config(path)
    with pytest.raises(ConfigError):
        parse_overrides(["no_equals"])


# --- one run per output folder (never prune or resume another run's checkpoints) ----------


def _train(tmp_path, name="run", **kw):
    c = cfg(tmp_path, name, **kw)
    return fit(make_model(), step_fn, DataLoader(make_data(16), batch_size=4), c)


def test_new_run_in_a_folder_of_another_run_is_refused_and_its_checkpoints_kept(tmp_path):
    """The old run's higher-numbered checkpoints used to count as the newest three, so the new
    run's own checkpoints were pruned at once."""
    from prefkit.train.run_dir import RunConflictError

    _train(tmp_path, max_steps=60, save_steps=10, learning_rate=1e-2)
    before = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert before == ["checkpoint-40", "checkpoint-50", "checkpoint-60"]
    with pytest.raises(RunConflictError) as exc:
        _train(tmp_path, max_steps=20, save_steps=10, learning_rate=3e-2)
    message = str(exc.value)
    assert str(tmp_path / "run") in message and "--overwrite" in message
    assert "learning_rate: 0.01 there, 0.03 now" in message
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == before


def test_same_run_started_over_without_resume_is_refused(tmp_path):
    from prefkit.train.run_dir import RunConflictError

    _train(tmp_path, max_steps=6, save_steps=3)
    with pytest.raises(RunConflictError, match=r"checkpoint-6.*--resume-from latest"):
        _train(tmp_path, max_steps=4, save_steps=2)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-3",
                                                                      "checkpoint-6"]


def test_overwrite_clears_only_prefkit_files(tmp_path):
    _train(tmp_path, max_steps=6, save_steps=3, learning_rate=1e-2)
    run = tmp_path / "run"
    (run / "notes.txt").write_text("mine")
    (run / "checkpoint-mine").mkdir()  # not a prefkit checkpoint name pattern with a number
    res = _train(tmp_path, max_steps=2, save_steps=1, learning_rate=3e-2, overwrite=True)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1", "checkpoint-2"]
    assert res.steps == 2 and [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoint-mine").is_dir()
    identity = json.loads((run / "run_config.json").read_text())
    assert identity["config_class"] == "LoopConfig"
    assert identity["config"]["learning_rate"] == 3e-2


def test_folder_with_user_files_only_or_a_rerun_without_checkpoints_is_fine(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "README.md").write_text("my notes")
    first = _train(tmp_path, max_steps=3)
    again = _train(tmp_path, max_steps=3)  # the same run again: nothing resumable to lose
    assert [h["loss"] for h in again.history] == [h["loss"] for h in first.history]
    assert (run / "README.md").read_text() == "my notes"


@pytest.mark.parametrize("changes", [
    {"learning_rate": 3e-2},
    {"batch_size": 2},
    {"gradient_accumulation_steps": 2},
    {"lr_scheduler": "linear"},
    {"warmup_steps": 2},
    {"seed": 1},
    {"weight_decay": 0.1},
])
def test_resume_with_other_maths_is_refused_naming_each_field(tmp_path, changes):
    """A resume that changes the maths used to be accepted (the new learning rate silently
    ignored: the optimizer state came from the checkpoint)."""
    from prefkit.train.run_dir import RunConflictError

    _train(tmp_path, max_steps=4, save_steps=2)
    with pytest.raises(RunConflictError) as exc:
        _train(tmp_path, max_steps=8, save_steps=2, resume_from="latest", **changes)
    message = str(exc.value)
    assert "checkpoint-4" in message
    for key, value in changes.items():
        assert f"{key}: " in message and f"{value!r} now" in message


def test_resume_may_change_length_logging_and_saving(tmp_path):
    full = _train(tmp_path, "full", max_steps=8)
    _train(tmp_path, max_steps=4, save_steps=4)
    res = _train(tmp_path, max_steps=8, save_steps=3, logging_steps=2, progress=True,
                 save_total_limit=None, resume_from="latest")
    assert [h["step"] for h in res.history] == [6, 8]
    losses = {h["step"]: h["loss"] for h in full.history}
    assert res.history[-1]["loss"] == pytest.approx((losses[7] + losses[8]) / 2, abs=1e-12)


def test_resume_from_an_older_checkpoint_with_newer_ones_present_is_refused(tmp_path):
    from prefkit.train.run_dir import RunConflictError

    _train(tmp_path, max_steps=6, save_steps=2, save_total_limit=None)
    with pytest.raises(RunConflictError, match="checkpoint-6"):
        _train(tmp_path, max_steps=6, save_steps=2,
               resume_from=str(tmp_path / "run" / "checkpoint-2"))
    # into a fresh folder it is fine (a branch of the run)
    res = _train(tmp_path, "branch", max_steps=6, resume_from=str(tmp_path / "run" /
                                                                   "checkpoint-2"))
    assert [h["step"] for h in res.history] == [3, 4, 5, 6]


def test_a_fresh_start_of_the_same_run_replaces_its_earlier_logs(tmp_path):
    """An earlier attempt without checkpoints leaves metrics.jsonl / rollouts.jsonl; starting
    the same run again replaces them (appending would mix the two attempts)."""
    run = tmp_path / "run"
    _train(tmp_path, max_steps=3)
    (run / "rollouts.jsonl").write_text('{"iteration": 0}\n')
    _train(tmp_path, max_steps=2)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert not (run / "rollouts.jsonl").exists()


def test_folders_of_an_older_prefkit_are_judged_by_their_checkpoints(tmp_path):
    """Checkpoints written before run identities carry only the raw config: it is compared."""
    from prefkit.train.run_dir import RunConflictError

    _train(tmp_path, max_steps=4, save_steps=2, learning_rate=1e-2)
    run = tmp_path / "run"
    (run / "run_config.json").unlink()
    for ckpt in list_checkpoints(run):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        for key in ("identity", "config_class", "total_steps"):
            del state[key]
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(RunConflictError, match="learning_rate: 0.01 there, 0.03 now"):
        _train(tmp_path, max_steps=6, resume_from="latest", learning_rate=3e-2)
    with pytest.raises(RunConflictError, match="trainer_state.json: learning_rate"):
        _train(tmp_path, max_steps=6, learning_rate=3e-2)
    res = _train(tmp_path, max_steps=6, resume_from="latest", learning_rate=1e-2)
    assert [h["step"] for h in res.history] == [5, 6]


@pytest.mark.parametrize("keep", [True, False])
def test_fit_keeps_freed_memory_on_cpu_unless_turned_off(tmp_path, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(prefkit.train.loop, "keep_freed_memory", lambda: calls.append(1))
    c = cfg(tmp_path, max_steps=2, keep_freed_memory=keep)
    fit(make_model(), step_fn, DataLoader(make_data(16), batch_size=4), c)
    assert calls == ([1] if keep else [])
