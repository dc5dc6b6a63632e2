"""The reward executor (prefkit.rewards.executor) and the ExecutedReward source: results equal
the serial computation in order; a hung call is killed at its timeout and scored ``timeout``;
exceptions, segfaults, os._exit and non-finite values are ``error``; the pool keeps working;
no worker (or process a reward started) outlives close() or an interrupted parent; an online
GRPO run with a hanging reward finishes.

The reward functions live in tests/_reward_fns.py (stdlib only): workers import them by name.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

import _reward_fns as fns
from prefkit.rewards.executor import STATUSES, RewardExecutor, RewardResult
from prefkit.rewards.sources import ExecutedReward, FunctionReward

EXECUTOR_FILE = Path(__file__).parents[1] / "src" / "prefkit" / "rewards" / "executor.py"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child not yet reaped by its parent)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids, wait: float = 10.0) -> bool:
    """Every pid ends within ``wait`` seconds (the kernel delivers SIGKILL asynchronously)."""
    deadline = time.monotonic() + wait
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def counts(**nonzero) -> dict[str, int]:
    return {**dict.fromkeys(STATUSES, 0), **nonzero}


@pytest.fixture(scope="module")
def executor():
    with RewardExecutor(workers=2, timeout=1.0, timeout_value=-1.0, error_value=-2.0) as ex:
        yield ex


# ------------------------------------------------------------------------------ values


def test_values_equal_the_serial_loop_in_order(executor):
    rng = random.Random(0)
    calls = [(rng.randrange(100), rng.uniform(-3, 3),
              "".join(rng.choices("abc xyz", k=rng.randrange(6)))) for _ in range(300)]
    results = executor.map(fns.mix, calls)
    assert [r.value for r in results] == pytest.approx([fns.mix(*c) for c in calls], abs=1e-12)
    assert {r.status for r in results} == {"ok"}
    assert executor.status_counts() == counts(ok=300)
    # both workers took part, and a name resolves like the function itself
    assert len({r.value for r in executor.map(fns.pid_of_worker, [(i,) for i in range(40)])}) == 2
    by_name = executor.map("_reward_fns:mix", calls[:5])
    assert [r.value for r in by_name] == [r.value for r in results[:5]]
    assert executor.map(fns.mix, []) == []


def test_checker_results_keep_their_status_and_failures_take_the_configured_value(executor):
    results = executor.map(fns.checker, [(i,) for i in range(6)])
    assert [(r.value, r.status) for r in results] == [
        (1.0, "ok"), (0.0, "wrong"), (-1.0, "timeout"), (-2.0, "error"), (1.0, "ok"),
        (0.0, "wrong")]
    assert [r.detail for r in results[1:4]] == ["1 is wrong", "checker's own limit",
                                               "checker failed"]
    assert executor.status_counts() == counts(ok=2, wrong=2, timeout=1, error=1)


def test_executed_reward_equals_function_reward(executor):
    rng = random.Random(3)
    prompts = [f"sort: {' '.join(str(rng.randrange(10)) for _ in range(3))}" for _ in range(5)]
    completions = [[" ".join(rng.choices("0123456789", k=rng.randrange(5))) for _ in range(4)]
                   for _ in prompts]
    with ExecutedReward(fns.text_score, timeout_value=-1.0, error_value=-2.0) as source:
        got = source(prompts, completions)
        want = FunctionReward(fns.text_score)(prompts, completions)
        assert got.shape == (5, 4) and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-6)
        assert source.status_counts() == counts(ok=20)
    refs = {p: completions[i][1] for i, p in enumerate(prompts)}
    with ExecutedReward("_reward_fns:with_reference", timeout_value=0.0, error_value=0.0,
                        references=refs, workers=1) as source:
        got = source(prompts, completions)
    want = torch.tensor([[float(c.strip() == refs[p]) + 0.01 * len(p) for c in cs]
                         for p, cs in zip(prompts, completions, strict=True)])
    assert torch.allclose(got, want, atol=1e-6)
    with ExecutedReward(fns.reference_first, timeout_value=0.0, error_value=0.0,
                        references=refs, arguments=("reference", "completion"),
                        workers=1) as source:
        got = source(prompts, completions)
    want = torch.tensor([[float(c.strip() == refs[p]) - 0.5 * len(refs[p]) for c in cs]
                         for p, cs in zip(prompts, completions, strict=True)])
    assert torch.allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------------------ failures


def test_a_hung_call_is_killed_at_its_timeout_and_the_batch_completes(executor):
    before = set(executor.worker_pids())
    results = executor.map(fns.sleepy, [(i,) for i in range(8)])
    assert results[3] == RewardResult(-1.0, "timeout", "no result within 1.0 s: worker killed")
    assert [r.value for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert executor.status_counts() == counts(ok=7, timeout=1)
    after = set(executor.worker_pids())
    assert len(after) == 2 and len(before & after) == 1  # the hung worker was replaced
    assert gone(before - after)
    # the pool keeps working
    again = executor.map(fns.mix, [(1, 2.0, "a")] * 4)
    assert [r.value for r in again] == [fns.mix(1, 2.0, "a")] * 4


def test_exceptions_crashes_and_bad_values_are_errors(executor):
    results = executor.map(fns.faulty, [(i,) for i in range(8)])
    assert [(r.value, r.status) for r in results] == [
        (0.0, "ok"), (-2.0, "error"), (-2.0, "error"), (-2.0, "error"), (-2.0, "error"),
        (-2.0, "error"), (6.0, "ok"), (7.0, "ok")]
    details = [r.detail for r in results]
    assert details[1] == "ValueError: bad answer format"
    assert details[2] == "the worker process died (SIGSEGV)"
    assert details[3] == "the worker process died (exit code 7)"
    assert details[4] == "non-finite reward nan"
    assert details[5] == "TypeError: a reward must be a number, got str"
    assert executor.status_counts() == counts(ok=3, error=5)
    assert executor.map(fns.sleepy, [(1,), (2,)])[1].value == 2.0


def test_a_worker_killed_while_idle_is_replaced_on_the_next_call(executor):
    victim = executor.start().worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert gone([victim])
    xs = [0, 1, 2, 4, 5, 6]
    results = executor.map(fns.sleepy, [(x,) for x in xs])
    assert [(r.value, r.status) for r in results] == [(float(x), "ok") for x in xs]
    assert victim not in executor.worker_pids() and len(executor.worker_pids()) == 2


def test_a_function_that_cannot_be_loaded_in_the_worker_is_an_error(executor):
    results = executor.map("_reward_fns:no_such_function", [(1,), (2,)])
    assert [r.status for r in results] == ["error", "error"]
    assert "has no function 'no_such_function'" in results[0].detail


def test_submit_overlaps_the_callers_work(tmp_path, monkeypatch):
    """The calls run while the caller goes on: they wait for a file only the caller creates
    after submit() returned."""
    go = tmp_path / "go"
    monkeypatch.setenv(fns.GO_FILE, str(go))
    with RewardExecutor(2, 30.0, timeout_value=-1.0, error_value=-2.0) as ex:
        handle = ex.submit(fns.wait_for_file, [(i,) for i in range(4)])
        assert not handle.done()
        go.touch()
        assert [r.value for r in handle.result()] == [0.0, 1.0, 2.0, 3.0]
        assert handle.done() and handle.status_counts() == counts(ok=4)


def test_bad_configuration_and_unpicklable_functions_are_refused():
    with pytest.raises(TypeError, match="timeout_value"):
        RewardExecutor(2, 1.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="timeout_value must be a finite number"):
        RewardExecutor(2, 1.0, timeout_value=float("nan"), error_value=0.0)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        RewardExecutor(0, 1.0, timeout_value=0.0, error_value=0.0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        RewardExecutor(1, 0, timeout_value=0.0, error_value=0.0)
    with pytest.raises(ValueError, match="start_method must be 'spawn'"):
        RewardExecutor(1, 1.0, timeout_value=0.0, error_value=0.0, start_method="fork")
    ex = RewardExecutor(1, 1.0, timeout_value=0.0, error_value=0.0)
    with pytest.raises(TypeError, match="cannot be sent to a worker process"):
        ex.submit(lambda x: x, [(1,)])
    with pytest.raises(TypeError, match="the arguments of call 1 cannot be sent"):
        ex.submit(fns.sleepy, [(1,), (lambda: 0,)])
    assert ex.worker_pids() == []  # nothing was started
    ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.submit(fns.sleepy, [(1,)])
    with pytest.raises(ValueError, match="no function 'nope'"):
        ExecutedReward("_reward_fns:nope", timeout_value=0.0, error_value=0.0)
    with pytest.raises(ValueError, match="arguments name 'reference' but no references"):
        ExecutedReward(fns.reference_first, timeout_value=0.0, error_value=0.0,
                       arguments=("reference", "completion"))
    with pytest.raises(ValueError, match="arguments must name prompt, completion"):
        ExecutedReward(fns.text_score, timeout_value=0.0, error_value=0.0,
                       arguments=("prompt", "answer"))
    with ExecutedReward(fns.text_score, timeout_value=0.0, error_value=0.0,
                        references={"a": "x"}) as source, \
            pytest.raises(ValueError, match="no reference answer for prompt 'b'"):
        source(["b"], [["x"]])


# ------------------------------------------------------------------------------ no orphans


def test_close_leaves_no_process_behind(tmp_path):
    """close() kills a worker in the middle of a call, the process it started, and the idle
    worker; a batch left unfinished raises."""
    pid_file = tmp_path / "pids"
    ex = RewardExecutor(2, 600.0, timeout_value=-1.0, error_value=-2.0)
    handle = ex.submit(fns.spawn_and_hang, [(str(pid_file),)])
    workers = ex.worker_pids()
    while not pid_file.exists():
        time.sleep(0.02)
    worker, grandchild = map(int, pid_file.read_text().split())
    assert worker in workers and alive(grandchild)
    ex.close()
    assert gone([*workers, grandchild])
    with pytest.raises(RuntimeError, match="closed before the batch finished"):
        handle.result()


PARENT = textwrap.dedent("""
    import importlib.util, sys, time
    # the executor module by path: stdlib only, so the parent starts fast (importing
    # prefkit.rewards would load torch)
    spec = importlib.util.spec_from_file_location("executor", sys.argv[1])
    executor = sys.modules["executor"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(executor)
    import _reward_fns
    ex = executor.RewardExecutor(2, 600.0, timeout_value=-1.0, error_value=-2.0)
    handle = ex.submit(_reward_fns.spawn_and_hang, [(sys.argv[2],)])
    print(*ex.worker_pids(), flush=True)
    if sys.argv[3] == "dispatcher":  # Ctrl-C as the kernel may deliver it: to another thread
        import os, signal, threading
        def interrupt():
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.02)
            signal.pthread_kill(ex._thread.ident, signal.SIGINT)
        threading.Thread(target=interrupt, daemon=True).start()
    handle.result()
