"""Faults a long run meets: kill -9, a full disk, no permission, NaN weights, damaged or crafted files, a killed
prepare, and a download server that misbehaves. Each test injects the fault for real where the machine allows it
(a process killed with SIGKILL, a tmpfs that fills up, a pickle that would run code) and checks that nothing saved
is lost and nothing foreign is let in."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from nextword import cli
from nextword.training import checkpoint
from nextword.training.checkpoint import SAVE_DELAY_ENV, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from nextword.config import RunConfig
from nextword.data.fetch import FetchOptions, download
from nextword.data.loader import TokenLoader
from nextword.errors import CheckpointError, DataError
from nextword.model import GPT
from nextword.training.optimizer import build_optimizer

WORDS = ("def return import class self value the model token data while for if else print list dict "
         "loss learning next word predicts each step").split()
STEPS, CKPT_EVERY = 40, 5
TRAIN_TIMEOUT_S = 60


def make_corpus(folder: Path, files: int = 30, words: int = 400) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = " ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(words))
        (folder / f"doc_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    return make_corpus(tmp_path / "corpus")


# For runs over two processes compared with one, or sized for a disk: AdamW sums its step in fp32, so ranks and a
# single process agree to 1e-5; Muon's Newton–Schulz runs in bf16 (tests/test_distributed.py checks it to 1e-4).
ADAMW = ["--train.optimizer", "adamw"]


def train_args(tmp_path: Path, run: str, steps: int = STEPS) -> list[str]:
    """`nextword train` for a tiny model, fp32 on one thread, so two runs give the same numbers."""
    return ["train", "--source", str(tmp_path / "corpus"), "--run-dir", str(tmp_path / run), "--steps", str(steps),
            "--precision", "fp32", "--compile", "off", "--quiet",
            "--model.n_layers", "2", "--model.d_model", "32", "--model.n_heads", "2", "--model.context", "32",
            "--data.vocab_size", "300", "--data.val_fraction", "0.2", "--data.data_dir", str(tmp_path / "data"),
            "--train.micro_batch", "4", "--train.log_every", "1", "--train.ckpt_every", str(CKPT_EVERY),
            "--train.threads", "1", "--eval.batches", "2", "--eval.sample_tokens", "4", "--eval.prompts", "def ",
            # the first round's network: checkpoint sizes and loss spikes these tests were measured with
            "--model.arch", "gpt2", "--model.tie_embeddings", "true", "--model.embedding_norm", "false"]


def start_train(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nextword", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **env})


def logged(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "log.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by the kill
            continue
    return [r for r in records if r.get("kind") == kind]


def wait_until(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (exit {process.returncode}) before {what}: {process.stderr.read()!r}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def kill_9(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def assert_losses_match(run_dir: Path, straight: dict[int, float]) -> None:
    """Every loss ever logged for a step (before the kill and after the restart) equals the uninterrupted run's."""
    seen = logged(run_dir, "train")
    assert {r["step"] for r in seen} == set(straight)
    for record in seen:
        assert record["loss"] == pytest.approx(straight[record["step"]], abs=1e-6), (record, straight[record["step"]])


