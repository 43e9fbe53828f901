import os
import subprocess
import sys

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