""")


@pytest.mark.parametrize("how", ["SIGINT", "SIGINT to the dispatcher thread", "SIGKILL"])
def test_an_interrupted_parent_leaves_no_worker(tmp_path, how):
    """Ctrl-C: the parent's atexit hook kills the workers and what they started -- also when the
    signal lands on the executor's dispatcher thread instead of the main thread (the waiting
    ``result()`` still raises KeyboardInterrupt). SIGKILL (no clean-up runs): the kernel kills
    the workers (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        *sys.path])}
    target = "dispatcher" if "dispatcher" in how else "main"
    # a shell running the tests in the background starts them with SIGINT ignored and a child
    # inherits that (Python then never raises KeyboardInterrupt): a terminal's Ctrl-C needs the
    # default disposition
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(EXECUTOR_FILE), str(pid_file),
                               target], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    worker, grandchild = map(int, pid_file.read_text().split())
    assert worker in workers and all(alive(p) for p in workers)
    if target == "main":
        parent.send_signal(getattr(signal, how))
    if how.startswith("SIGINT"):
        _, err = parent.communicate(timeout=60)
        assert "KeyboardInterrupt" in err
        assert gone([*workers, grandchild])
    else:
        assert parent.wait(timeout=60) == -signal.SIGKILL
        assert gone(workers)
        os.kill(grandchild, signal.SIGKILL)  # a process the reward itself started: not ours
        parent.communicate(timeout=60)  # (the grandchild held the parent's output pipes)


