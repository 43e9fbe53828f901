import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nextword import cli
from nextword.config import ADDED_FIELDS
from nextword.errors import ConfigError
from nextword.tools.compare import (SCORES_FILE, Budget, load_spec, progress_line, run_key, seconds_left)

# A language a tiny model learns in a few dozen steps: 32 four-letter words, each followed by one of four others.
_rng = random.Random(0)
WORDS = ["".join(_rng.choice(letters) for letters in ("bcdfghjklmnpqrstvwz", "aeiou") * 2) for _ in range(32)]
NEXT = {word: _rng.sample(WORDS, 4) for word in WORDS}


def chain(rng, count):
    word, words = rng.choice(WORDS), []
    for _ in range(count):
        words.append(word)
        word = rng.choice(NEXT[word])
    return words


def half_random(words, rng):
    """Every other word replaced by four random letters: half the text is noise."""
    return [w if i % 2 == 0 else "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))
            for i, w in enumerate(words)]


def make_data(root):
    """A clean corpus, the same text half random, and held-out text: a file, and a folder one of whose files
    quotes a clean training document (which decontamination must drop)."""
    rng = random.Random(1)
    clean, noisy = root / "clean", root / "noisy"
    clean.mkdir()
    noisy.mkdir()
    for i in range(30):
        words = chain(rng, 200)
        (clean / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n")
        (noisy / f"doc{i:02d}.txt").write_text(" ".join(half_random(words, rng)) + "\n")
    held_out = root / "held_out"
    (held_out / "docs").mkdir(parents=True)
    (held_out / "chain.txt").write_text(" ".join(chain(random.Random(2), 400)) + "\n")
    quoted = (clean / "doc07.txt").read_text().split()[50:70]
    (held_out / "docs" / "a.txt").write_text(" ".join(chain(random.Random(3), 100) + quoted) + "\n")
    (held_out / "docs" / "b.txt").write_text(" ".join(chain(random.Random(4), 100)) + "\n")
    return root


def write_spec(root, noisy_extra="", budget="tokens:5120", seeds=3, shared=""):
    spec = root / "spec.toml"
    spec.write_text(f"""
[compare]
baseline = "clean"
budget = "{budget}"
seeds = {seeds}
eval = ["{root / 'held_out' / 'chain.txt'}", "{root / 'held_out' / 'docs'}/"]

[model]
n_layers = 1
d_model = 32
n_heads = 2
context = 32

[data]
vocab_size = 300
val_fraction = 0.1
workers = 1

[train]
micro_batch = 4
compile = "off"
warmup_steps = 5
log_every = 5

[eval]
every = 20
batches = 2
sample_tokens = 4
prompts = ["a"]
{shared}
[variant.clean]
data.sources = ["{root / 'clean'}"]

[variant.noisy]
data.sources = ["{root / 'noisy'}"]
{noisy_extra}
""")
    return spec


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    return make_data(tmp_path)


def test_a_spec_resolves_each_variant_from_the_shared_sections_and_its_own_overrides(data):
    spec = load_spec(write_spec(data, noisy_extra="train.lr = \"1e-3\"\nmodel.context = 16"))
    clean, noisy = spec.variants["clean"], spec.variants["noisy"]
    assert spec.baseline == "clean" and spec.seeds == 3 and spec.budget == Budget("tokens", "5120")
    assert list(spec.evals) == ["bpb:chain.txt", "bpb:docs"]
    assert (clean.model.n_layers, clean.model.context, noisy.model.context) == (1, 32, 16)
    assert noisy.train.lr == 1e-3 and clean.train.lr != 1e-3  # "1e-3" coerced as any override is
    for cfg in (clean, noisy):
        assert cfg.model.size == "fixed" and cfg.train.tokens == "5120" and cfg.train.precision == "fp32"
        assert cfg.data.decontaminate == list(spec.evals.values())


@pytest.mark.parametrize(("budget", "field", "at_once"), [("flops:1e12", "flops", 2), ("time:2m", "budget", 1)])
def test_a_flops_budget_trains_runs_side_by_side_and_a_time_budget_one_at_a_time(data, monkeypatch, budget, field,
                                                                                  at_once):
    import nextword.tools.compare as compare

    monkeypatch.setattr(compare, "usable_cores", lambda: 2)
    spec = load_spec(write_spec(data, budget=budget))
    assert all(getattr(cfg.train, field) == budget.split(":")[1] for cfg in spec.variants.values())
    assert compare.parallel_runs(spec, 6) == (at_once, 1 if at_once > 1 else 0)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.replace('baseline = "clean"', 'baseline = "cleaned"'), "must name a variant: clean, noisy"),
    (lambda s: s.replace("seeds = 3", "seeds = 1"), "seeds = 1 must be a whole number of 2 or more"),
    (lambda s: s.replace('budget = "tokens:5120"', 'budget = "5120"'), "write tokens:2M, flops:1e14 or time:120s"),
    (lambda s: s.replace("seeds = 3", "seeds = 3\nrepeats = 2"), "unknown \\[compare\\] key\\(s\\) repeats"),
    (lambda s: s + "train.steps = 10\n", "\\[variant.noisy\\] sets train.steps, which the budget sets"),
    (lambda s: s + "train.seed = 7\n", "seeds pair the variants"),
    (lambda s: s + "data.cleaned = true\n", "unknown field data.cleaned"),
    (lambda s: s + "train.lr = \"fast\"\n", "train.lr = 'fast' is not a valid float"),
    (lambda s: s.replace("chain.txt", "missing.txt"), "missing.txt: no such evaluation file or folder"),
])
def test_a_spec_that_cannot_work_is_one_line_naming_the_fix(data, edit, message):
    spec = write_spec(data)
    spec.write_text(edit(spec.read_text()))
    with pytest.raises(Exception, match=message) as error:
        load_spec(spec)
    assert "\n" not in str(error.value)


