"""Outputs appear whole or not at all; one that must be new never replaces a file, even one
that appears while it is being written (framepack.atomic)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from framepack import atomic
from framepack.errors import InputError, OutputError, OutputExistsError

VIDEO = b"the finished video"
USERS = b"the user's own file"


def names(folder: Path) -> list[str]:
    """Every entry of ``folder``, hidden temporary files included."""
    return sorted(os.listdir(folder))


def test_a_new_file_is_published_into_a_free_name(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with atomic.replacing(target, overwrite=False) as temp:
        temp.write_bytes(VIDEO)
    assert target.read_bytes() == VIDEO
    assert target.stat().st_nlink == 1  # the hidden second name is gone
    assert names(tmp_path) == ["out.mp4"]


def test_a_file_that_appears_while_writing_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with pytest.raises(OutputExistsError) as caught, atomic.replacing(target, overwrite=False) as temp:
        temp.write_bytes(VIDEO)
        target.write_bytes(USERS)  # after any check the caller made, before the video is in place
    assert str(caught.value) == f"expected a new file, but '{target}' exists (it is left as it was)"
    assert isinstance(caught.value, InputError)
    assert target.read_bytes() == USERS
    assert names(tmp_path) == ["out.mp4"]


def test_a_dangling_link_at_the_target_is_kept(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "out.mp4"
    source.write_bytes(VIDEO)
    target.symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(OutputExistsError):
        atomic.copy_file(source, target, overwrite=False)
    assert os.readlink(target) == str(tmp_path / "nowhere.mp4")
    assert names(tmp_path) == ["out.mp4", "source"]


def test_overwrite_replaces_a_file_that_appears_while_writing(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with atomic.replacing(target) as temp:
        temp.write_bytes(VIDEO)
        target.write_bytes(USERS)
    assert target.read_bytes() == VIDEO
    assert names(tmp_path) == ["out.mp4"]


def refuse_links(code: int):  # type: ignore[no-untyped-def]
    """``os.link`` as on a file system without hard links (FAT, exFAT, some network mounts)."""

    def link(source: object, target: object) -> None:
        raise OSError(code, os.strerror(code))

    return link


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EXDEV])
def test_without_hard_links_a_new_file_is_still_published_and_an_existing_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(atomic.os, "link", refuse_links(code))
    target = tmp_path / "out.mp4"
    with atomic.replacing(target, overwrite=False) as temp:
        temp.write_bytes(VIDEO)
    assert target.read_bytes() == VIDEO

    taken = tmp_path / "taken.mp4"
    with pytest.raises(OutputExistsError), atomic.replacing(taken, overwrite=False) as temp:
        temp.write_bytes(VIDEO)
        taken.write_bytes(USERS)
    assert taken.read_bytes() == USERS
    assert names(tmp_path) == ["out.mp4", "taken.mp4"]


def test_another_link_failure_is_an_output_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic.os, "link", refuse_links(errno.EIO))
    target = tmp_path / "out.mp4"
    expected = f"^could not write {target}: Input/output error$"
    with pytest.raises(OutputError, match=expected), atomic.replacing(target, overwrite=False) as temp:
        temp.write_bytes(VIDEO)
    assert names(tmp_path) == []
