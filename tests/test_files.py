"""Atomic files: the mode a finished file gets, and what a failed write says."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mnist_cnn.core.errors import RunFolderError
from mnist_cnn.core.files import TEMPORARY_MARK, write_text


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_written_file_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """mkstemp makes 0600 files; a run's files must be as shareable as any the user makes."""
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "report.html", "<p>hello</p>")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == mode
    assert not list(tmp_path.glob(f".*{TEMPORARY_MARK}*"))


def test_a_file_where_a_folder_should_be_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "shown").write_text("a file, not a folder")
    with pytest.raises(RunFolderError) as refused:
        write_text(tmp_path / "shown" / "digit-28x28.png", "x")
    message = str(refused.value)
    assert message.startswith(f"cannot write {tmp_path / 'shown' / 'digit-28x28.png'}: ")
    assert "a file stands where a folder is needed" in message and "free some space" not in message


def test_a_folder_without_write_permission_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes everywhere: no permission error to provoke")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(RunFolderError, match="choose a folder you can write to"):
        write_text(locked / "x.txt", "x")