def test_variants_with_the_same_data_share_one_prepared_data_dir(data, capsys):
    from nextword.tools.compare import plan_runs, prepare_once

    spec_file = write_spec(data, noisy_extra="train.lr = 1e-3")
    spec_file.write_text(spec_file.read_text().replace(str(data / "noisy"), str(data / "clean")))
    spec = load_spec(spec_file)
    prepared = prepare_once(spec, progress=False)
    assert prepared["clean"] is prepared["noisy"]
    assert capsys.readouterr().err.count("prepared ") == 1
    runs = plan_runs(spec, prepared, data / "out")
    assert len({run.key for run in runs}) == 6 and {run.config.train.seed for run in runs} == {1337, 1338, 1339}
    assert len({run.config.data.data_dir for run in runs}) == 1


def test_a_task_that_cannot_run_is_refused_before_anything_trains(data):
    pytest.importorskip("lm_eval")
    from nextword.errors import DataError
    from nextword.tools.compare import compare

    spec = write_spec(data)
    spec.write_text(spec.read_text().replace("seeds = 3", f'seeds = 3\ntasks = ["{data / "missing.yaml"}"]'))
    with pytest.raises(DataError, match="missing.yaml: no such task file"):
        compare(spec, data / "out")
    assert not (data / "out").exists()


def test_a_runs_key_follows_what_decides_its_result_and_not_where_it_runs(data):
    cfg = load_spec(write_spec(data)).variants["clean"]
    key = run_key(cfg, "data1")
    cfg.train.threads, cfg.data.workers, cfg.engine.workers = 3, 2, 5
    assert run_key(cfg, "data1") == key
    assert run_key(cfg, "data2") != key
    cfg.train.seed += 1
    assert run_key(cfg, "data1") != key


def test_a_field_added_later_keeps_the_keys_of_runs_made_before_it_while_it_is_off(data):
    cfg = load_spec(write_spec(data)).variants["clean"]
    for (section, key), earlier in ADDED_FIELDS.items():
        setattr(getattr(cfg, section), key, earlier)  # a run as runs were before these fields existed
    settings = cfg.to_dict()
    for section, key in ADDED_FIELDS:
        del settings[section][key]  # its config as it was written then
    settings.pop("engine")
    for section, key in (("train", "run_dir"), ("train", "threads"), ("data", "workers"), ("data", "data_dir")):
        settings[section].pop(key)
    assert run_key(cfg, "data1") == hashlib.sha256(json.dumps({"config": settings, "data": "data1"},
                                                              sort_keys=True).encode()).hexdigest()[:16]
    before = run_key(cfg, "data1")
    cfg.model.value_embeddings = True  # on, it is part of the key
    assert run_key(cfg, "data1") != before


def test_the_progress_line_counts_runs_and_estimates_the_time_left():
    assert progress_line(2, 2, 4, None) == "compare: 2 done, 2 running, 4 left; estimating the time left"
    assert progress_line(8, 0, 0, 0.0) == "compare: 8 done, 0 running, 0 left"
    # Finished runs took 10 s each; 4 left and two half done, 2 at a time: (4 + 1) x 10 / 2 = 25 s.
    assert seconds_left([10.0, 10.0], [(5.0, 0.5), (5.0, 0.5)], 4, 2) == 25.0
    assert "about 25 s left" in progress_line(2, 2, 4, 25.0)
    # Before any has finished, the running ones promise: 6 s for a quarter, so 24 s a run.
    assert seconds_left([], [(6.0, 0.25)], 1, 1) == pytest.approx(24 * 1.75)
    assert seconds_left([], [(1.0, 0.0)], 3, 1) is None
    assert "about 2 min 05 s left" in progress_line(0, 1, 3, 125)


