"""The light core (``pip install prefkit`` without the ``train`` extra): the data, store, arena
and evaluation commands run with torch, transformers, accelerate, peft, datasets, tokenizers
and safetensors unimportable, and a command that needs them says which extra to install (exit
code 2). Each command runs in a fresh interpreter whose import system refuses those modules
(``sys.modules[name] = None``), so nothing this test process has imported can leak in. The CI
script (.ci/run) also checks a real virtualenv without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.extras import EXTRA_OF_MODULE, missing_extra, missing_extra_message

EXAMPLES = Path(__file__).parents[1] / "src" / "prefkit" / "examples"
TRAIN_MODULES = sorted(m for m, extra in EXTRA_OF_MODULE.items() if extra == "train")

RUNNER = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError(name=name)
sys.argv = ["prefkit", *{args!r}]
from prefkit.cli import main
try:
    main()
finally:
    loaded = sorted(n for n in {blocked!r} if sys.modules.get(n) is not None)
    print("LOADED", loaded, file=sys.stderr)
"""


def run_light(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = RUNNER.format(blocked=TRAIN_MODULES, args=list(args))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_extras_map_names_the_train_extra():
    assert set(TRAIN_MODULES) == {"torch", "transformers", "accelerate", "peft", "datasets",
                                  "tokenizers", "safetensors"}
    exc = ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn")
    assert missing_extra(exc) == "train"
    assert missing_extra_message(exc).endswith("pip install 'prefkit[train]'")
    assert missing_extra(ModuleNotFoundError("x", name="fastapi")) == "serve"
    assert missing_extra(ModuleNotFoundError("x", name="psycopg")) == "postgres"
    assert missing_extra(ModuleNotFoundError("x", name="my_rewards")) is None
    assert missing_extra(ValueError("torch")) is None


@pytest.mark.parametrize("args, expect", [
    (["data", "validate", str(EXAMPLES / "pairs.jsonl"), "--json"], {"ok": True}),
    (["arena", "rank", str(EXAMPLES / "arena_battles.json"), "--json"], {"votes": 4}),
    (["store", "import", str(EXAMPLES / "pairs.jsonl"), "--db", "light.db", "--json"],
     {"inserted": 4, "records": 4}),
])
def test_light_commands_run_without_the_train_extra(tmp_path, args, expect):
    proc = run_light(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stderr
    out = json.loads(proc.stdout)
    for key, value in expect.items():
        assert out[key] == value, out


def test_training_command_names_the_extra_to_install(tmp_path):
    proc = run_light("train", "preference", "--model", "m", "--data", "d.jsonl", "--json",
                     cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["extra"] == "train"
    assert "pip install 'prefkit[train]'" in out["error"]
    # the same for a group listed in --help: the listing shows what to install, exit 0
    proc = run_light("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    train_line = next(line for line in proc.stdout.splitlines() if " train " in line)
    assert "pip install 'prefkit[train]'" in train_line
    assert "Arena leaderboards" in proc.stdout  # the light groups keep their own help


def test_light_python_api_imports_without_the_train_extra(tmp_path):
    """The light core's Python API: records and IO, the store, rankings, evaluation maths, API
    judges and reports import with the train extra's modules unimportable."""
    code = (f"import sys\nfor n in {TRAIN_MODULES!r}: sys.modules[n] = None\n"
            "import prefkit.data, prefkit.data.store, prefkit.rank, prefkit.evaluate\n"
            "import prefkit.judges, prefkit.report\n"
            "import numpy as np\n"
            "from prefkit.rank import A_WINS, B_WINS, aggregate_pairwise, fit_bradley_terry\n"
            "# model 0 beats model 1 three times in four: BT log-strength gap = log 3\n"
            "counts = aggregate_pairwise(np.zeros(4), np.ones(4), "
            "np.array([A_WINS] * 3 + [B_WINS]))\n"
            "p = fit_bradley_terry(counts).params\n"
            "print(round(float(p[0] - p[1]), 6))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout) == pytest.approx(math.log(3), abs=1e-5)
