"""Code repositories: a folder or a git checkout, read as one document per source file.

Files are listed by `git ls-files` in a git checkout (so every .gitignore, nested ones included, is honoured),
and otherwise by walking the folder with its top-level .gitignore applied (the `pathspec` library's gitwildmatch
rules). Each skipped file is counted in the SkipLog under its rule: vendored, generated, minified, binary,
over-large, not valid UTF-8, unreadable, or not a known language.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

from nextword.data.documents import Document, SkipLog
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


def read_code_repo(root: Path, skips: SkipLog, max_file_bytes: int = 1_000_000) -> Iterator[Document]:
    """Source files under `root` in path order, language from the extension; what is left out is counted."""
    root = Path(root)
    for relative in listed_files(root):
        path = root / relative
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


def listed_files(root: Path) -> list[str]:
    """The repository's files (relative paths, sorted) that its .gitignore rules do not leave out."""
    if (root / ".git").exists():
        command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        try:
            listing = subprocess.run(command, capture_output=True, check=True)
        except subprocess.CalledProcessError as error:  # a checkout git will not read (damaged, another owner's)
            raise DataError(f"{root}: git cannot list the checkout's files "
                            f"({error.stderr.decode('utf-8', 'replace').strip()}); fix the checkout") from None
        except OSError as error:
            raise DataError(f"{root}: a git checkout, but git cannot run ({error.strerror or error}); install git "
                            "to read it") from None
        return sorted(name for name in listing.stdout.decode("utf-8").split("\0") if name)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    ignore = root / ".gitignore"
    if not ignore.is_file():
        return files
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(ignore.read_text(encoding="utf-8").splitlines())
    return [name for name in files if not spec.match_file(name)]


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
