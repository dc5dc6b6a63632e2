"""prefkit.rewards.verifiable.sandbox: code against unit tests in a limited child process --
busy loops, 10 GB allocations, fork bombs, writes outside the directory, sockets, output
floods are stopped or refused with the right status, and the next call works."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from prefkit.rewards.verifiable.sandbox import SandboxLimits, run_code_tests

LIMITS = SandboxLimits(timeout=2.0, memory_mb=512, output_mb=4)
GOOD = ("def double(x):\n    return 2 * x\n", ["assert double(2) == 4", "assert double(-3) == -6"])


def _run(code: str, tests=("assert True",)):
    return run_code_tests(code, list(tests), limits=LIMITS)


def _works_after() -> None:
    result = run_code_tests(*GOOD, limits=LIMITS)
    assert (result.value, result.status) == (1.0, "ok")


def test_passing_and_partial_credit():
    result = run_code_tests(*GOOD, limits=LIMITS)
    assert (result.value, result.status) == (1.0, "ok")
    assert result.detail.startswith("2/2 tests passed [")
    half = run_code_tests("def double(x):\n    return x + 2\n", GOOD[1], limits=LIMITS)
    assert (half.value, half.status) == (0.5, "wrong")
    assert "1/2 tests passed; first failure: AssertionError" in half.detail


def test_the_network_mode_is_named():
    detail = run_code_tests(*GOOD, limits=LIMITS).detail
    assert detail.endswith(("[network namespace]", "[user + network namespace]",
                            "[audit hook only (no network namespace permitted)]"))


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
@pytest.mark.parametrize("code", ["while True:\n    pass\n", "import time\ntime.sleep(600)\n"])
def test_a_loop_or_a_hang_is_killed_at_the_timeout(code):
    start = time.monotonic()
    result = _run(code)
    assert result.status == "timeout" and result.value == 0.0
    assert time.monotonic() - start < 2 * LIMITS.timeout + 5  # generous: an upper bound only
    _works_after()


BROKEN_OR_REFUSED = {  # code -> what the detail names; every one scores "wrong"
    "ten gigabytes": ("block = bytearray(10 * 1024 ** 3)\n", "MemoryError"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "refused: os.fork"),
    "subprocess": ("import subprocess\nsubprocess.run(['true'])\n",
                   "refused: subprocess.Popen"),
    "os.system": ("import os\nos.system('true')\n", "refused: os.system"),
    "ctypes": ("import ctypes\n", "refused: import _ctypes"),
    "socket": ("import socket\ns = socket.socket()\ns.connect(('192.0.2.1', 80))\n",
               "refused: socket.__new__"),
    "output flood": ("import sys\nfor _ in range(64):\n    sys.stdout.write('x' * (1 << 20))\n",
                     "File too large"),
    "syntax error": ("def f(:\n", "the code failed: SyntaxError"),
    "SystemExit": ("raise SystemExit(3)\n", "the code failed: SystemExit: 3"),
    "os._exit": ("import os\nos._exit(0)\n",
                 "ended the process before the tests finished (exit code 0)"),
}


@pytest.mark.parametrize("code,needle", list(BROKEN_OR_REFUSED.values()),
                         ids=list(BROKEN_OR_REFUSED))
def test_refused_or_broken_code_is_wrong_and_the_sandbox_goes_on(code, needle):
    """10 GB is refused by the memory limit, process creation, ctypes and sockets by the audit
    hook, an output flood by the file-size limit; broken code fails -- each scores "wrong",
    names why, and the next run works."""
    result = _run(code)
    assert result.status == "wrong" and needle in result.detail
    _works_after()


def test_writes_outside_the_directory_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    for code in (f"open({str(target)!r}, 'w').write('x')\n",
                 f"import os\nos.remove({str(victim)!r})\n",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                 "open('../escaped.txt', 'w').write('x')\n"):
        result = _run(code)
        assert result.status == "wrong", code
        assert "refused: " in result.detail and "outside the sandbox" in result.detail
    assert not target.exists()
    assert victim.read_text() == "keep"
    _works_after()


def test_writes_inside_the_directory_work_and_are_cleaned_up():
    result = _run("open('notes.txt', 'w').write('hi')\nimport os\nos.mkdir('sub')\n",
                  ["assert open('notes.txt').read() == 'hi'", "import os\nassert os.getcwd() "
                   "== os.path.realpath('.')"])
    assert (result.value, result.status) == (1.0, "ok")




def test_no_temporary_directory_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    _run("open('x', 'w').write('x')\n")
    assert list(tmp_path.iterdir()) == []


def test_bad_limits_and_no_tests():
    with pytest.raises(ValueError, match="positive"):
        SandboxLimits(timeout=0)
    with pytest.raises(ValueError, match="at least one test"):
        run_code_tests("x = 1", [])


def test_code_reward_by_spec(tmp_path):
    from prefkit.specs import reward_from_spec

    path = Path(tmp_path) / "code.jsonl"
    path.write_text(json.dumps({"prompt": "Write double(x).", "tests": GOOD[1]}) + "\n")
    reward = reward_from_spec("verifiable:code", prompts=str(path))
    completions = [["Here:\n```python\n" + GOOD[0] + "```\n",
                    "```python\nimport os\nos.fork()\n```"]]
    assert reward(["Write double(x)."], completions).tolist() == [[1.0, 0.0]]
    assert reward.status_counts() == {"ok": 1, "wrong": 1, "unparsed": 0, "timeout": 0,
                                      "error": 0}


@pytest.mark.skipif(os.getuid() == 0, reason="RLIMIT_NPROC does not bind root")
def test_process_limit_binds_non_root():
    result = _run("import os\nos.fork()\n")
    assert result.status == "wrong"
