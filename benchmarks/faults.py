"""Fault injection, the broad version of tests/test_faults.py: how many runs survive what, and at what cost.

    .venv/bin/python benchmarks/faults.py [--kill-trials 50] [--rank-trials 10] [--fuzz-inputs 10000] [--memory-mb 2000]
    .venv/bin/python benchmarks/faults.py --only spike sharded-disk     # some rows alone

Prints one table: fault, trials, survived, steps lost beyond the last checkpoint, bytes of accepted data lost,
and the worst time to recover (restart to the first new training step, or the rerun that finishes the job).
Defaults are scaled down so the whole table takes a few minutes on a 2-core machine; the issue's full sizes are
the numbers in the usage line above. Everything runs on CPU in a temporary folder.
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from nextword.training.checkpoint import SAVE_DELAY_ENV, latest_checkpoint
from nextword.config import ConfigError, load
from nextword.data.fetch import FetchOptions, download
from nextword.data.sources import SkipLog, read_sources
from nextword.data.tokenizer import Tokenizer
from nextword.errors import DataError

WORDS = ("def return import class self value the model token data while for if else print list dict "
         "loss learning next word predicts each step").split()
STEPS, CKPT_EVERY = 60, 5


@dataclass
class Row:
    fault: str
    trials: int = 0
    survived: int = 0
    steps_lost: int = 0
    bytes_lost: int = 0
    worst_recover_s: float = 0.0
    note: str = ""

    def add(self, survived: bool, steps_lost: int = 0, bytes_lost: int = 0, recover_s: float = 0.0) -> None:
        self.trials += 1
        self.survived += survived
        self.steps_lost += steps_lost
        self.bytes_lost += bytes_lost
        self.worst_recover_s = max(self.worst_recover_s, recover_s)


def make_corpus(folder: Path, files: int = 30, words: int = 400) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = " ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(words))
        (folder / f"doc_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def nextword(*args: str) -> list[str]:
    return [sys.executable, "-m", "nextword", *args]


def train_command(work: Path, run: str, steps: int = STEPS) -> list[str]:
    return nextword("train", "--source", str(work / "corpus"), "--run-dir", str(work / run), "--steps", str(steps),
                    "--precision", "fp32", "--compile", "off", "--quiet", "--model.n_layers", "2",
                    "--model.d_model", "32", "--model.n_heads", "2", "--model.context", "32",
                    "--data.vocab_size", "300", "--data.val_fraction", "0.2", "--data.data_dir", str(work / "data"),
                    "--train.micro_batch", "4", "--train.log_every", "1", "--train.ckpt_every", str(CKPT_EVERY),
                    "--train.threads", "1", "--eval.batches", "2", "--eval.sample_tokens", "4",
                    "--eval.prompts", "def ")


def records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "log.jsonl"
    out = []
    for line in (path.read_text(encoding="utf-8").splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == kind:
            out.append(record)
    return out


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def reference_losses(work: Path) -> dict[int, float]:
    """{step: loss} of an uninterrupted run, which every killed and restarted run must repeat."""
    subprocess.run(train_command(work, "reference"), check=True, capture_output=True)
    return {r["step"]: r["loss"] for r in records(work / "reference", "train")}


def restart_and_check(work: Path, run_dir: Path, reference: dict[int, float], saved_step: int) -> tuple[bool, int, float]:
    """Run the same command again; (losses equal the reference, steps lost beyond the last checkpoint, seconds
    from the restart to its first training step)."""
    began = time.time()
    done = subprocess.run(train_command(work, run_dir.name), capture_output=True, text=True)
    resumed = records(run_dir, "run")[-1]["resumed_from"]
    first_new = next(r for r in records(run_dir, "train") if r["time"] >= began)
    same = done.returncode == 0 and all(abs(r["loss"] - reference[r["step"]]) <= 1e-6
                                        for r in records(run_dir, "train"))
    same = same and {r["step"] for r in records(run_dir, "train")} == set(reference)
    return same, max(0, saved_step - resumed), first_new["time"] - began


def kill_trials(work: Path, trials: int, reference: dict[int, float], rng: random.Random) -> Row:
    row = Row("kill -9 of `nextword train` at a random step")
    for trial in range(trials):
        run_dir = work / f"kill{trial}"
        kill_at = rng.randint(1, STEPS - 2)
        process = subprocess.Popen(train_command(work, run_dir.name), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        wait_for(lambda: any(r["step"] >= kill_at for r in records(run_dir, "train")), process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = latest_checkpoint(run_dir)
        saved_step = int(saved.name.removeprefix("step_")) if saved else 0
        row.add(*_as_add(restart_and_check(work, run_dir, reference, saved_step)))
        shutil.rmtree(run_dir)
    return row


def kill_in_save_trials(work: Path, trials: int, reference: dict[int, float], rng: random.Random) -> Row:
    row = Row("kill -9 inside a checkpoint write")
    for trial in range(trials):
        run_dir = work / f"killsave{trial}"
        target = CKPT_EVERY * rng.randint(1, STEPS // CKPT_EVERY - 1)
        process = subprocess.Popen(train_command(work, run_dir.name), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env={**os.environ, SAVE_DELAY_ENV: "1"})
        writing = run_dir / "checkpoints"
        wait_for(lambda: any((p / "trainer.json").exists() for p in writing.glob(f".tmp-step_{target:07d}-*")),
                 process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = latest_checkpoint(run_dir)
        saved_step = int(saved.name.removeprefix("step_")) if saved else 0
        row.add(*_as_add(restart_and_check(work, run_dir, reference, saved_step)))
        shutil.rmtree(run_dir)
    return row


def rank_processes(agent_pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started, by the RANK in their environment."""
    ranks = {}
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks.update({int(e[5:]): int(child) for e in environ if e.startswith(b"RANK=")})
    return ranks


