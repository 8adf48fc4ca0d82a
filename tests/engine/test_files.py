"""engine.files: what Windows needs of renames and deletes, checked where it can be on any system."""

import os
import stat

import pytest

from engine import files


def test_a_sharing_violation_is_waited_out_on_windows_only():
    calls = []

    def held_twice():
        calls.append(1)
        if len(calls) < 3:
            raise PermissionError(32, "being used by another process")
        return "done"

    assert files.retry_shared(held_twice, wait_s=5, windows=True) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(PermissionError):  # on POSIX a PermissionError means what it says: no waiting
        files.retry_shared(held_twice, wait_s=5, windows=False)
    assert len(calls) == 1

    def held():
        raise PermissionError(32, "being used by another process")

    with pytest.raises(PermissionError):  # held for longer than the wait: the error, not a hang
        files.retry_shared(held, wait_s=0.3, windows=True)


def test_rmtree_deletes_read_only_files(tmp_path, monkeypatch):
    """Windows refuses to delete a read-only file (a model copied from a read-only source kept the
    attribute); the fallback clears it and deletes. Here the refusal is played by unlink."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"x")
    os.chmod(folder / "weights.safetensors", stat.S_IREAD)
    real_unlink = os.unlink

    def windows_unlink(path, *a, **kw):
        if not os.stat(path, dir_fd=kw.get("dir_fd")).st_mode & stat.S_IWRITE:
            raise PermissionError(13, "Access is denied")
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", windows_unlink)
    files.rmtree(folder)
    assert not folder.exists()
    assert windows_unlink is os.unlink  # (the stand-in was in force: shutil's own rmtree fails on it)
    folder.mkdir()
    (folder / "w").write_bytes(b"x")
    os.chmod(folder / "w", stat.S_IREAD)
    with pytest.raises(PermissionError):
        import shutil

        shutil.rmtree(folder)


def test_rmtree_never_reaches_through_a_symlink(tmp_path):
    """shutil refuses to delete a symlinked folder; so do we, and the folder it points to is untouched
    (a retry that chmod-ed whatever failed made the user's real folder write-only)."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    mode = real.stat().st_mode
    with pytest.raises(OSError):
        files.rmtree(link)
    files.rmtree(link, ignore_errors=True)
    assert (real / "keep.txt").read_text() == "mine" and real.stat().st_mode == mode
