"""data.io.figure_path: the one rule every figure option (arena rank --plot / --winrate-plot,
rm eval --plot) follows -- a folder gets a named file in it, a path ending .png is used as is,
anything else is bad input naming the option, the path and the rule; nothing is created."""

import os

import pytest

from prefkit.data.errors import OutputPathError
from prefkit.data.io import check_output_path, figure_path


def test_a_folder_gets_the_default_name(tmp_path):
    assert figure_path(tmp_path, "lb.png") == tmp_path / "lb.png"
    assert figure_path(str(tmp_path), "lb.png") == tmp_path / "lb.png"
    # a folder that does not exist yet, written with a trailing slash
    assert figure_path(f"{tmp_path}/new/", "lb.png") == tmp_path / "new" / "lb.png"
    assert not (tmp_path / "new").exists()  # nothing created


@pytest.mark.parametrize("name", ["board.png", "board.PNG", "deep/er/board.png"])
def test_a_png_path_is_used_as_is(tmp_path, name):
    assert figure_path(tmp_path / name, "lb.png", "--plot") == tmp_path / name
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["board", "board.pdf", "board.png.txt"])
def test_anything_else_names_the_option_the_path_and_the_rule(tmp_path, name):
    with pytest.raises(OutputPathError) as info:
        figure_path(tmp_path / name, "lb.png", "--plot")
    assert str(info.value) == (f"--plot: cannot write {tmp_path / name}: expected a file name "
                               "ending .png, or a folder (an existing one, or a name ending "
                               "with '/'), which gets lb.png")
    assert info.value.option == "--plot" and info.value.path == str(tmp_path / name)
    assert isinstance(info.value, ValueError)  # exit 2 in the CLI
    assert list(tmp_path.iterdir()) == []


def test_unwritable_places_are_checked_too(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=r"^--plot: cannot write .*file/x\.png: .* is a "
                                              r"file, not a folder"):
        figure_path(tmp_path / "file" / "x.png", "lb.png", "--plot")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(OutputPathError, match="cannot create files in"):
                figure_path(locked, "lb.png")
        finally:
            locked.chmod(0o700)


def test_check_output_path_names_the_option():
    with pytest.raises(OutputPathError, match=r"^--out: cannot write : expected a file"):
        check_output_path("", option="--out")
