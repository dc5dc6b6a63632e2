"""commands/common.py ``cli_errors``: OS errors about the user's paths (no permission, no space
left, a read-only file system, ...) are bad input, exit 2 with the path named -- never a
traceback; every other error stays internal (exit 1, traceback on stderr). Writers name their
output in errors only a write raises (a failed ``write()`` carries no file name)."""

from __future__ import annotations

import errno
import json
import os

import orjson
import pytest
import typer
from typer.testing import CliRunner

from prefkit.cli import app
from prefkit.commands.common import JsonOpt, cli_errors
from prefkit.data.io import naming_output

runner = CliRunner()
PAIR = {"prompt": "p", "chosen": " a", "rejected": " b"}


def _app(error: BaseException) -> typer.Typer:
    """A one-command app that raises ``error``."""
    tiny = typer.Typer()

    @tiny.command()
    @cli_errors
    def run(as_json: JsonOpt = False) -> None:
        raise error

    @tiny.command()
    def other() -> None:  # a second command keeps typer's subcommand layout
        pass

    return tiny


def _run(error: BaseException):
    return runner.invoke(_app(error), ["run", "--json"])


@pytest.mark.parametrize(("error", "message"), [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out.jsonl"),
     "/data/out.jsonl: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.jsonl"),
     "/data/out.jsonl: No space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.db"),
     "/mnt/ro/x.db: Read-only file system"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/x.parquet"),
     "/home/u/x.parquet: Disk quota exceeded"),
    (PermissionError(errno.EPERM, "Operation not permitted", "/a", None, "/b"),
     "/a -> /b: Operation not permitted"),
    (FileExistsError(errno.EEXIST, "File exists", "/runs/x"), "/runs/x: File exists"),
])
def test_os_errors_about_user_paths_are_bad_input(error, message):
    result = _run(error)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads(result.stdout) == {"ok": False, "error": message}


@pytest.mark.parametrize("error", [
    OSError(errno.EBADF, "Bad file descriptor"),
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    OSError("no errno at all"),
    RuntimeError("a bug"),
    KeyError("a bug"),
])
def test_other_errors_stay_internal(error):
    result = _run(error)
    assert result.exit_code == 1, result.output
    assert "Traceback" in result.stderr and type(error).__name__ in result.stderr
    assert json.loads(result.stdout) == {"ok": False, "error": f"internal error: {error!r}"}


def test_naming_output_names_the_file_only_for_errors_of_a_write(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(OSError) as info, naming_output(out):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.filename == str(out)
    with pytest.raises(OSError) as info, naming_output(out):  # a named error keeps its name
        raise OSError(errno.EFBIG, "File too large", "/elsewhere")
    assert info.value.filename == "/elsewhere"
    with pytest.raises(OSError) as info, naming_output(out):  # not a write's error
        raise OSError(errno.EBADF, "Bad file descriptor")
    assert info.value.filename is None


def _full_disk(rows, path):
    """A writer on a disk that fills up after the first row."""
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_convert_on_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    import prefkit.data.io as io

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(PAIR) + "\n")
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(io, "write_jsonl_rows", _full_disk)
    result = runner.invoke(app, ["data", "convert", str(source), str(out), "--to",
                                 "trl-preference", "--json"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["error"] == f"{out}: {os.strerror(errno.ENOSPC)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no partial file


class _FullFile:
    """A file whose every write fails as on a full disk, without a file name (as write() does)."""

    def __init__(self, path, mode):
        self.path = path

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize("full", ["valid", "rejected"])
def test_validate_names_the_side_file_whose_disk_is_full(tmp_path, monkeypatch, full):
    import builtins

    import prefkit.data.validate as validate

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(PAIR) + "\n{broken\n")  # one valid row, one rejected
    paths = {"valid": tmp_path / "v.jsonl", "rejected": tmp_path / "r.jsonl"}

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path) == str(paths[full]):
            return _FullFile(path, mode)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(validate, "open", fake_open, raising=False)
    result = runner.invoke(app, ["data", "validate", str(source), "--skip-invalid",
                                 "--output", str(paths["valid"]), "--rejected",
                                 str(paths["rejected"]), "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"] == (f"{paths[full]}: "
                                                  f"{os.strerror(errno.ENOSPC)}")
