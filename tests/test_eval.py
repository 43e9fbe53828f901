import pytest
import torch

from nextword import cli


@pytest.mark.parametrize("device", ["foo", "mps", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_eval_refuses_a_device_this_machine_lacks_in_one_line(tmp_path, capsys, device):
    assert cli.main(["eval", str(tmp_path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device = {device!r}" in err and len(err.strip().splitlines()) == 1
