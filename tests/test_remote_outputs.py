"""Clean outputs at fsspec URLs: the whole clean path written to memory:// (in this process) and file:// (through
fsspec, not the local-path code, at 1 and 3 tasks) gives what a local folder gets; a task that dies leaves no
half-written file under a final name and the same command finishes the job; prepare reads a cleaned URL; the
sorted dedup files are read by range."""

from __future__ import annotations

import importlib.util
import json
import tempfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from nextword.config import CleanConfig, DataConfig, EngineConfig
from nextword.data import clean as clean_module
from nextword.data import store
from nextword.data.clean import clean, read_cleaned
from nextword.data.prepare import prepare
from nextword.data.store import Folder, RemoteFolder, open_folder, sorted_range, write_sorted
from nextword.errors import ConfigError, DataError

from planted import planted_corpus

CONFIG = CleanConfig(text_rules=[])  # every generated article passes the rules; only the dedup drops
QUIET = {"log": lambda line: None}
IN_THIS_PROCESS = EngineConfig(tasks=3, workers=1)  # one worker runs the tasks here: memory:// is this process's
ONE_TASK_PER_INPUT = EngineConfig(tasks=5, workers=1)  # a failing task stops the loop; the ones before it are done


def kept(out: str | Path) -> list[tuple[str, str]]:
    return [(d.id, d.text) for d in read_cleaned(out)]


def names_under(url: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url)
    return sorted(path[len(root.rstrip("/")) + 1:] for path in fs.find(root))


@pytest.fixture
def planted(tmp_path) -> tuple[list[str], list[str]]:
    return planted_corpus(tmp_path / "planted")


@pytest.fixture
def memory() -> str:
    url = f"memory://nextword-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.fixture
def local_output(planted, tmp_path) -> tuple[list[tuple[str, str]], dict, str]:
    """What one task writes to a local folder: the kept documents, stats.json and report.md every URL must give."""
    sources, expected = planted
    stats = clean(sources, tmp_path / "local", CONFIG, engine=EngineConfig(tasks=1, workers=1), **QUIET)
    assert [doc_id for doc_id, _ in kept(tmp_path / "local")] == expected
    return kept(tmp_path / "local"), stats, (tmp_path / "local" / "report.md").read_text()


def test_a_memory_url_gets_the_local_output(planted, local_output, memory, tmp_path, monkeypatch):
    sources, _ = planted
    scratch, sorts = tmp_path / "scratch", []
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the system's temporary folder, for this test
    external_sort = clean_module.ExternalSort
    monkeypatch.setattr(clean_module, "ExternalSort", lambda folder, *args: sorts.append(folder) or
                        external_sort(folder, *args))
    stats = clean(sources, f"{memory}/clean", CONFIG, engine=IN_THIS_PROCESS, **QUIET)
    assert len(sorts) == 5 + 2 * 3 and all(folder.parent == scratch for folder in sorts)  # keys; buckets, pairs
    assert not list(scratch.iterdir())  # removed when each task was done with it
    out = open_folder(f"{memory}/clean")
    assert (kept(f"{memory}/clean"), stats, out.read_text("report.md")) == local_output
    assert json.loads(out.read_text("stats.json")) == stats
    written = names_under(f"{memory}/clean")
    assert not [name for name in written if name.startswith("dedup/") or ".tmp" in name]  # nothing half-done left
    assert "manifest.json" in written and "docs_00004_0000.parquet" in written


@pytest.mark.parametrize("tasks", [1, 3])
def test_file_urls_go_through_fsspec_and_get_the_local_output(planted, local_output, tmp_path, tasks):
    sources, _ = planted
    url = f"file://{tmp_path}/clean"
    assert isinstance(open_folder(url), RemoteFolder)  # not the local-path code
    stats = clean(sources, url, CONFIG, engine=EngineConfig(tasks=tasks, workers=2), **QUIET)
    assert (kept(url), stats, (tmp_path / "clean" / "report.md").read_text()) == local_output
    assert not (tmp_path / "clean" / "dedup").exists()


def test_a_task_that_dies_writing_leaves_no_file_under_a_final_name_and_the_same_command_finishes(
        planted, local_output, memory, monkeypatch):
    sources, _ = planted
    url = f"{memory}/clean"
    write_rows = clean_module._write_part_rows

    def dies_on_the_last_input(writer, rows, keys, index, *args):
        write_rows(writer, rows, keys, index, *args)  # a row group is in the file when the task dies
        if index == 4:
            raise OSError("the machine went away")

    monkeypatch.setattr(clean_module, "_write_part_rows", dies_on_the_last_input)
    with pytest.raises(OSError, match="went away"):
        clean(sources, url, CONFIG, engine=ONE_TASK_PER_INPUT, **QUIET)
    written = names_under(url)
    assert "parts/00003.json" in written and "dedup/keys/00003.bin" in written  # the inputs before it are done
    assert not [name for name in written if name.startswith(("parts/00004", "dedup/keys/00004")) or ".tmp" in name]

    monkeypatch.setattr(clean_module, "_write_part_rows", write_rows)
    lines: list[str] = []
    stats = clean(sources, url, CONFIG, engine=IN_THIS_PROCESS, log=lines.append)
    assert lines == ["clean: 4 input(s) already done, skipped"]
    assert (kept(url), stats, open_folder(url).read_text("report.md")) == local_output


