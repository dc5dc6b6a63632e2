"""train/reporting.py: the metrics file a run writes (and rewrites on resume), the console line
and the progress bar's fallback."""

import json

import pytest

from prefkit.train.reporting import (
    JsonlWriter,
    ProgressBar,
    format_record,
    keep_records_up_to,
)


def _strict_lines(path):
    """Parse every line as strict JSON (no NaN / Infinity literals)."""

    def reject(name):
        raise ValueError(f"non-JSON constant {name}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def test_a_fresh_run_starts_an_empty_file_and_writes_strict_json(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the folder is made
    path.parent.mkdir()
    path.write_text('{"step": 99, "loss": 1.0}\n')  # an older run's lines
    writer = JsonlWriter(path)
    assert path.read_text() == ""
    writer.write({"step": 1, "loss": 0.25, "lr": 1e-3, "examples": 8})
    writer.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf"),
                  "eval/loss": float("-inf"), "note": "x"})
    assert _strict_lines(path) == [
        {"step": 1, "loss": 0.25, "lr": 1e-3, "examples": 8},
        {"step": 2, "loss": "nan", "grad_norm": "inf", "eval/loss": "-inf", "note": "x"},
    ]


def test_a_new_writer_makes_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "metrics.jsonl"
    JsonlWriter(path).write({"step": 1})
    assert _strict_lines(path) == [{"step": 1}]


def test_a_resumed_run_drops_the_lines_after_its_checkpoint_and_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 / s} for s in range(1, 11)] + [{"note": "no step"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n\n")
    writer = JsonlWriter(path, truncate_after_step=5)
    kept = _strict_lines(path)
    assert [r.get("step") for r in kept] == [1, 2, 3, 4, 5, None]  # no step counts as step 0
    writer.write({"step": 6, "loss": 0.5})
    assert _strict_lines(path)[-1] == {"step": 6, "loss": 0.5}
    # resuming a run whose metrics file does not exist yet
    other = JsonlWriter(tmp_path / "none.jsonl", truncate_after_step=3)
    other.write({"step": 4})
    assert _strict_lines(tmp_path / "none.jsonl") == [{"step": 4}]


def test_a_torn_last_line_does_not_stop_a_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    JsonlWriter(path, truncate_after_step=1)
    assert _strict_lines(path) == [{"step": 1, "loss": 0.5}]
    # torn before the checkpoint's step too (a kill during the write of step 2, then a resume
    # from the checkpoint of step 3 that an earlier resume wrote): every line that is not a
    # whole JSON object goes, and one whose step is not a number
    path.write_text('{"step": 1}\n{"step": 2, "lo\n[1, 2]\n{"step": "x"}\n{"step": 3}\n\xff\n')
    JsonlWriter(path, truncate_after_step=3).write({"step": 4})
    assert _strict_lines(path) == [{"step": 1}, {"step": 3}, {"step": 4}]


def test_keep_records_up_to_another_key(tmp_path):
    """What a resumed online run does to rollouts.jsonl (one line per iteration)."""
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "reward": i / 10}) + "\n"
                            for i in range(6)) + '{"iteration": 6, "rew')
    keep_records_up_to(path, "iteration", 2)
    assert [r["iteration"] for r in _strict_lines(path)] == [0, 1, 2]
    keep_records_up_to(tmp_path / "missing.jsonl", "iteration", 2)
    assert not (tmp_path / "missing.jsonl").exists()


def test_format_record_is_one_line_with_four_significant_digits():
    record = {"step": 3, "loss": 0.123456, "lr": 0.001, "examples": 8, "note": "ok"}
    assert format_record(record, 10) == "step 3/10 | loss 0.1235 | lr 0.001 | examples 8 | note ok"
    assert format_record({"loss": 2.0}, 5) == "step None/5 | loss 2"


@pytest.mark.parametrize("enabled", [True, False])
def test_without_a_terminal_the_bar_prints_plain_lines_to_stderr(capsys, enabled):
    bar = ProgressBar(total=10, initial=2, enabled=enabled)  # pytest's stderr is no TTY
    assert bar.enabled is False
    bar.update(5, "loss 0.1")
    bar.print("step 5/10 | loss 0.1")
    bar.close()
    captured = capsys.readouterr()
    assert captured.err == "step 5/10 | loss 0.1\n" and captured.out == ""


def test_on_a_terminal_the_bar_tracks_steps_and_stops(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = ProgressBar(total=10, initial=2, enabled=True)
    try:
        assert bar.enabled
        task = bar._progress.tasks[0]
        assert (task.total, task.completed) == (10, 2)
        bar.update(7, "loss 0.3")
        assert task.completed == 7 and task.fields["info"] == "loss 0.3"
    finally:
        bar.close()
    assert bar._progress is None
    bar.close()  # twice is fine