@pytest.mark.slow
def test_half_random_training_text_loses_to_the_clean_baseline_and_a_second_compare_trains_nothing(data, capsys):
    spec, out = write_spec(data), data / "out"
    assert cli.main(["compare", str(spec), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "0 run(s) already done, 6 to train and score" in printed
    assert "compare: 0 done, 0 running, 6 left; estimating the time left" in printed
    assert "compare: 6 done, 0 running, 0 left" in printed

    result = json.loads((out / "compare.json").read_text())
    assert result["baseline"] == "clean" and result["seeds"] == 3
    clean, noisy = result["variants"]["clean"], result["variants"]["noisy"]
    for metric in ("bpb:chain.txt", "bpb:docs"):
        for variant in (clean, noisy):
            figures = variant["metrics"][metric]
            assert len(figures["values"]) == 3 and figures["ci95"][0] <= figures["mean"] <= figures["ci95"][1]
        assert "p_vs_baseline" not in clean["metrics"][metric]
        assert noisy["metrics"][metric]["mean"] > clean["metrics"][metric]["mean"]  # worse
        assert noisy["metrics"][metric]["difference"]["mean"] > 0
        assert noisy["metrics"][metric]["p_vs_baseline"] < 0.01
    assert clean["tokens"] == noisy["tokens"] == 5120  # 40 steps of 4 x 32
    # The clean document quoted in held_out/docs is dropped from the clean variant's training data only.
    assert clean["contamination"]["documents_dropped"] == 1 and noisy["contamination"]["documents_dropped"] == 0
    assert "bpb:docs" in printed and "1 of 30 docs" in printed and "(p " in printed
    page = (out / "index.html").read_text()
    assert "<td class=\"num\">noisy</td>" in page and "(p 0.0" in page and "[variant.noisy]" in page
    assert (out / "curves.png").is_file() and (out / "scores.png").is_file()

    scored = {path: path.stat().st_mtime_ns for path in out.glob(f"runs/*/{SCORES_FILE}")}
    assert len(scored) == 6
    assert cli.main(["compare", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "6 run(s) already done, 0 to train and score" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in out.glob(f"runs/*/{SCORES_FILE}")} == scored


@pytest.mark.slow
def test_after_a_variant_changes_only_its_runs_train_again_and_new_tasks_score_the_trained_models(data, capsys):
    pytest.importorskip("lm_eval")
    from test_downstream import MULTIPLE_CHOICE_YAML, QUESTIONS

    one_at_a_time = "[engine]\nworkers = 1\n"  # in this process: no worker processes to start
    spec, out = write_spec(data, budget="tokens:1280", seeds=2, shared=one_at_a_time), data / "out"
    assert cli.main(["compare", str(spec), "--out", str(out), "--quiet"]) == 0
    before = {p.parent.name for p in out.glob(f"runs/*/{SCORES_FILE}")}
    write_spec(data, noisy_extra="train.lr = 1e-3", budget="tokens:1280", seeds=2, shared=one_at_a_time)
    assert cli.main(["compare", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "2 run(s) already done, 2 to train and score" in capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    assert {run.rsplit("/", 1)[1] for run in result["variants"]["clean"]["runs"]} <= before
    assert not {run.rsplit("/", 1)[1] for run in result["variants"]["noisy"]["runs"]} & before

    # An lm-eval task added to the spec scores the models already trained, without training them again.
    questions = data / "choice.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS))
    (data / "choice.yaml").write_text(MULTIPLE_CHOICE_YAML.format(data=questions, cache=data / "datasets-cache"))
    spec.write_text(spec.read_text().replace("seeds = 2", f'seeds = 2\ntasks = ["{data / "choice.yaml"}"]\n'
                                                          "task_limit = 2"))
    assert cli.main(["compare", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "0 run(s) already done, 4 to train and score" in capsys.readouterr().out
    result = json.loads((out / "compare.json").read_text())
    figures = result["variants"]["noisy"]["metrics"]["acc:tiny_choice"]
    assert len(figures["values"]) == 2 and 0 <= figures["p_vs_baseline"] <= 1
    for run in result["variants"]["clean"]["runs"] + result["variants"]["noisy"]["runs"]:
        log = (Path(run) / "log.jsonl").read_text().splitlines()
        assert sum(json.loads(line)["kind"] == "run" for line in log) == 1  # trained once


@pytest.mark.slow
def test_on_slurm_each_run_is_a_task_of_one_array_job(data, tmp_path, monkeypatch, capsys):
    """No cluster here: a stand-in sbatch records the submission, then one array task runs as Slurm would run it."""
    from test_engine import FAKE_SBATCH

    from nextword.tools.compare import compare

    bin_dir, submitted = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    submitted.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITTED", str(submitted))
    slurm = '[engine]\nexecutor = "slurm"\nslurm_partition = "cpu"\n'
    spec, out = write_spec(data, budget="tokens:640", seeds=2, shared=slurm), data / "out"
    assert compare(spec, out) is None  # queued, not run
    assert "submitted to Slurm" in capsys.readouterr().out
    script = (submitted / "0.sh").read_text()
    assert "--job-name=nextword-compare" in script and "--array=0-3" in script
    pickled = re.search(r"launch_pickled_pipeline (\S+)", script).group(1)
    subprocess.run(["launch_pickled_pipeline", pickled], check=True, capture_output=True, cwd=tmp_path,
                   env={**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_NODELIST": "localhost"})
    scored = [json.loads(p.read_text()) for p in out.glob(f"runs/*/{SCORES_FILE}")]
    assert [(s["variant"], s["seed"]) for s in scored] == [("noisy", 0)] and "bpb:docs" in scored[0]["metrics"]
