"""A run directory saved by an earlier nextword keeps the network it was trained as, whatever today's defaults.

tests/data/saved_run_2026_12_07 is such a directory, written by `nextword train` (commit 7423b37) before the
model options of the second recipe round existed: its config.toml has no field for them. Its own text and prepared
data sit beside it, under the relative paths its config names.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nextword import cli
from nextword.config import ADDED_FIELDS, load_saved_run
from nextword.model import GPT

SAVED = Path(__file__).parent / "data" / "saved_run_2026_12_07"


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A copy of the saved run, its relative paths resolved from the copy."""
    copy = tmp_path / "saved"
    shutil.copytree(SAVED, copy)
    monkeypatch.chdir(copy)
    return copy


def test_a_config_without_the_newer_fields_reads_as_the_network_it_trained(saved):
    raw = (saved / "run" / "config.toml").read_text()
    cfg = load_saved_run(saved / "run" / "config.toml")
    for section, key in ADDED_FIELDS:
        assert f"\n{key} =" not in raw  # the run predates the field...
        assert getattr(getattr(cfg, section), key) == ADDED_FIELDS[section, key]  # ...so it reads as off
    weights = load_file(saved / "run" / "checkpoints" / "step_0000004" / "model.safetensors")
    model = GPT(cfg.model)
    model.load_state_dict(weights)  # strict: the same tensors, no new part missing or left over
    assert set(model.state_dict()) == set(weights)


def test_the_saved_run_samples_evaluates_exports_and_resumes(saved, capsys):
    run = saved / "run"
    assert cli.main(["sample", str(run), "--prompt", "The", "--max-tokens", "4", "--seed", "1"]) == 0
    assert cli.main(["eval", str(run), "--batches", "2", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(scores["loss"]) and scores["loss"] < math.log(300)  # it learned something
    assert cli.main(["export", str(run), "--hf", str(saved / "hf")]) == 0
    assert json.loads((saved / "hf" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert cli.main(["train", "--run-dir", str(run), "--train.steps", "8", "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" and r["step"] == 8 for r in records)  # it went on from step 4
    assert torch.isfinite(torch.tensor([r["loss"] for r in records if r["kind"] == "train"])).all()
