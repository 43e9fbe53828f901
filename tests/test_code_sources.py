"""`code:` sources read as data: git run on them can run nothing, and no link takes a file from outside them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nextword.data.documents import SkipLog
from nextword.data.sources import read_sources, sources_fingerprint

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

SECRET = "PRIVATE KEY: do not train on me\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a", *args], check=True,
                   capture_output=True)


def checkout(tmp_path: Path) -> Path:
    """A committed repository with one Python file, and a secret file beside it, outside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "util.py").write_text("def twice(x):\n    return 2 * x\n", encoding="utf-8")
    (tmp_path / "id_rsa.py").write_text(SECRET, encoding="utf-8")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def read(source: str) -> tuple[list, SkipLog]:
    skips = SkipLog()
    return list(read_sources([source], [".py"], skips)), skips


def test_a_checkouts_fsmonitor_command_does_not_run(tmp_path):
    """git runs core.fsmonitor on `ls-files`; a repository that came from elsewhere must not run code by it."""
    repo = checkout(tmp_path)
    marker = tmp_path / "fsmonitor-ran"
    git(repo, "config", "core.fsmonitor", f"touch {marker}; false")

    docs, _ = read(f"code:{repo}")
    sources_fingerprint([f"code:{repo}"], [".py"])

    assert [d.id for d in docs] == ["repo:util.py"]
    assert not marker.exists()
    subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True)  # git left to itself runs it
    assert marker.exists()


def test_the_callers_git_variables_do_not_redirect_the_listing(tmp_path, monkeypatch):
    """GIT_DIR in the environment would make git list another repository's files under this folder."""
    repo = checkout(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "elsewhere.py").write_text("z = 3\n", encoding="utf-8")
    git(other, "init", "-q")
    git(other, "add", ".")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))

    docs, skips = read(f"code:{repo}")

    assert [d.id for d in docs] == ["repo:util.py"]
    assert skips.total == 0  # not elsewhere.py, listed by the other index and missing here


def test_a_tracked_link_out_of_the_repository_is_a_counted_skip(tmp_path):
    repo = checkout(tmp_path)
    (repo / "key.py").symlink_to(tmp_path / "id_rsa.py")
    (repo / "home").symlink_to(tmp_path)  # a folder link: git tracks it as a link, its files beyond are not read
    (repo / "same.py").symlink_to(repo / "util.py")  # inside: read
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "links")

    docs, skips = read(f"code:{repo}")

    assert [d.id for d in docs] == ["repo:same.py", "repo:util.py"]
    assert all(SECRET not in d.text for d in docs)
    assert skips.by_reason["code: link leaves the repository"] == 2
    assert any(str(tmp_path / "id_rsa.py") in reason for _, reason in skips.examples)


def test_a_folder_on_the_way_replaced_by_a_link_is_a_counted_skip(tmp_path):
    """git lists what its index holds: pkg/mod.py, though the checkout's pkg now leads to another folder."""
    repo = checkout(tmp_path)
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("y = 1\n", encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "pkg")
    shutil.rmtree(repo / "pkg")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "mod.py").write_text(SECRET, encoding="utf-8")
    (repo / "pkg").symlink_to(tmp_path / "outside")

    docs, skips = read(f"code:{repo}")

    assert [d.id for d in docs] == ["repo:util.py"]
    # pkg/mod.py from the index, and the link pkg itself, which git lists as an untracked file
    assert sorted(path for path, _ in skips.examples) == [str(repo / "pkg"), str(repo / "pkg" / "mod.py")]
    assert skips.by_reason == {"code: link leaves the repository": 2}


def test_a_link_out_of_a_folder_without_git_is_a_counted_skip(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "util.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "id_rsa.py").write_text(SECRET, encoding="utf-8")
    (repo / "key.py").symlink_to(tmp_path / "id_rsa.py")

    docs, skips = read(f"code:{repo}")

    assert [d.id for d in docs] == ["repo:util.py"]
    assert skips.by_reason == {"code: link leaves the repository": 1}


def test_a_repository_named_through_a_link_is_read(tmp_path):
    repo = checkout(tmp_path)
    named = tmp_path / "named"
    named.symlink_to(repo)

    docs, skips = read(f"code:{named}")

    assert [d.id for d in docs] == ["named:util.py"] and skips.total == 0