def test_a_write_task_that_dies_is_redone_alone(planted, local_output, memory, monkeypatch):
    sources, _ = planted
    url = f"{memory}/clean"
    write_input, written_again = clean_module._write_input, []

    def dies_on_the_last_input(job, index, duplicates):
        if index == 4:
            raise OSError("the connection dropped")
        return write_input(job, index, duplicates)

    monkeypatch.setattr(clean_module, "_write_input", dies_on_the_last_input)
    with pytest.raises(OSError, match="connection dropped"):
        clean(sources, url, CONFIG, engine=ONE_TASK_PER_INPUT, **QUIET)
    assert "docs_00003_0000.parquet" in names_under(url)
    assert not [name for name in names_under(url) if name.startswith(("docs_00004", "parts/00004.kept"))]

    def counted(job, index, duplicates):
        written_again.append(index)
        return write_input(job, index, duplicates)

    monkeypatch.setattr(clean_module, "_write_input", counted)
    stats = clean(sources, url, CONFIG, engine=ONE_TASK_PER_INPUT, **QUIET)
    assert written_again == [4]
    assert (kept(url), stats, open_folder(url).read_text("report.md")) == local_output


def token_shards(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.suffix in (".bin", ".npy")}


def test_prepare_reads_a_cleaned_url_into_the_same_token_shards(planted, tmp_path):
    sources, _ = planted

    def prepared(name: str, clean_dir: str) -> dict[str, bytes]:
        cfg = DataConfig(sources=sources, clean=True, clean_dir=clean_dir, data_dir=str(tmp_path / name),
                         vocab_size=300, workers=1)
        index = prepare(cfg, clean=CONFIG, engine=EngineConfig(tasks=2, workers=1), progress=False).index
        assert index["clean"]["dir"] == clean_dir
        return token_shards(tmp_path / name)

    url = f"file://{tmp_path}/cleaned"
    cleaned_to_url = prepared("cleaned_to_url", url)
    (tmp_path / "cleaned" / "parts" / "00000.parquet").unlink()  # read from the URL again, not cleaned again
    read_from_url = prepared("read_from_url", url)
    assert cleaned_to_url == read_from_url == prepared("from_folder", str(tmp_path / "local_clean"))
    assert "train_00000_00000.bin" in read_from_url


def test_prepare_keeps_its_token_shards_local(planted):
    sources, _ = planted
    cfg = DataConfig(sources=sources, clean=True, data_dir="s3://bucket/data")
    with pytest.raises(ConfigError, match="give a local folder"):
        prepare(cfg, clean=CONFIG, progress=False)


@pytest.mark.parametrize("url, says", [("https://example.com/clean", "can be read but not written"),
                                       ("nosuchstore://bucket/clean", "cannot write nosuchstore:// URLs here")])
def test_an_output_url_that_cannot_be_written_is_a_one_line_error(planted, url, says):
    sources, _ = planted
    with pytest.raises(DataError, match=says) as error:
        clean(sources, url, CONFIG, **QUIET)
    assert url in str(error.value) and "\n" not in str(error.value)


def test_a_store_whose_package_is_missing_names_it(planted):
    if importlib.util.find_spec("gcsfs"):
        pytest.skip("gcsfs is installed")
    sources, _ = planted
    with pytest.raises(DataError, match="gcs://bucket/clean: cannot write gcs:// URLs here .*install"):
        clean(sources, "gcs://bucket/clean", CONFIG, **QUIET)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_range_of_a_sorted_file_is_found_and_read_in_bounded_reads(where, tmp_path, memory, monkeypatch):
    monkeypatch.setattr(store, "INDEX_STRIDE", 4)
    monkeypatch.setattr(store, "READ_CHUNK_RECORDS", 3)
    folder = Folder(tmp_path) if where == "local" else open_folder(memory)
    dtype = np.dtype([("key", "<u8"), ("value", "<u8")])
    records = np.zeros(50, dtype=dtype)
    records["key"] = np.sort(np.random.default_rng(1).integers(0, 30, size=50))
    records["value"] = np.arange(50)
    blocks = [records[i:i + 7] for i in range(0, 50, 7)]  # blocks that do not line up with the index's stride
    assert write_sorted(folder, "sorted.bin", iter(blocks), "key") == 50
    reads = []
    read_bytes = RemoteFolder.read_bytes
    monkeypatch.setattr(RemoteFolder, "read_bytes", lambda self, name, start, stop: reads.append(stop - start) or
                        read_bytes(self, name, start, stop))
    for low, high in [(0, 30), (5, 6), (7, 19), (12, 12), (29, None), (0, None), (31, None), (13, 14)]:
        found = np.concatenate([np.empty(0, dtype), *sorted_range(folder, "sorted.bin", dtype, "key", low, high)])
        wanted = records[(records["key"] >= low) & ((records["key"] < high) if high is not None else True)]
        assert found.tolist() == wanted.tolist(), (low, high)
    if where == "memory":  # the index (13 marks), windows of 4 records and chunks of 3: never the whole file
        assert reads and all(size <= 4 * dtype.itemsize or size == 13 * 8 for size in reads)


def test_an_s3_output_on_a_local_s3_server_gets_the_local_output(planted, local_output, monkeypatch):
    """moto's server gives the S3 API on localhost; s3fs talks to it as to AWS. Skipped without s3fs and moto."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    sources, _ = planted
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)  # read by botocore in this process: the tasks run here (one worker)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("nextword-test")
        url = "s3://nextword-test/clean"
        stats = clean(sources, url, CONFIG, engine=IN_THIS_PROCESS, **QUIET)
        assert (kept(url), stats, open_folder(url).read_text("report.md")) == local_output
        written = names_under(url)
        assert not [name for name in written if name.startswith("dedup/") or ".tmp" in name]
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
