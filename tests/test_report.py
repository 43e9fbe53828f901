import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browser import find_chromium, needs_chromium
from matplotlib.image import imread

from nextword import cli
from nextword.config import RunConfig
from nextword.tools.report import VAL_COLOUR, read_history, render_html, write_report
from nextword.training.trainer import train

WORDS = "def return import class self value the model token data while for if else print list dict".split()


def write_log(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps({"time": 0.0, **record}) + "\n")


def train_record(step: int, loss: float) -> dict:
    return {"kind": "train", "step": step, "tokens": 64 * step, "loss": loss, "lr": 1e-3 * min(1, step / 3),
            "grad_norm": 1.0, "tokens_per_s": 900.0 + 10 * step, "mfu": 0.02 + 0.001 * step}


def run_record(**fields) -> dict:
    return {"kind": "run", "device": "cpu", "name": "Test CPU", "capability": "AVX2", "precision": "fp32",
            "precision_reason": "no native bf16 on this CPU", "compile": False, "params": 36096,
            "flops_per_token": 229632, "peak_flops": 1.3e11, "resumed_from": 0, **fields}


def page_images(page: Path) -> list[Path]:
    return [page.parent / src for src in re.findall(r'<img src="([^"]+)"', page.read_text())]


def pixels_near(image: np.ndarray, colour: str, tolerance: float = 0.08) -> int:
    """How many pixels of an RGB(A) image are within `tolerance` of a #rrggbb colour."""
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < tolerance).sum())


@pytest.fixture
def trained_run(tmp_path, monkeypatch):
    """A real 20-step run of a tiny model on a few KB of generated text."""
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        text = " ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(300))
        (corpus / f"doc_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 2, 32, 2, 32
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(corpus)], 300, 0.2
    cfg.data.data_dir = str(tmp_path / "data")
    cfg.train.run_dir, cfg.train.micro_batch, cfg.train.log_every, cfg.train.steps = str(tmp_path / "run"), 4, 1, 20
    cfg.train.precision, cfg.train.compile, cfg.train.threads = "fp32", "off", 1
    cfg.eval.batches, cfg.eval.sample_tokens, cfg.eval.prompts = 2, 8, ["def "]
    train(cfg, progress=False)
    return tmp_path / "run"


def test_the_report_of_a_trained_run_shows_its_plots_samples_machine_and_config(trained_run):
    page = write_report(trained_run)
    assert page == trained_run / "report" / "index.html"
    html = page.read_text()

    images = page_images(page)
    assert [p.name for p in images] == ["loss.png", "bits_per_byte.png", "learning_rate.png", "throughput.png"]
    for path in images:
        image = imread(path)
        assert image.shape[0] > 300 and image[..., :3].std() > 0.05, f"{path.name} looks blank"
    loss_plot = imread(trained_run / "report" / "loss.png")
    assert pixels_near(loss_plot, VAL_COLOUR) > 200  # the validation curve is drawn

    evals = [r for r in map(json.loads, (trained_run / "log.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert len(evals) >= 2
    headings = re.findall(r"<h3>Step ([\d,]+) ", html)
    assert [int(h.replace(",", "")) for h in headings] == [r["step"] for r in evals]  # in order, noise first
    assert f"ln V = {math.log(300):.2f}" in html
    assert "Test" not in html and "fp32" in html and "set in the config" in html  # the run record's own values
    assert "training FLOPs per token" in html and "TFLOP/s" in html
    assert "[model]" in html and "n_layers = 2" in html  # the config
    assert "No summary yet" not in html and "wall seconds" in html  # the final summary


def test_missing_pieces_render_as_notes_and_text_is_escaped(tmp_path):
    run_dir = tmp_path / "run"
    write_log(run_dir, [run_record(), *(train_record(s, 6.0 - 0.3 * s) for s in range(1, 6))])
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    page = tmp_path / "out" / "index.html"
    html = page.read_text()
    assert [p.name for p in page_images(page)] == ["loss.png", "learning_rate.png", "throughput.png"]
    assert all(p.stat().st_size > 1000 for p in page_images(page))
    assert "No evaluation logged yet" in html and "No config.toml" in html and "No summary yet" in html
    assert "not finished" in html and "no native bf16 on this CPU" in html

    write_log(run_dir, [run_record(precision_reason="<b>bold</b>"), train_record(1, 5.0),
                        {"kind": "eval", "step": 1, "tokens": 64, "val_loss": 4.0,
                         "samples": [{"prompt": "<script>", "text": "x < y & z"}]}])
    html = write_report(run_dir).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "x &lt; y &amp; z" in html
    assert "<b>bold</b>" not in html


def test_a_resumed_run_counts_each_step_once_and_a_stop_is_read_as_resumable(tmp_path):
    run_dir = tmp_path / "run"
    interrupted = [run_record(), *(train_record(s, 5.0) for s in range(1, 5)), {"kind": "stop", "step": 2}]
    write_log(run_dir, interrupted)
    history = read_history(run_dir)
    assert history.stop == {"kind": "stop", "step": 2, "time": 0.0} and history.segments == 1
    assert "resumable" in render_html(history, plot_files={})

    resumed = [run_record(resumed_from=2), *(train_record(s, 4.0) for s in range(3, 7))]
    write_log(run_dir, interrupted + resumed)
    history = read_history(run_dir)
    assert [r["step"] for r in history.train] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in history.train] == [5.0, 5.0, 4.0, 4.0, 4.0, 4.0]  # the resumed session's values
    assert history.stop is None and history.segments == 2
    assert "trained in 2 sessions" in render_html(history, plot_files={})


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a run directory (no log.jsonl)" in err and str(tmp_path) in err

    (tmp_path / "log.jsonl").write_text('{"kind": "note"}\n')
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "holds no training records" in capsys.readouterr().err



def test_an_out_folder_that_cannot_be_made_is_a_one_line_error(tmp_path, capsys):
    write_log(tmp_path / "run", [{"kind": "run", "device": "cpu"}, train_record(1, 5.0)])
    (tmp_path / "a_file").write_text("not a folder")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "report"):
        assert cli.main(["report", str(tmp_path / "run"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(out) in err and "--out" in err


def test_the_browser_is_found_under_any_of_its_usual_names(tmp_path, monkeypatch):
    browser = tmp_path / "chromium-browser"  # Ubuntu's and Fedora's name for it
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() == str(browser)


@needs_chromium
def test_a_browser_draws_the_page_with_its_plots(tmp_path):
    run_dir = tmp_path / "run"
    evals = [{"kind": "eval", "step": s, "tokens": 64 * s, "val_loss": 6.0 - 0.2 * s, "val_bpb": 3.0 - 0.1 * s,
              "samples": [{"prompt": "def ", "text": f"sample at step {s}"}]} for s in (0, 5, 10)]
    write_log(run_dir, [run_record(), evals[0], *(train_record(s, 6.0 - 0.2 * s) for s in range(1, 11)),
                        *evals[1:]])
    page = write_report(run_dir)
    shot = tmp_path / "shot.png"
    subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,900",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=60, check=True)
    image = imread(shot)
    assert image.shape[:2] == (900, 1280)
    assert image[..., :3].std() > 0.05
    assert pixels_near(image, VAL_COLOUR) > 200  # the plots loaded, not only the text
