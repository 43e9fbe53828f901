"""Code repositories: a folder or a git checkout, read as one document per source file.

Files are listed by `git ls-files` in a git checkout (so every .gitignore, nested ones included, is honoured),
and otherwise by walking the folder with its top-level .gitignore applied (the `pathspec` library's gitwildmatch
rules). Each skipped file is counted in the SkipLog under its rule: vendored, generated, minified, binary,
over-large, not valid UTF-8, unreadable, not a known language, or a link that leads out of the repository.

A checkout is data here, perhaps downloaded from anywhere, and git obeys its `.git/config`, some settings of
which name commands to run. git therefore runs with every such setting it could reach overridden (see GIT_SAFETY).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pathspec

from nextword.data.documents import Document, SkipLog
from nextword.data.listing import Listing, check_listed, count_links_outside, walk_files
from nextword.errors import DataError

LANGUAGES = {
    ".py": "python", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".js": "javascript",
    ".mjs": "javascript", ".ts": "typescript", ".java": "java", ".go": "go", ".rs": "rust", ".rb": "ruby",
    ".sh": "shell", ".kt": "kotlin", ".swift": "swift", ".scala": "scala", ".cs": "csharp", ".php": "php",
    ".lua": "lua", ".jl": "julia", ".r": "r", ".sql": "sql", ".hs": "haskell", ".ml": "ocaml", ".toml": "toml",
    ".md": "markdown", ".rst": "restructuredtext",
}
VENDORED_DIRS = {"vendor", "vendored", "third_party", "thirdparty", "node_modules", "site-packages", ".venv",
                 "venv", "bower_components", "external", ".git"}
GENERATED_SUFFIXES = ("_pb2.py", ".pb.go", ".pb.cc", ".pb.h", ".generated.cs", "package-lock.json", ".lock")
MINIFIED_SUFFIXES = (".min.js", ".min.css")
BINARY_SNIFF_BYTES = 8192
LINK_LEAVES_REPOSITORY = "code: link leaves the repository"

# git, run on a checkout that may come from anywhere, with nothing in its config able to run a command.
# `-c` settings override every config file, the repository's own and any it includes (git-config(1), "-c").
# - core.fsmonitor: a command git runs to ask which files changed, on any command that reads the index,
#   `ls-files` included (githooks(5) "fsmonitor-watchman"; the abuse: https://raw.githubusercontent.com/justinsteven/
#   advisories/main/2022_git_buried_bare_repos_and_fsmonitor_various_abuses.md).
# - core.hooksPath: where hooks are found; /dev/null holds none (githooks(5)).
# - protocol.allow=never: no transport at all, so no core.sshCommand, core.gitProxy, remote helper (ext::) or
#   credential helper, even if a partial clone wanted to fetch a missing object (git-config(1) "protocol.allow").
# - --no-pager, and --no-optional-locks: no core.pager, and the user's index is never rewritten by a read.
# Filters (filter.*.clean/smudge/process) and diff drivers (diff.*.textconv, diff.external) cannot be overridden
# by name; they run only when git reads file contents through them (add, checkout, diff, status refreshing a
# changed file), which `ls-files --cached --others` never does (checked with git 2.39: a filter.*.process and a
# diff textconv set in a checkout's config did not run, where `ls-files -m` ran the filter).
GIT_SAFETY = ["--no-pager", "--no-optional-locks", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
              "-c", "protocol.allow=never"]


def git_environment() -> dict[str, str]:
    """The environment git runs in: none of the caller's GIT_* variables (GIT_DIR, GIT_CONFIG_PARAMETERS, ... could
    point git elsewhere or add settings), no system or global config, no prompt, no lazy fetch (git(1))."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    environment.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0",
                       GIT_NO_LAZY_FETCH="1", GIT_OPTIONAL_LOCKS="0")
    return environment


def read_code_repo(root: Path, skips: SkipLog, max_file_bytes: int = 1_000_000) -> Iterator[Document]:
    """Source files under `root` in path order, language from the extension; what is left out is counted."""
    root = Path(root)
    listing = listed_files(root)
    count_links_outside(listing.links_outside, skips, LINK_LEAVES_REPOSITORY)
    for path in listing.files:
        relative = path.relative_to(root).as_posix()
        try:
            reason = _skip_reason(relative, path, max_file_bytes)
            text = "" if reason else path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            reason = "code: not valid UTF-8"
        except OSError as error:  # git lists a tracked file deleted from the checkout, or a link to nowhere
            reason = f"code: unreadable ({error.strerror or error})"
        if reason:
            skips.skip(path, reason)
            continue
        if not text.strip():
            skips.skip(path, "code: empty file")
            continue
        language = LANGUAGES[path.suffix.lower()]
        yield Document(id=f"{root.name}:{relative}", text=text, source="code",
                       meta={"path": str(path), "repo": str(root), "language": language})


def listed_files(root: Path) -> Listing:
    """The repository's files that its .gitignore rules do not leave out, in path order, with the links among
    them that lead out of the repository set apart."""
    if (root / ".git").exists():
        return check_listed(root, _git_listed(root))
    listing = walk_files(root)
    ignore = root / ".gitignore"
    if ignore.is_file():
        spec = pathspec.GitIgnoreSpec.from_lines(ignore.read_text(encoding="utf-8").splitlines())
        listing.files = _not_ignored(listing.files, root, spec)
        listing.links_outside = _not_ignored(listing.links_outside, root, spec)
    return listing


def _not_ignored(paths: list[Path], root: Path, spec: pathspec.GitIgnoreSpec) -> list[Path]:
    return [path for path in paths if not spec.match_file(path.relative_to(root).as_posix())]


def _git_listed(root: Path) -> list[str]:
    command = ["git", *GIT_SAFETY, "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        listing = subprocess.run(command, capture_output=True, check=True, env=git_environment(),
                                 stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as error:  # a checkout git will not read (damaged, another owner's)
        raise DataError(f"{root}: git cannot list the checkout's files "
                        f"({error.stderr.decode('utf-8', 'replace').strip()}); fix the checkout") from None
    except OSError as error:
        raise DataError(f"{root}: a git checkout, but git cannot run ({error.strerror or error}); install git "
                        "to read it") from None
    return [name for name in listing.stdout.decode("utf-8").split("\0") if name]


def _skip_reason(relative: str, path: Path, max_file_bytes: int) -> str:
    parts = relative.split("/")
    name = parts[-1].lower()
    if VENDORED_DIRS.intersection(parts[:-1]):
        return "code: vendored"
    if name.endswith(MINIFIED_SUFFIXES):
        return "code: minified"
    if name.endswith(GENERATED_SUFFIXES):
        return "code: generated"
    if path.suffix.lower() not in LANGUAGES:
        return "code: not a known language"
    if path.stat().st_size > max_file_bytes:
        return "code: over-large"
    with open(path, "rb") as f:
        if b"\0" in f.read(BINARY_SNIFF_BYTES):
            return "code: binary"
    return ""