def rank_kill_trials(work: Path, trials: int, rng: random.Random) -> Row:
    """DDP over 2 gloo processes; rank 1 is killed with SIGKILL at a random step. Survived: the job exits
    non-zero within 60 s naming the rank, and the same command resumes from the last checkpoint to the end with
    every re-run step giving the loss it gave before."""
    row = Row("rank 1 of 2 killed mid-step (DDP, gloo)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(trials):
        run_dir = work / f"rank{trial}"
        command = train_command(work, run_dir.name) + ["--nproc", "2", "--train.batch_tokens", str(2 * 4 * 32)]
        kill_at = rng.randint(CKPT_EVERY + 1, STEPS - 2)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        wait_for(lambda: any(r["step"] >= kill_at for r in records(run_dir, "train")), process)
        ranks = rank_processes(process.pid) if process.poll() is None else {}
        if 1 not in ranks:  # the job ended or hung before the chosen step: a failed trial
            process.kill()
            row.add(False)
            continue
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        try:
            process.wait(timeout=60)
            error = process.stderr.read().decode(errors="replace")
            ended = process.returncode != 0 and "SIGKILL" in error and "rank" in error
        except subprocess.TimeoutExpired:
            process.kill()
            ended = False
        note = f"job ended {time.monotonic() - killed:.1f} s after the kill"
        saved = latest_checkpoint(run_dir)
        saved_step = int(saved.name.removeprefix("step_")) if saved else 0
        began = time.time()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        resumed = records(run_dir, "run")[-1]["resumed_from"]
        by_step: dict[int, float] = {}
        consistent = all(abs(r["loss"] - by_step.setdefault(r["step"], r["loss"])) <= 1e-6
                         for r in records(run_dir, "train"))
        first_new = next((r for r in records(run_dir, "train") if r["time"] >= began), {"time": began})
        row.add(ended and done.returncode == 0 and consistent and sorted(by_step) == list(range(1, STEPS + 1)),
                steps_lost=max(0, saved_step - resumed), recover_s=first_new["time"] - began)
        row.note = note if not row.note else f"{row.note}; {note}"
        shutil.rmtree(run_dir)
    return row


def _as_add(result: tuple[bool, int, float]) -> tuple[bool, int, int, float]:
    survived, steps_lost, seconds = result
    return survived, steps_lost, 0, seconds


def full_disk_trial(work: Path) -> Row:
    row = Row("disk full while saving (1 MB tmpfs)")
    run_dir = work / "full"
    mount = run_dir / "checkpoints"
    mount.mkdir(parents=True)
    kept = work / "full-kept"
    command = " ".join(f"'{a}'" for a in train_command(work, "full"))
    script = f"mount -t tmpfs -o size=1000k tmpfs {mount} && {command}; echo $? > {work / 'rc'}; cp -a {mount} {kept}"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True)
    if not (work / "rc").exists():
        row.note = "not run: cannot mount a tmpfs here"
        return row
    one_line = [line for line in done.stderr.splitlines() if line.startswith("nextword train:")]
    from nextword.training.checkpoint import verify

    intact = all(verify(p) is None for p in kept.iterdir())
    survived = (work / "rc").read_text().strip() == "2" and len(one_line) == 1 and intact and any(kept.iterdir())
    row.add(survived)
    return row


