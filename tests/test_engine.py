"""The data path under each of datatrove's executors: the same kept documents and token shards on this machine at
1 and 3 tasks, on a local Ray instance, and through the sbatch scripts a Slurm cluster would run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nextword.config import CleanConfig, DataConfig, EngineConfig
from nextword.data.clean import clean, read_cleaned
from nextword.data.prepare import prepare
from nextword.errors import ConfigError

pytest.importorskip("fastwarc")
from planted import planted_corpus  # noqa: E402

CONFIG = CleanConfig(text_rules=[])  # every generated article passes the rules; only the dedup drops


def kept(out: Path) -> list[tuple[str, str]]:
    return [(d.id, d.text) for d in read_cleaned(out)]


def token_shards(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.suffix in (".bin", ".npy")}


def prepared(sources: list[str], data_dir: Path, engine: EngineConfig) -> dict[str, bytes]:
    cfg = DataConfig(sources=sources, clean=True, data_dir=str(data_dir), vocab_size=300, workers=1)
    prepare(cfg, clean=CONFIG, engine=engine, progress=False)
    return token_shards(data_dir)


@pytest.fixture
def planted(tmp_path) -> tuple[list[str], list[str]]:
    return planted_corpus(tmp_path / "planted")


@pytest.fixture
def local_reference(planted, tmp_path) -> tuple[list[tuple[str, str]], dict[str, bytes]]:
    """One task on this machine: the output every other executor and task count must give."""
    sources, expected = planted
    shards = prepared(sources, tmp_path / "one_task", EngineConfig(tasks=1, workers=1))
    docs = kept(tmp_path / "one_task" / "clean")
    assert [doc_id for doc_id, _ in docs] == expected
    return docs, shards


def test_three_local_tasks_give_what_one_gives(planted, local_reference, tmp_path):
    sources, _ = planted
    shards = prepared(sources, tmp_path / "three", EngineConfig(tasks=3, workers=2))
    assert (kept(tmp_path / "three" / "clean"), shards) == local_reference


def test_a_local_ray_instance_gives_what_one_task_gives(planted, local_reference, tmp_path):
    ray = pytest.importorskip("ray")
    sources, _ = planted
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        shards = prepared(sources, tmp_path / "ray", EngineConfig(executor="ray", tasks=2))
    finally:
        ray.shutdown()
    assert (kept(tmp_path / "ray" / "clean"), shards) == local_reference


FAKE_SBATCH = """#!/usr/bin/env bash
# Records each submission (its arguments and script) and answers as sbatch does.
n=$(ls "$SUBMITTED" | grep -c "\\.sh$")
printf '%s\\n' "$@" > "$SUBMITTED/$n.args"
cp "${@: -1}" "$SUBMITTED/$n.sh"
echo "Submitted batch job $((1000 + n))"
"""


def test_slurm_stages_are_array_jobs_that_depend_on_the_one_before(planted, local_reference, tmp_path):
    """No cluster here: a stand-in sbatch records what would be submitted, then each array task is run as Slurm
    would run it (the script's pickled executor, with SLURM_ARRAY_TASK_ID set), stage by stage."""
    sources, _ = planted
    bin_dir, submitted = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    submitted.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")  # `scontrol show hostnames`
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SUBMITTED": str(submitted)}
    out = tmp_path / "slurm"
    engine = EngineConfig(executor="slurm", tasks=2, slurm_partition="cpu", slurm_time="1:00:00",
                          slurm_env_command="source /opt/venv/bin/activate")
    old_path = os.environ["PATH"]
    os.environ.update(PATH=env["PATH"], SUBMITTED=str(submitted))
    try:
        assert clean(sources, out, CONFIG, engine=engine, log=lambda line: None) is None  # queued, not run
    finally:
        os.environ["PATH"] = old_path
        del os.environ["SUBMITTED"]

    jobs = [(submitted / f"{n}.sh").read_text() for n in range(len(list(submitted.glob("*.sh"))))]
    args = [(submitted / f"{n}.args").read_text().split("\n") for n in range(len(jobs))]
    stages = [(n, script) for n, script in enumerate(jobs) if "launch_pickled_pipeline" in script]
    names = [re.search(r"--job-name=(\S+)", script).group(1) for _, script in stages]
    assert names == ["nextword-clean", "nextword-dedup", "nextword-write", "nextword-summary"]
    arrays = [re.search(r"--array=(\S+)", script).group(1) for _, script in stages]
    assert arrays == ["0-1", "0-1", "0-1", "0-0"]
    assert all("--partition=cpu" in script and "source /opt/venv/bin/activate" in script for _, script in stages)
    for (n, _), (previous, _) in zip(stages[1:], stages):
        assert f"--dependency=afterok:{1000 + previous}" in args[n]  # starts when the stage before has finished

    for (n, script), tasks in zip(stages, (2, 2, 2, 1)):
        pickled = re.search(r"launch_pickled_pipeline (\S+)", script).group(1)
        for task in range(tasks):
            subprocess.run(["launch_pickled_pipeline", pickled], check=True, capture_output=True, cwd=tmp_path,
                           env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_NODELIST": "localhost"})
    assert kept(out) == local_reference[0]
    assert json.loads((out / "stats.json").read_text())["docs_final"] == len(local_reference[0])


def test_slurm_needs_a_partition():
    with pytest.raises(ConfigError, match="engine.slurm_partition"):
        EngineConfig(executor="slurm").validate()


def test_tokenizing_tasks_name_their_shards_by_unit_and_resume(planted, local_reference, tmp_path, monkeypatch,
                                                                capsys):
    """A prepare that dies while encoding keeps the units it finished; the same command then encodes the rest and
    gives the shards of an uninterrupted run."""
    from nextword.data import encode

    sources, _ = planted
    data_dir = tmp_path / "died"
    cfg = DataConfig(sources=sources, clean=True, data_dir=str(data_dir), vocab_size=300, workers=1)
    encode_unit = encode.EncodeUnits.encode
    calls = []

    def dies_on_the_third_unit(self, number, tokenizer):
        calls.append(number)
        if number == 2:
            raise OSError("node lost")
        return encode_unit(self, number, tokenizer)

    monkeypatch.setattr(encode.EncodeUnits, "encode", dies_on_the_third_unit)
    with pytest.raises(OSError, match="node lost"):
        prepare(cfg, clean=CONFIG, engine=EngineConfig(tasks=1, workers=1), progress=False)
    assert calls == [0, 1, 2] and not (data_dir / "index.json").exists()
    monkeypatch.setattr(encode.EncodeUnits, "encode", encode_unit)
    capsys.readouterr()
    prepare(cfg, clean=CONFIG, engine=EngineConfig(tasks=1, workers=1), progress=False)
    assert capsys.readouterr().err.count("encode: unit") == 3  # units 2, 3 and 4 of the 5 (one per input's shard)
    assert token_shards(data_dir) == local_reference[1]
    assert {name.split("_")[1] for name in local_reference[1]} == {"00000", "00001", "00002", "00003", "00004"}
