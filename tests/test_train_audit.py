"""What a demanding user runs into with `nextword train` and `nextword export`: bad input, resumes that change
what the run is, and folders that cannot be written. Each case ends in one line naming the file or field and
the fix, never a traceback and never a silently different run."""

import pytest
from test_train import tiny  # noqa: F401  (a fixture)

from nextword import cli
from nextword.errors import ConfigError
from nextword.train import train


@pytest.mark.parametrize("override, field", [
    (["--train.lr", "nan"], "train.lr"),
    (["--train.lr", "inf"], "train.lr"),
    (["--train.budget", "nan"], "train.budget"),
    (["--train.budget", "inf"], "train.budget"),
    (["--train.beta2", "2"], "train.beta2"),
    (["--train.eps", "-1"], "train.eps"),
    (["--train.weight_decay", "-0.1"], "train.weight_decay"),
    (["--model.norm_eps", "-1"], "model.norm_eps"),
    (["--model.init_std", "-1"], "model.init_std"),
    (["--eval.temperature", "-1"], "eval.temperature"),
    (["--eval.top_k", "-5"], "eval.top_k"),
])
def test_a_number_out_of_range_is_one_line_naming_the_field(override, field, capsys):
    assert cli.main(["train", "--preset", "tiny", "--dump-config", *override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"nextword train: {field} = ")


def test_fp16_on_a_cpu_is_one_line_instead_of_a_crash_in_the_first_step(tiny):
    tiny.train.steps, tiny.train.precision, tiny.train.device = 2, "fp16", "cpu"
    with pytest.raises(ConfigError, match="fp16 trains on a CUDA GPU only.*use auto, bf16 or fp32"):
        train(tiny, progress=False)
