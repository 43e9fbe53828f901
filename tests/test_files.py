"""Files written whole or not at all, and folders that one process writes at a time."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nextword.errors import NextwordError
from nextword.files import FolderInUse, atomic_write, folder_lock, write_text_atomically

HOLD = """
import sys, time
from nextword.files import folder_lock
with folder_lock(sys.argv[1], "the run folder", "--run-dir"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "config.toml"
    write_text_atomically(path, "old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("the disk filled")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_a_held_folder_is_refused_naming_the_process_that_holds_it(tmp_path):
    with folder_lock(tmp_path, "the run folder", "--run-dir"):
        with pytest.raises(FolderInUse, match=rf"{tmp_path}: the run folder in use by process {os.getpid()} "
                                              r"\(.*\); wait for it to finish or stop it, or give --run-dir another"):
            with folder_lock(tmp_path, "the run folder", "--run-dir"):
                pass
    with folder_lock(tmp_path, "the run folder", "--run-dir"):  # free again once the first let go
        pass


def test_a_lock_left_by_a_killed_process_does_not_block_the_next(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=f"process {holder.pid}"):
            with folder_lock(tmp_path, "the run folder", "--run-dir"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    with folder_lock(tmp_path, "the run folder", "--run-dir"):
        assert time.monotonic() < deadline


def test_a_folder_whose_lock_cannot_be_written_is_one_line(tmp_path):
    """A read-only folder (here, a folder in the lock file's place, which root cannot write either)."""
    (tmp_path / ".lock").mkdir()
    with pytest.raises(NextwordError, match=r"\.lock: cannot write the run folder's lock file \(Is a directory\); "
                                            r"give --run-dir a folder you can write to"):
        with folder_lock(tmp_path, "the run folder", "--run-dir"):
            pass


def test_remove_temporary_files_takes_only_what_a_killed_writer_left(tmp_path):
    from nextword.files import remove_temporary_files, temporary_name

    left = temporary_name(tmp_path / "tokenizer_config.json")
    left.write_text("{")
    kept = [tmp_path / "notes.tmpfile", tmp_path / "index.json", tmp_path / "x.tmp"]
    for path in kept:
        path.write_text("mine")
    remove_temporary_files(tmp_path)
    assert not left.exists() and all(path.exists() for path in kept)
