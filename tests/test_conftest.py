"""tests/conftest.py: tests run torch with one intra-op thread, and the conftest itself never
imports torch (tests without it stay free of its import)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
INNER = "PREFKIT_CONFTEST_INNER"  # "collection" or "lazy": set by the outer tests below
if os.environ.get(INNER) == "collection":
    import torch  # noqa: F401 - loaded at collection, as most test modules load it

inner = pytest.mark.skipif(not os.environ.get(INNER), reason="run by the outer tests, in a "
                                                             "fresh process")


def test_conftest_does_not_import_torch():
    code = "import runpy, sys; runpy.run_path(sys.argv[1]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(TESTS / "conftest.py")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@inner
def test_inner_1_first_test():
    import torch

    if os.environ[INNER] == "collection":
        assert torch.get_num_threads() == 1
    else:  # torch first loaded inside this test: the fixture cannot act before it exists
        assert torch.get_num_threads() > 1


@inner
def test_inner_2_next_test():
    import torch

    assert torch.get_num_threads() == 1


@pytest.mark.slow  # a few seconds: `make test` runs it, the quick loop does not
@pytest.mark.parametrize("scenario", ["collection", "lazy"])
def test_torch_runs_one_thread_whatever_the_environment(scenario):
    """A fresh pytest without OMP_NUM_THREADS, where torch starts one thread per core: one
    thread in every test once torch is loaded (at collection, or by an earlier test)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch starts with one thread anyway")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env[INNER] = scenario
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}",
         "-k", "inner"], env=env, capture_output=True, text=True, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