def run_train(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nextword", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=TRAIN_TIMEOUT_S * 2)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """A folder with the corpus and its prepared data, and the losses of an uninterrupted run step by step.
    Every run here is a `nextword train` process, so all of them do the same arithmetic."""
    folder = tmp_path_factory.mktemp("kill")
    make_corpus(folder / "corpus")
    done = run_train(train_args(folder, "straight"), NEXTWORD_CACHE=str(folder / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, {r["step"]: r["loss"] for r in logged(folder / "straight", "train")}


def test_kill_9_at_a_random_step_then_restart_gives_the_uninterrupted_losses(shared):
    folder, straight = shared
    seed = random.randrange(10**6)
    kill_after = random.Random(seed).randint(CKPT_EVERY + 1, STEPS - 3)
    run_dir = folder / f"killed-{seed}"
    process = start_train(train_args(folder, run_dir.name), NEXTWORD_CACHE=str(folder / "cache"))
    wait_until(lambda: any(r["step"] >= kill_after for r in logged(run_dir, "train")), process,
               f"step {kill_after} (seed {seed})")
    kill_9(process)
    last_logged = max(r["step"] for r in logged(run_dir, "train"))
    saved = latest_checkpoint(run_dir)
    assert saved is not None, f"seed {seed}"

    done = run_train(train_args(folder, run_dir.name), NEXTWORD_CACHE=str(folder / "cache"))
    assert done.returncode == 0 and "resuming" in done.stdout, done.stderr[-2000:]
    resumed_from = logged(run_dir, "run")[-1]["resumed_from"]
    what = f"seed {seed}: killed after step {last_logged}, newest checkpoint {saved.name}, resumed from {resumed_from}"
    assert resumed_from == int(saved.name.removeprefix("step_")), what
    assert last_logged - resumed_from <= CKPT_EVERY, f"lost more than the steps since the last checkpoint; {what}"
    assert_losses_match(run_dir, straight)


def test_kill_9_inside_a_checkpoint_write_leaves_the_previous_checkpoint_to_resume_from(shared):
    folder, straight = shared
    run_dir = folder / "killed-in-save"
    process = start_train(train_args(folder, run_dir.name), NEXTWORD_CACHE=str(folder / "cache"),
                          **{SAVE_DELAY_ENV: "2"})
    writing = run_dir / "checkpoints"
    # The second save (step 10) has written its files and waits in the delay, before its manifest and rename.
    wait_until(lambda: any((p / "trainer.json").exists() for p in writing.glob(".tmp-step_0000010-*")), process,
               "the step-10 checkpoint write")
    kill_9(process)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000005"]
    assert list(writing.glob(".tmp-*")), "the half-written checkpoint should still be on disk here"

    done = run_train(train_args(folder, run_dir.name), NEXTWORD_CACHE=str(folder / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert logged(run_dir, "run")[-1]["resumed_from"] == 5
    assert not list(writing.glob(".tmp-*")), "the abandoned write was not cleaned up"
    assert_losses_match(run_dir, straight)


# --- a failed write: a full disk, no permission -----------------------------------------------------------------


def can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_full_disk_stops_the_run_with_a_clear_error_and_keeps_earlier_checkpoints(corpus, tmp_path):
    """The checkpoints folder is a 1 MB tmpfs: two checkpoints of the tiny model fit, the third does not."""
    run_dir = tmp_path / "run"
    mount = run_dir / "checkpoints"
    if not can_mount_tmpfs(mount):
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    kept = tmp_path / "kept"
    args = " ".join(f"'{a}'" for a in train_args(tmp_path, "run"))
    script = (f"mount -t tmpfs -o size=1000k tmpfs {mount} || exit 99; {sys.executable} -m nextword {args}; "
              f"echo $? > {tmp_path / 'rc'}; cp -a {mount} {kept}")  # the tmpfs goes away with its namespace
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S, env=os.environ)
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    assert (tmp_path / "rc").read_text().strip() == "2", done.stderr[-3000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("nextword train:")]
    assert len(error) == 1 and "No space left on device" in error[0] and "earlier checkpoints are intact" in error[0]
    steps = [p.name for p in sorted(kept.iterdir())]
    assert steps == ["step_0000005", "step_0000010"], steps  # no temporary folder left behind either
    assert all(checkpoint.verify(kept / s) is None for s in steps)


def test_a_full_disk_stops_every_rank_of_a_sharded_run_and_keeps_earlier_checkpoints(corpus, tmp_path):
    """FSDP over 2 processes with the checkpoints folder on a 1 MB tmpfs: the step-5 checkpoint (0.6 MB) fits,
    the step-10 one does not."""
    run_dir = tmp_path / "run"
    mount = run_dir / "checkpoints"
    if not can_mount_tmpfs(mount):
        pytest.skip("cannot mount a tmpfs here (no user namespaces)")
    kept = tmp_path / "kept"
    args = train_args(tmp_path, "run", steps=12) + ["--nproc", "2", "--train.parallel", "fsdp",
                                                    "--train.batch_tokens", str(2 * 4 * 32), *ADAMW]
    command = " ".join(f"'{a}'" for a in args)
    script = (f"mount -t tmpfs -o size=1000k tmpfs {mount} || exit 99; {sys.executable} -m nextword {command}; "
              f"echo $? > {tmp_path / 'rc'}; cp -a {mount} {kept}")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    assert (tmp_path / "rc").read_text().strip() != "0", done.stderr[-3000:]
    # Every rank stops with the same one-line error (their lines may interleave), none waits on the other.
    errors = re.findall(r"nextword train: \S+/step_0000010: checkpoint not written \(No space left on device on "
                        r"rank \d; [^)]*\); the earlier checkpoints are intact", done.stderr)
    assert len(errors) == 2, done.stderr[-3000:]
    assert [p.name for p in kept.iterdir()] == ["step_0000005"]  # no temporary folder left behind either
    assert checkpoint.verify(kept / "step_0000005") is None


def tiny_model_and_optimizer() -> tuple[GPT, torch.optim.Optimizer, RunConfig]:
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context, cfg.model.vocab_size = 1, 16, 2, 8, 64
    torch.manual_seed(0)
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    x = torch.randint(0, 64, (2, 9))
    model(x[:, :-1], x[:, 1:]).backward()
    optimizer.step()
    return model, optimizer, cfg


def save(run_dir: Path, step: int, model, optimizer, cfg, keep_last: int = 5) -> Path:
    return save_checkpoint(run_dir, step, model, optimizer, {"step": step}, cfg, "tok", keep_last)


def test_permission_denied_while_saving_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    model, optimizer, cfg = tiny_model_and_optimizer()
    first = save(tmp_path, 1, model, optimizer, cfg, keep_last=1)

    def denied(model, filename):
        raise PermissionError(13, "Permission denied", filename)

    monkeypatch.setattr(checkpoint, "save_model", denied)  # as root, chmod cannot deny anything: inject it
    with pytest.raises(CheckpointError, match="Permission denied.*earlier checkpoints are intact"):
        save(tmp_path, 2, model, optimizer, cfg, keep_last=1)
    assert list_checkpoints(tmp_path) == [first] and latest_checkpoint(tmp_path) == first
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


@pytest.mark.parametrize("where", ["shards", "consolidated weights"])
def test_a_sharded_save_that_fails_leaves_earlier_checkpoints_and_nothing_else(tmp_path, monkeypatch, where):
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from nextword.training import sharded
    from nextword.training.distributed import World

    model, optimizer, cfg = tiny_model_and_optimizer()

    def save_sharded(step: int) -> Path:
        return save_checkpoint(tmp_path, step, model, optimizer, {"step": step}, cfg, "tok", keep_last=1,
                               storage=sharded.ShardedStorage(), world=World())

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    first = save_sharded(1)
    if where == "shards":  # every rank's own part
        monkeypatch.setattr(HuggingFaceStorageWriter, "write_data", disk_full)
    else:  # the whole model that rank 0 gathers and writes alone
        monkeypatch.setattr(sharded, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*earlier checkpoints are intact"):
        save_sharded(2)
    assert list_checkpoints(tmp_path) == [first] and latest_checkpoint(tmp_path) == first
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


def test_a_nonfinite_state_is_never_saved_over_a_good_checkpoint(tmp_path):
    model, optimizer, cfg = tiny_model_and_optimizer()
    good = save(tmp_path, 1, model, optimizer, cfg, keep_last=1)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        save(tmp_path, 2, model, optimizer, cfg, keep_last=1)
    assert latest_checkpoint(tmp_path) == good and checkpoint.verify(good) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest", "traversal"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    model, optimizer, cfg = tiny_model_and_optimizer()
    older = save(tmp_path, 1, model, optimizer, cfg)
    newest = save(tmp_path, 2, model, optimizer, cfg)
    state = newest / "state.pt"
    manifest = json.loads((newest / "manifest.json").read_text())
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0x10
        state.write_bytes(bytes(data))
    elif damage == "delete":
        state.unlink()
    elif damage == "manifest":
        (newest / "manifest.json").write_text('{"step": 2, "fi')
    else:  # the manifest vouches for a file outside the folder
        manifest["files"]["../../outside"] = manifest["files"].pop("state.pt")
        (newest / "manifest.json").write_text(json.dumps(manifest))
    assert latest_checkpoint(tmp_path) == older
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and str(newest) in warning


class WritesMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a crafted file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_state_file_crafted_to_run_code_is_refused_without_running_it(tmp_path):
    model, optimizer, cfg = tiny_model_and_optimizer()
    path = save(tmp_path, 1, model, optimizer, cfg)
    marker = tmp_path / "pwned"
    torch.save({"optimizer": WritesMarker(marker), "rng": {}}, path / "state.pt")
    manifest = json.loads((path / "manifest.json").read_text())  # the attacker makes the manifest match too
    manifest["files"]["state.pt"] = {"bytes": (path / "state.pt").stat().st_size,
                                     "sha256": checkpoint._sha256(path / "state.pt")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert latest_checkpoint(tmp_path) == path

    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, model, optimizer)
    assert not marker.exists()
    # The payload is live: a loader that trusted the file would have run it.
    torch.load(path / "state.pt", weights_only=False)
    assert marker.exists()


def test_hugging_face_import_reads_no_pickle_and_no_remote_code(tmp_path):
    from nextword.model.hf import load_hf_model

    marker = tmp_path / "pwned"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "auto_map": {"AutoModelForCausalLM": "evil.Model"},
        "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 8, "vocab_size": 64}))
    (hf / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(CheckpointError, match="pickled"):
        load_hf_model(hf)
    assert not marker.exists()
    sources = "".join(p.read_text() for p in Path(checkpoint.__file__).parent.rglob("*.py"))
    assert "trust_remote_code=True" not in sources


# --- prepare killed at any moment ---------------------------------------------------------------------------


def prepare_args(corpus: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "nextword", "prepare", "--source", str(corpus), "--data-dir", str(data_dir),
            "--vocab-size", "300", "--workers", "1"]


def test_prepare_killed_at_random_moments_then_rerun_gives_identical_shards(tmp_path, monkeypatch):
    from nextword.data.shards import TokenShards

    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = make_corpus(tmp_path / "corpus", files=60, words=3000)
    reference = tmp_path / "reference"
    began = time.monotonic()
    subprocess.run(prepare_args(corpus, reference), check=True, capture_output=True, timeout=120)
    duration = time.monotonic() - began

    data_dir = tmp_path / "data"
    rng = random.Random(7)
    for trial in range(3):
        process = subprocess.Popen(prepare_args(corpus, data_dir), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        process.kill()
        process.wait(timeout=10)
        if (data_dir / "index.json").exists():  # whatever looks finished must read back whole
            for split in ("train", "val"):
                TokenShards(data_dir, split)
    subprocess.run(prepare_args(corpus, data_dir), check=True, capture_output=True, timeout=120)
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in data_dir.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(reference, data_dir, names, shallow=False)
    assert mismatch == errors == [] and len(match) == len(names)


# --- downloads from a server that misbehaves ----------------------------------------------------------------


class FaultyServer(BaseHTTPRequestHandler):
    """Serves one file, with Range support; `faults` lists what the next requests do wrong."""

    data = b""
    faults: list[str] = []
    requests: list[tuple[float, str]] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        self.requests.append((time.monotonic(), self.headers.get("Range", "")))
        fault = self.faults.pop(0) if self.faults else ""
        if fault == "429":
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = self.data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        claimed = len(body) + 1000 if fault == "long" else len(body)  # "long": says more than it sends
        self.send_header("Content-Length", str(claimed))
        self.end_headers()
        if fault == "stall":  # half the body, then silence longer than the client's timeout
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            time.sleep(1.5)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def faulty_server():
    FaultyServer.data = bytes(range(256)) * 64
    FaultyServer.faults, FaultyServer.requests = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FaultyServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/file.wet.gz"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("fault", ["429", "long", "stall"])
def test_a_download_survives_each_server_fault(faulty_server, tmp_path, fault):
    FaultyServer.faults = [fault]
    dest = tmp_path / "file.wet.gz"
    options = FetchOptions(retries=2, backoff_s=0.0, timeout_s=0.5)
    download(faulty_server, dest, options, log=lambda line: None)
    assert dest.read_bytes() == FaultyServer.data
    assert not list(tmp_path.glob("*.part"))
    (first, _), (second, second_range) = FaultyServer.requests
    if fault == "429":
        assert second - first >= 0.9  # the server's Retry-After was honoured, not the zero backoff
    elif fault == "stall":
        assert second_range == f"bytes={len(FaultyServer.data) // 2}-"  # resumed where the stall cut it
    else:
        assert second_range.startswith("bytes=")


def test_a_download_that_keeps_failing_leaves_no_file_under_its_final_name(faulty_server, tmp_path):
    FaultyServer.faults = ["stall"] * 3  # each attempt gets half of what is left, then the server goes quiet
    dest = tmp_path / "file.wet.gz"
    with pytest.raises(DataError, match="download failed after 3 attempts"):
        download(faulty_server, dest, FetchOptions(retries=2, backoff_s=0.0, timeout_s=0.3), log=lambda line: None)
    assert not dest.exists()
    kept = (tmp_path / "file.wet.gz.part").read_bytes()
    assert kept == FaultyServer.data[:len(FaultyServer.data) * 7 // 8]  # what arrived is kept for the next run


@pytest.mark.parametrize("name", ["..", ".", ""])
def test_a_fetched_file_name_cannot_leave_the_output_folder(tmp_path, name):
    from nextword.data.fetch import local_name

    with pytest.raises(DataError, match="file name"):
        local_name(f"crawl-data/x/{name}", tmp_path)
    assert local_name("../../../etc/file.wet.gz", tmp_path) == tmp_path / "file.wet.gz"


def test_a_shard_index_cannot_point_outside_its_data_dir(corpus, tmp_path):
    from nextword.data.shards import TokenShards

    assert cli.main(["prepare", "--source", str(corpus), "--data-dir", str(tmp_path / "data"), "--vocab-size", "300",
                     "--workers", "1"]) == 0
    index_path = tmp_path / "data" / "index.json"
    index = json.loads(index_path.read_text())
    outside = tmp_path / "outside.bin"
    shutil.copy(tmp_path / "data" / index["splits"]["val"]["shards"][0]["file"], outside)
    index["splits"]["val"]["shards"][0]["file"] = "../outside.bin"
    index_path.write_text(json.dumps(index))
    with pytest.raises(DataError, match="not a file of this folder"):
        TokenShards(tmp_path / "data", "val")


# --- a rank killed in a distributed run -------------------------------------------------------------------------


def rank_processes(agent_pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (its child processes, by the RANK in their environment)."""
    ranks = {}
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = int(child)
    return ranks


def test_a_rank_killed_mid_step_ends_the_job_naming_it_and_the_run_resumes(corpus, tmp_path):
    run_dir = tmp_path / "ddp"
    args = train_args(tmp_path, "ddp") + ["--nproc", "2", "--train.batch_tokens", str(2 * 4 * 32)]
    process = start_train(args, OMP_NUM_THREADS="1")
    wait_until(lambda: any(r["step"] >= CKPT_EVERY + 2 for r in logged(run_dir, "train")), process,
               f"step {CKPT_EVERY + 2} under torchrun")
    ranks = rank_processes(process.pid)
    assert sorted(ranks) == [0, 1], ranks
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the job hung after a rank was killed")
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    assert process.returncode != 0 and time.monotonic() - killed < 60
    assert "rank" in error and "1" in error and "SIGKILL" in error, error[-2000:]
    saved = latest_checkpoint(run_dir)
    assert saved is not None

    done = subprocess.run([sys.executable, "-m", "nextword", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=TRAIN_TIMEOUT_S * 2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert logged(run_dir, "run")[-1]["resumed_from"] == int(saved.name.removeprefix("step_"))
    by_step: dict[int, float] = {}
    for record in logged(run_dir, "train"):  # a step run before the kill and again after: the same loss
        assert record["loss"] == pytest.approx(by_step.setdefault(record["step"], record["loss"]), abs=1e-6)
    assert sorted(by_step) == list(range(1, STEPS + 1))


# --- a loss spike in a distributed run --------------------------------------------------------------------------

SPIKE_STEP, SPIKE_ROLLS_BACK_TO, SPIKE_RUN_STEPS = 18, 15, 30
WINDOWS_PER_STEP = 2 * 4  # ranks × micro-batch, or micro-steps × micro-batch in one process


def garbage_batches(next_batch, garbage: set[int], served: list[int]):
    """TokenLoader.next_batch, but every training window at a global stream position in `garbage` is random
    tokens, whichever rank or micro-step reads it; the positions served are appended to `served`."""
    def next_batch_or_garbage(loader, rows=None):
        first = loader.epoch * loader.num_windows + loader.cursor + loader.rank
        positions = [first + loader.world_size * row for row in range(rows or loader.batch_size)]  # as next_batch reads them
        x, y = next_batch(loader, rows)
        if loader.shards.split != "train":
            return x, y
        served.extend(positions)
        for row, position in enumerate(positions):
            if position in garbage:
                tokens = torch.randint(0, 300, (x.shape[1] + 1,), generator=torch.Generator().manual_seed(position))
                x[row], y[row] = tokens[:-1], tokens[1:]
        return x, y

    return next_batch_or_garbage


# Each rank of the job runs this: `nextword train` with garbage windows, writing the positions it read at exit.
SPIKING_RANK = """
import atexit, json, os, sys
from pathlib import Path
from nextword import cli
from nextword.data.loader import TokenLoader
from test_faults import garbage_batches

served = []
TokenLoader.next_batch = garbage_batches(TokenLoader.next_batch, set(json.loads(os.environ["GARBAGE"])), served)
atexit.register(lambda: Path(os.environ["SERVED"] + os.environ["RANK"]).write_text(json.dumps(served)))
sys.exit(cli.main(sys.argv[1:]))
"""


def spike_args(tmp_path: Path, run: str) -> list[str]:
    """Steps of 8 windows, a checkpoint every 5 steps, spikes measured against the last 5 logged losses. Half of a
    step's windows of random tokens raise its loss by half as much, so the limit is 3 deviations, not 6."""
    return train_args(tmp_path, run, steps=SPIKE_RUN_STEPS) + [
        "--train.batch_tokens", str(WINDOWS_PER_STEP * 32), "--train.spike_rollback", "true",
        "--train.spike_window", "5", "--train.spike_sigmas", "3", "--train.keep_last", "10", "--eval.every", "1000",
        *ADAMW]


def run_job(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a torchrun job; if it hangs, kill its ranks (each in a session of its own), then torchrun, and fail."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = process.communicate(timeout=TRAIN_TIMEOUT_S * 2)
    except subprocess.TimeoutExpired:
        for pid in [*rank_processes(process.pid).values(), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f"the job hung: {' '.join(command)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_a_loss_spike_on_one_rank_rolls_every_rank_back_together(corpus, tmp_path, monkeypatch):
    """DDP over 2 gloo processes. Rank 1's windows of step 18 are random tokens, rank 0's are not: only the loss
    averaged over the ranks spikes. A rank that decided from its own loss alone would roll back while the other
    went on, and the job would hang in mismatched collectives."""
    first = (SPIKE_STEP - 1) * WINDOWS_PER_STEP
    garbage = set(range(first + 1, first + WINDOWS_PER_STEP, 2))  # the odd positions: rank 1's
    served: list[int] = []
    monkeypatch.setattr(TokenLoader, "next_batch", garbage_batches(TokenLoader.next_batch, garbage, served))
    assert cli.main(spike_args(tmp_path, "single")) == 0  # one process, two micro-steps: the same global batch
    (script := tmp_path / "spiking_rank.py").write_text(SPIKING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GARBAGE": json.dumps(sorted(garbage)),
           "SERVED": str(tmp_path / "served-rank"), "PYTHONPATH": str(Path(__file__).parent)}
    done = run_job([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), *spike_args(tmp_path, "ddp")], env)
    assert done.returncode == 0, done.stderr[-3000:]

    (rollback,) = logged(tmp_path / "ddp", "rollback")  # counted once, in rank 0's log
    assert (rollback["step"], rollback["to_step"], rollback["rollbacks"]) == (SPIKE_STEP, SPIKE_ROLLS_BACK_TO, 1)
    assert logged(tmp_path / "ddp", "summary")[0]["spike_rollbacks"] == 1
    # Both ranks went back to the same checkpoint: each wrote the same warning ...
    warning = (f"loss spike at step {SPIKE_STEP}: {rollback['loss']:.3f}, above {rollback['limit']:.3f} "
               f"(the mean + 3 standard deviations of the last 5 logged losses); back to "
               f"step_{SPIKE_ROLLS_BACK_TO:07d}, skipping the data of the 3 steps since it")
    assert done.stderr.count(warning) == 2, done.stderr[-3000:]
    # ... and read on past the skipped data, each window of its share once.
    steps_read = SPIKE_RUN_STEPS + SPIKE_STEP - SPIKE_ROLLS_BACK_TO
    for rank in (0, 1):
        read = json.loads((tmp_path / f"served-rank{rank}").read_text())
        assert read == list(range(rank, steps_read * WINDOWS_PER_STEP, 2)), rank
    # Together they trained as one process does on the same global batch, spike and rollback included.
    assert served == list(range(steps_read * WINDOWS_PER_STEP))
    assert logged(tmp_path / "single", "rollback")[0]["to_step"] == SPIKE_ROLLS_BACK_TO
    single, ddp = logged(tmp_path / "single", "train"), logged(tmp_path / "ddp", "train")
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=1e-5)


def test_a_second_train_on_a_run_directory_in_use_is_refused_and_a_killed_ones_lock_is_no_obstacle(tmp_path, corpus,
                                                                                                     capsys):
    """Two `nextword train` on one run directory would both train and both write its log and checkpoints; the
    second is refused in one line naming the first, and once the first is killed -9 the same command resumes."""
    first = start_train(train_args(tmp_path, "run", steps=100_000))
    wait_until(lambda: list_checkpoints(tmp_path / "run"), first, "the first run's first checkpoint")
    assert cli.main(train_args(tmp_path, "run")) == 2
    error = capsys.readouterr().err
    assert f"run: the run folder in use by process {first.pid} (nextword train --source" in error
    assert "wait for it to finish or stop it, or give --run-dir another folder" in error
    kill_9(first)
    assert cli.main(train_args(tmp_path, "run", steps=100_000) + ["--stop-after", str(CKPT_EVERY + 1)]) == 0
    assert f"resuming {tmp_path / 'run'} from step" in capsys.readouterr().out