def sharded_full_disk_trial(work: Path) -> Row:
    """FSDP over 2 gloo processes with the checkpoints folder on a 1 MB tmpfs, as in the test: the step-5
    checkpoint fits, the step-10 one does not. Survived: a non-zero exit, the same one-line error on each rank,
    the step-5 checkpoint alone left and it verifies (no temporary folder either)."""
    row = Row("disk full while saving a sharded checkpoint (FSDP, 2 gloo processes, 1 MB tmpfs)")
    run_dir = work / "sharded-full"
    mount = run_dir / "checkpoints"
    mount.mkdir(parents=True)
    kept = work / "sharded-full-kept"
    command = " ".join(f"'{a}'" for a in train_command(work, run_dir.name, steps=12)
                       + ["--nproc", "2", "--train.parallel", "fsdp", "--train.batch_tokens", str(2 * 4 * 32)])
    rc = work / "sharded-rc"
    script = f"mount -t tmpfs -o size=1000k tmpfs {mount} && {command}; echo $? > {rc}; cp -a {mount} {kept}"
    began = time.monotonic()
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.monotonic() - began
    if not rc.exists():
        row.note = "not run: cannot mount a tmpfs here"
        return row
    from nextword.training.checkpoint import verify

    errors = re.findall(r"nextword train: \S+/step_0000010: checkpoint not written \(No space left on device on "
                        r"rank \d; [^)]*\); the earlier checkpoints are intact", done.stderr)
    left = sorted(p.name for p in kept.iterdir())
    intact = left == ["step_0000005"] and verify(kept / "step_0000005") is None
    row.add(rc.read_text().strip() != "0" and len(errors) == 2 and intact)
    row.note = (f"exit {rc.read_text().strip()} after {seconds:.1f} s; {len(errors)} ranks gave the one-line error; "
                f"left: {', '.join(left) or 'nothing'}")
    return row


# Runs `nextword train` with random tokens in the training windows at the global stream positions listed in
# NEXTWORD_GARBAGE (whichever rank reads them), with the loss-spike test's own injection.
SPIKING_TRAIN = """
import os, sys
from nextword import cli
from nextword.data.loader import TokenLoader
from test_faults import garbage_batches

garbage = {int(p) for p in os.environ["NEXTWORD_GARBAGE"].split(",") if p}
TokenLoader.next_batch = garbage_batches(TokenLoader.next_batch, garbage, served=[])
sys.exit(cli.main(sys.argv[1:]))
"""
TESTS = Path(__file__).resolve().parents[1] / "tests"
SPIKE_STEP = 43  # after the default 20-loss window has filled; checkpoints every 5 steps, so back to step 40


