import os
import sys

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _one_torch_thread() -> None:
    """One intra-op thread for torch, if torch is loaded (never imported here: tests that do
    not use it stay free of its import). The tests' models are tiny: with torch's default of one
    thread per core, OpenMP's spinning on 2 shared, busy cores made them many times slower
    (tests/test_train_reward.py: 201 s vs 24 s; sampling in tests/test_train_online.py ~40x)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs with one intra-op torch thread: set before the test when torch is
    already loaded (test modules import it at collection), and after it when the test loaded
    torch itself (the next tests then start with one). Worker processes a test starts set their
    own (OMP_NUM_THREADS=1)."""
    _one_torch_thread()
    yield
    _one_torch_thread()


@pytest.fixture
def examples_dir():
    from prefkit.demo import example_path

    return example_path()


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures saved during the test, in order (each still inspectable after
    it is closed)."""
    import matplotlib.figure

    saved = []
    original = matplotlib.figure.Figure.savefig

    def record(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return saved
