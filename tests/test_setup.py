"""setup.sh's choice of PyTorch build: the CUDA one only where an NVIDIA GPU can use it."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "install_torch.py"
spec = importlib.util.spec_from_file_location("install_torch", SCRIPT)
install_torch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_torch)


def test_linux_without_a_gpu_takes_the_cpu_index():
    assert install_torch.download_arguments(has_nvidia_gpu=False, system="Linux") == [
        "torch", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert install_torch.download_arguments(has_nvidia_gpu=False, system="Windows")[1:] == [
        "--index-url", install_torch.CPU_INDEX]


def test_a_gpu_takes_pypis_cuda_build_and_macos_its_only_build():
    assert install_torch.download_arguments(has_nvidia_gpu=True, system="Linux") == ["torch"]
    assert install_torch.download_arguments(has_nvidia_gpu=False, system="Darwin") == ["torch"]


def test_a_wheel_on_the_machine_is_installed_without_downloading(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(install_torch.subprocess, "run", fake_run)
    monkeypatch.setattr(install_torch, "has_nvidia_gpu", lambda: True)
    assert install_torch.main("py") == 0
    assert calls[0][-3:] == ["--no-deps", "--no-index", "torch"]
    assert all(install_torch.CPU_INDEX not in command for command in calls)
    assert calls[1][-1] == "torch"  # then its dependencies, from the indexes


def test_no_wheel_on_the_machine_and_no_gpu_downloads_the_cpu_build(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        local_only = "--no-index" in command
        return type("Done", (), {"returncode": 1 if local_only else 0, "stderr": ""})()

    monkeypatch.setattr(install_torch.subprocess, "run", fake_run)
    monkeypatch.setattr(install_torch, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(install_torch.platform, "system", lambda: "Linux")
    assert install_torch.main("py") == 0
    assert calls[-1][-3:] == ["torch", "--index-url", install_torch.CPU_INDEX]