def spike_trial(work: Path, row: Row, run: str, garbage: list[int], nproc: int, extra: list[str]) -> None:
    """Train with the windows in `garbage` replaced by random tokens and train.spike_rollback on, and once more
    without them. Survived: both exit 0, the spiking run rolled back once, to the newest checkpoint before the
    spike, and its final validation loss is finite and within 2% of the other's."""
    script = work / "spiking_train.py"
    script.write_text(SPIKING_TRAIN)
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                   if nproc > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    val_loss = {}
    for name, windows in ((f"{run}-spiked", garbage), (f"{run}-clean", [])):
        args = train_command(work, name)[len(nextword()):]  # what follows `python -m nextword`
        command = launcher + [str(script), *args, "--train.spike_rollback", "true", *extra]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**env, "NEXTWORD_GARBAGE": ",".join(map(str, windows))})
        if done.returncode != 0:
            row.add(False)
            row.note = f"{name} failed: {done.stderr.strip().splitlines()[-1]}"
            return
        val_loss[name] = records(work / name, "eval")[-1]["val_loss"]
    spiked, clean = val_loss[f"{run}-spiked"], val_loss[f"{run}-clean"]
    rollbacks = records(work / f"{run}-spiked", "rollback")
    if len(rollbacks) != 1:
        row.add(False)
        row.note = f"{len(rollbacks)} rollbacks"
        return
    (rollback,) = rollbacks
    trained = records(work / f"{run}-spiked", "train")
    # From the spike's log line to the first step after the rollback: the check, the reload and one step.
    spike = [r for r in trained if r["time"] <= rollback["time"]][-1]
    after = next(r for r in trained if r["time"] > rollback["time"])
    row.add(rollback["to_step"] == SPIKE_STEP - 3 and math.isfinite(spiked) and abs(spiked - clean) <= 0.02 * clean,
            steps_lost=SPIKE_STEP - 3 - rollback["to_step"], recover_s=after["time"] - spike["time"])
    row.note = (f"step {rollback['step']}: loss {rollback['loss']:.2f} above {rollback['limit']:.2f}, back to step "
                f"{rollback['to_step']}, {rollback['skipped_steps']} steps of data skipped; final val loss "
                f"{spiked:.3f} vs {clean:.3f} without the spike; "
                f"{(after['time'] - spike['time']) * 1000:.0f} ms from the spike's step to the next")


def spike_rows(work: Path) -> list[Row]:
    """A loss spike with train.spike_rollback on: one process fed a whole batch of random tokens at step 43, and
    FSDP over 2 gloo processes where only rank 1's half of step 43's batch is random tokens, so that only the loss
    averaged over the ranks spikes."""
    single = Row("loss spike, spike_rollback on (1 process)")
    windows = 4  # micro_batch 4, one micro-step
    spike_trial(work, single, "spike", list(range((SPIKE_STEP - 1) * windows, SPIKE_STEP * windows)), 1, [])
    # Half a batch of random tokens raises the loss by half as much: measured against 3 deviations, not 6.
    sharded = Row("loss spike on rank 1 only, spike_rollback on, spike_sigmas 3 (FSDP, 2 gloo processes)")
    windows = 2 * 4  # 2 ranks × micro_batch 4
    first = (SPIKE_STEP - 1) * windows
    spike_trial(work, sharded, "spike-fsdp", list(range(first + 1, first + windows, 2)), 2,
                ["--train.parallel", "fsdp", "--train.batch_tokens", str(windows * 32), "--train.spike_sigmas", "3"])
    return [single, sharded]