def test_a_function_of_the_main_script_is_loaded_from_its_file(tmp_path):
    """Workers do not run the parent's main script: they load it as a module by path (its
    ``__main__`` block skipped)."""
    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("executor", {str(EXECUTOR_FILE)!r})
        executor = sys.modules["executor"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(executor)

        def triple(x):
            return 3 * x

        if __name__ == "__main__":
            with executor.RewardExecutor(1, 30.0, timeout_value=0.0, error_value=-9.0) as ex:
                print([r.value for r in ex.map(triple, [(1,), (2,)])])
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split("\n")[-2] == "[3.0, 6.0]"


def test_results_pickle():
    r = RewardResult(1.0, "ok", "")
    assert pickle.loads(pickle.dumps(r)) == r


# ------------------------------------------------------------------------------ online run


def test_online_grpo_with_a_hanging_reward_finishes(tmp_path, monkeypatch):
    """train_online (GRPO, 2 iterations) whose reward hangs on its first call: the call is
    scored ``timeout`` (value -1), every other sample is scored right, the run finishes."""
    from prefkit.lab.base_model import build_base_model
    from prefkit.lab.tasks import SortTask
    from prefkit.train.online import OnlineConfig, train_online

    task = SortTask()
    model, tok, _ = build_base_model(task, tmp_path / "base", hidden_size=32, num_layers=1,
                                     num_heads=2, intermediate_size=64, sft_examples=256,
                                     steps=20, batch_size=32, row_length=128)
    rng = random.Random(1)
    prompts = [task.sample_prompt(rng) for _ in range(8)]
    monkeypatch.setenv(fns.HANG_MARKER, str(tmp_path / "hung"))
    executed = ExecutedReward(fns.hang_once, timeout_value=-1.0, error_value=-2.0, timeout=1.0)
    seen = []

    def source(prompts, completions, prompt_ids=None, completion_ids=None):
        rewards = executed(prompts, completions, prompt_ids, completion_ids)
        seen.append((prompts, completions, rewards, executed.status_counts()))
        return rewards

    source.status_counts = executed.status_counts  # the loop logs it where it can
    cfg = OnlineConfig(algo="grpo", output_dir=str(tmp_path / "run"), iterations=2,
                       prompts_per_iteration=4, num_generations=4, max_new_tokens=8,
                       batch_size=16, save_steps=0, save_final=False, progress=False,
                       logging_steps=1000)
    with executed:
        res = train_online(cfg, reward=source, prompts=prompts, model=copy.deepcopy(model),
                           tokenizer=tok)
    assert [it["iteration"] for it in res.iterations] == [0, 1]
    assert len(seen) == 2
    assert sum(c["timeout"] for *_, c in seen) == 1
    assert sum(c["ok"] for *_, c in seen) == 31
    hung = 0
    for ps, cs, rewards, _ in seen:
        for i, (p, group) in enumerate(zip(ps, cs, strict=True)):
            for j, c in enumerate(group):
                if rewards[i, j] == -1.0:
                    hung += 1
                else:
                    assert rewards[i, j].item() == pytest.approx(fns.sort_score(p, c), abs=1e-6)
    assert hung == 1
    if any("reward_status/timeout" in it for it in res.iterations):  # the loop logs them
        assert [it.get("reward_status/timeout", 0) for it in res.iterations] == [1, 0]
        assert sum(it.get("reward_status/ok", 0) for it in res.iterations) == 31


@pytest.mark.slow  # ~7 s: a worker is killed at its 2 s limit
def test_cli_python_reward_in_workers_survives_a_hanging_call(tmp_path, monkeypatch):
    """`prefkit train online --reward python:... --reward-workers 2`: a call that hangs is
    killed at --reward-timeout and scored --reward-failure-value (counted as `timeout`), the run
    finishes; without a failure value the command exits 2 naming the option."""
    import json

    from typer.testing import CliRunner

    from prefkit.cli import app
    from prefkit.lab.base_model import build_base_model
    from prefkit.lab.tasks import SortTask

    _, _, info = build_base_model(SortTask(), tmp_path / "base", hidden_size=32, num_layers=1,
                                  num_heads=2, intermediate_size=64, sft_examples=256, steps=20,
                                  batch_size=32, row_length=128)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hang_once.py").write_text(
        "import os, time\n"
        "def score(prompt, completion):\n"
        "    try:\n"
        "        os.close(os.open('hung.flag', os.O_CREAT | os.O_EXCL))\n"
        "    except FileExistsError:\n"
        "        return float(len(completion))\n"
        "    time.sleep(600)\n")
    base = ["train", "online", "--model", info["path"], "--prompts", "lab:sort:8",
            "--reward", "python:hang_once:score", "--reward-workers", "2",
            "--output-dir", str(tmp_path / "run"), "--set", "save_steps=0",
            "--set", "max_new_tokens=4", "--algo", "rloo", "--iterations", "1",
            "--prompts-per-iteration", "4", "--json"]
    missing = CliRunner().invoke(app, base)
    assert missing.exit_code == 2, missing.output
    assert "reward_failure_value" in json.loads(missing.stdout)["error"]
    ok = CliRunner().invoke(app, [*base, "--reward-timeout", "2", "--reward-failure-value",
                                  "-1"])
    assert ok.exit_code == 0, ok.output
    iteration = json.loads(ok.stdout)["iterations"][0]
    assert iteration["reward_status/timeout"] == 1 and iteration["reward_status/ok"] == 15
