import os
import subprocess
import sys
import tomllib

import pytest

from nextword import cli
from nextword.cli import options


def test_overview_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([name, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nextword {name}") and len(out) > 200


def test_an_unknown_command_is_one_line(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_overrides_reach_the_config():
    import argparse

    parser = argparse.ArgumentParser()
    options.add_config_arguments(parser)
    args = parser.parse_args(["--preset", "tiny"])
    args.overrides = {"train.lr": "3e-4", "model.n_layers": "3", "data.sources": "a,b"}
    cfg = options.config_from_args(args)
    assert cfg.train.lr == 3e-4 and cfg.model.n_layers == 3 and cfg.model.d_model == 64
    assert cfg.data.sources == ["a", "b"]


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_while_waiting_unless_the_user_chose(preset, expected):
    # A fresh interpreter: the setting only works if it is made before torch loads OpenMP.
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    probe = "import os, sys, nextword.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [expected, "False"]


# One field of each kind in [clean], which both `nextword train` and `nextword data clean` take as --clean.FIELD.
SPELLINGS = [
    ("exact_dedup", "off", False), ("exact_dedup", "ON", True), ("exact_dedup", "yes", True),
    ("exact_dedup", "0", False), ("exact_dedup", "False", False),
    ("min_words", "30", 30), ("min_words", "1e2", 100), ("min_words", "2048.0", 2048),
    ("min_language_score", "0.5", 0.5), ("min_language_score", "1", 1.0),
    ("languages", "fr", ["fr"]), ("languages", "en,de", ["en", "de"]), ("languages", "en, de", ["en", "de"]),
    ("languages", "en , de,", ["en", "de"]),
    ("top_ngram_max_char_ratios", "0.2, 0.18,0.16", [0.2, 0.18, 0.16]),
]
MISSPELLINGS = [("exact_dedup", "maybe"), ("min_words", "2.5"), ("min_words", "many"),
                ("min_language_score", "high"), ("top_ngram_max_char_ratios", "0.2, x, 0.16")]


def train_config(tmp_path, option: str, text: str, capsys) -> tuple[int, dict, str]:
    code = cli.main(["train", "--run-dir", str(tmp_path / "run"), "--dump-config", option, text])
    captured = capsys.readouterr()
    return code, (tomllib.loads(captured.out) if code == 0 else {}), captured.err


@pytest.mark.parametrize("field, text, meaning", SPELLINGS)
def test_train_and_data_clean_read_a_setting_the_same_way(tmp_path, capsys, field, text, meaning):
    from nextword.cli.data import run_config

    code, dumped, _ = train_config(tmp_path, f"--clean.{field}", text, capsys)
    assert code == 0 and dumped["clean"][field] == meaning
    assert getattr(run_config({f"clean.{field}": text}).clean, field) == meaning


@pytest.mark.parametrize("field, text", MISSPELLINGS)
def test_train_and_data_clean_refuse_a_misspelling_with_the_same_line(tmp_path, capsys, field, text):
    code, _, train_err = train_config(tmp_path, f"--clean.{field}", text, capsys)
    assert code == 2
    assert cli.main(["data", "clean", "--out", str(tmp_path / "clean"), f"--clean.{field}", text]) == 2
    clean_err = capsys.readouterr().err
    assert train_err.count("\n") == clean_err.count("\n") == 1
    assert train_err.removeprefix("nextword train: ") == clean_err.removeprefix("nextword data: ")
    assert train_err.startswith(f"nextword train: --clean.{field}: ")


def command_parser(name):
    import argparse
    import importlib

    parser = argparse.ArgumentParser(prog=f"nextword {name}")
    importlib.import_module(cli.COMMANDS[name][0]).configure(parser)
    return parser


def option_helps(parser, names):
    return {action.option_strings[0]: (action.help, action.choices, action.default) for action in parser._actions
            if action.option_strings and action.option_strings[0] in names}


def test_prepare_and_data_clean_take_the_executor_options_as_one_definition():
    engine = ("--executor", "--tasks", "--workers")
    clean = command_parser("data")._subparsers._group_actions[0].choices["clean"]
    assert option_helps(command_parser("prepare"), engine) == option_helps(clean, engine)
    assert len(option_helps(clean, engine)) == 3


def test_every_command_that_runs_a_trained_model_picks_its_device_as_train_does():
    from nextword.config import TrainConfig

    for name in ("eval", "sample"):
        assert command_parser(name).parse_args(["run"]).device == TrainConfig().device == "auto"


def test_eval_help_says_a_task_file_is_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "!function" in capsys.readouterr().out.replace("\n", " ")