def prepare_trials(work: Path, trials: int, rng: random.Random) -> Row:
    row = Row("kill -9 of `nextword prepare` at a random time")
    corpus = make_corpus(work / "big-corpus", files=200, words=3000)

    def command(data_dir: Path) -> list[str]:
        return nextword("prepare", "--source", str(corpus), "--data-dir", str(data_dir), "--vocab-size", "300",
                        "--workers", "1")

    began = time.monotonic()
    subprocess.run(command(work / "prep-ref"), check=True, capture_output=True)
    duration = time.monotonic() - began
    for trial in range(trials):
        data_dir = work / f"prep{trial}"
        process = subprocess.Popen(command(data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        process.send_signal(signal.SIGKILL)
        process.wait()
        began = time.monotonic()
        subprocess.run(command(data_dir), check=True, capture_output=True)
        names = sorted(p.name for p in (work / "prep-ref").iterdir())
        match, mismatch, errors = filecmp.cmpfiles(work / "prep-ref", data_dir, names, shallow=False)
        lost = sum((work / "prep-ref" / n).stat().st_size for n in mismatch + errors)
        row.add(not mismatch and not errors, bytes_lost=lost, recover_s=time.monotonic() - began)
        shutil.rmtree(data_dir)
    return row


# --- fuzzed inputs ------------------------------------------------------------------------------------------


def damage(valid: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(2048))
    if kind == 1:
        return valid[:rng.randrange(len(valid) + 1)]
    out = bytearray(valid)
    for _ in range(rng.randint(1, 3)):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def reader_samples() -> dict[str, bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    texts = [f"Record {i} says the river floods every spring and farmers plant after it." for i in range(6)]
    jsonl = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    parquet = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), parquet)

    def web(kind: str, gz: bool) -> bytes:
        buffer = io.BytesIO()
        writer = WARCWriter(buffer, gzip=gz)
        for i, text in enumerate(texts[:3]):
            if kind == "wet":
                record = writer.create_warc_record(f"http://e.test/{i}", "conversion",
                                                   payload=io.BytesIO(text.encode()), warc_content_type="text/plain")
            else:
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
                record = writer.create_warc_record(f"http://e.test/{i}", "response", http_headers=http,
                                                   payload=io.BytesIO(f"<html><p>{text}</p></html>".encode()))
            writer.write_record(record)
        return buffer.getvalue()

    return {"a.txt": texts[0].encode(), "a.jsonl": jsonl, "a.jsonl.gz": gzip.compress(jsonl),
            "a.jsonl.zst": zstandard.ZstdCompressor().compress(jsonl), "a.parquet": parquet.getvalue(),
            "a.warc": web("warc", False), "a.warc.gz": web("warc", True), "a.wet.gz": web("wet", True),
            "tokenizer.json": Tokenizer.train(texts, 300).to_json().encode(),
            "config.toml": __import__("nextword.config", fromlist=["RunConfig"]).RunConfig().to_toml().encode()}


def read_once(path: Path) -> None:
    """Read as nextword would; allowed outcomes return, anything else raises."""
    try:
        if path.name == "tokenizer.json":
            Tokenizer.load(path)
        elif path.name == "config.toml":
            load(path)
        else:
            list(read_sources([str(path)], [".txt"], SkipLog()))
    except (DataError, ConfigError) as e:
        if "\n" in str(e) or str(path) not in str(e):
            raise AssertionError(f"not a one-line error naming the file: {e!r}") from None


def fuzz_rows(work: Path, inputs: int, rng: random.Random) -> list[Row]:
    rows = []
    for name, valid in reader_samples().items():
        row = Row(f"fuzzed input: {name}")
        crashes: dict[str, int] = {}
        slowest = 0.0
        for _ in range(inputs):
            path = work / "fuzz" / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(damage(valid, rng))
            began = time.monotonic()
            try:
                read_once(path)
                ok = True
            except Exception as e:  # what the benchmark counts: any crash at all
                ok = False
                crashes[type(e).__name__] = crashes.get(type(e).__name__, 0) + 1
            slowest = max(slowest, time.monotonic() - began)
            row.add(ok)
        row.note = f"slowest {slowest * 1000:.0f} ms" + "".join(f"; {n}× {k}" for k, n in crashes.items())
        rows.append(row)
    return rows


# --- downloads ----------------------------------------------------------------------------------------------


class FaultyServer(BaseHTTPRequestHandler):
    data = b""
    faults: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        fault = self.faults.pop(0) if self.faults else ""
        if fault in ("500", "429"):
            self.send_response(int(fault))
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = self.data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.send_header("Content-Length", str(len(body) + (999 if fault == "long" else 0)))
        self.end_headers()
        if fault in ("drop", "stall"):
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            if fault == "stall":
                time.sleep(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def download_rows(work: Path) -> list[Row]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FaultyServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/f.wet.gz"
    rows = []
    for fault in ("drop", "500", "429", "long", "stall"):
        FaultyServer.data = os.urandom(1 << 20)
        FaultyServer.faults = [fault, fault]
        row = Row(f"download: {dict(drop='connection dropped mid-body', long='Content-Length too long', stall='server stalls').get(fault, 'HTTP ' + fault)}")
        dest = work / f"dl-{fault}"
        began = time.monotonic()
        try:
            download(url, dest, FetchOptions(retries=4, backoff_s=0.1, timeout_s=0.5), log=lambda line: None)
            ok = dest.read_bytes() == FaultyServer.data
        except DataError:
            ok = False
        row.add(ok, bytes_lost=0 if ok else len(FaultyServer.data), recover_s=time.monotonic() - began)
        rows.append(row)
    httpd.shutdown()
    httpd.server_close()
    return rows


# --- memory -------------------------------------------------------------------------------------------------


def memory_row(work: Path, megabytes: int) -> Row:
    """Peak RSS of `nextword prepare` over a generated JSONL input of `megabytes`, against its 1/10th."""
    row = Row(f"prepare memory: peak RSS at {megabytes} MB vs {megabytes // 10} MB input")
    peaks = []
    for size in (megabytes // 10, megabytes):
        path = work / f"mem{size}.jsonl"
        rng = random.Random(size)
        line_words = 200
        with open(path, "w", encoding="utf-8") as f:
            written = 0
            while written < size * 1_000_000:
                line = json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(line_words))}) + "\n"
                f.write(line)
                written += len(line)
        process = subprocess.Popen(nextword("prepare", "--source", str(path), "--data-dir", str(work / f"memdata{size}"),
                                            "--vocab-size", "1024", "--workers", "1",
                                            "--data.tokenizer_train_bytes", "2000000"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peaks.append(peak_rss_mib(process))
        path.unlink()
        if process.returncode != 0:
            row.note = f"prepare failed with exit {process.returncode}"
            row.add(False)
            return row
    bounded = peaks[1] < 1.5 * peaks[0] + 100
    row.add(bounded)
    row.note = f"peak RSS {peaks[0]:.0f} MiB → {peaks[1]:.0f} MiB for 10× the input (bound: 1.5× + 100 MiB)"
    return row


def peak_rss_mib(process: subprocess.Popen) -> float:
    """The process's high-water RSS (VmHWM), read until it exits. Not ru_maxrss: a child forked from this big
    process starts with this process's high-water mark and keeps it across exec."""
    peak = 0
    while process.poll() is None:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return peak / 1024


def print_table(rows: list[Row]) -> None:
    print("| fault | trials | survived | steps lost beyond the last checkpoint | bytes of data lost | "
          "worst time to recover | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        recover = f"{r.worst_recover_s:.1f} s" if r.worst_recover_s else "–"
        print(f"| {r.fault} | {r.trials} | {r.survived} | {r.steps_lost} | {r.bytes_lost} | {recover} | {r.note} |")


ROW_GROUPS = ("kill", "save-kill", "disk", "sharded-disk", "prepare", "download", "fuzz", "rank", "spike", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-trials", type=int, default=8)
    parser.add_argument("--save-kill-trials", type=int, default=3)
    parser.add_argument("--prepare-trials", type=int, default=5)
    parser.add_argument("--rank-trials", type=int, default=2)
    parser.add_argument("--fuzz-inputs", type=int, default=1000)
    parser.add_argument("--memory-mb", type=int, default=200)
    parser.add_argument("--only", nargs="+", choices=ROW_GROUPS, default=ROW_GROUPS, metavar="ROWS",
                        help=f"run these rows alone, of: {' '.join(ROW_GROUPS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        os.environ["NEXTWORD_CACHE"] = str(work / "cache")
        make_corpus(work / "corpus")
        reference = reference_losses(work) if {"kill", "save-kill"} & set(args.only) else {}
        groups = {"kill": lambda: [kill_trials(work, args.kill_trials, reference, rng)],
                  "save-kill": lambda: [kill_in_save_trials(work, args.save_kill_trials, reference, rng)],
                  "disk": lambda: [full_disk_trial(work)],
                  "sharded-disk": lambda: [sharded_full_disk_trial(work)],
                  "prepare": lambda: [prepare_trials(work, args.prepare_trials, rng)],
                  "download": lambda: download_rows(work),
                  "fuzz": lambda: fuzz_rows(work, args.fuzz_inputs, rng),
                  "rank": lambda: [rank_kill_trials(work, args.rank_trials, rng)],
                  "spike": lambda: spike_rows(work),
                  "memory": lambda: [memory_row(work, args.memory_mb)]}
        rows = [row for name in ROW_GROUPS if name in args.only for row in groups[name]()]
    print_table(rows)
    print(f"\n{time.monotonic() - began:.0f} s on {os.cpu_count()} cores; seed {args.seed}")


if __name__ == "__main__":
    main()
