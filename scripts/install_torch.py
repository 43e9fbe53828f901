"""Install the PyTorch build that fits this machine: `python3 scripts/install_torch.py [PYTHON]`.

setup.sh runs it when PYTHON (the virtual environment's interpreter) has no torch. A plain `pip install torch` on
Linux fetches the CUDA build from PyPI, several GB of NVIDIA libraries that a machine without an NVIDIA GPU
cannot use. So, in this order:

1. a torch wheel already on this machine (pip's find-links or a local index): install it, nothing downloaded;
2. an NVIDIA GPU (its driver is loaded): PyPI's default build, which is the CUDA one;
3. Linux or Windows without one: PyTorch's CPU-only index (a few hundred MB instead of several GB);
4. macOS: PyPI's build, which there is the CPU and Metal one (PyTorch publishes no other).

It runs before anything is installed, so it uses the standard library alone.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def download_arguments(has_nvidia_gpu: bool, system: str) -> list[str]:
    """`pip install` arguments for torch when no wheel is on this machine: the CUDA build only for a GPU."""
    if has_nvidia_gpu or system == "Darwin":
        return ["torch"]
    return ["torch", "--index-url", CPU_INDEX]


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver is loaded, so that the CUDA build could use a GPU."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def pip(python: str, *arguments: str) -> bool:
    """`pip install` quietly: its warnings are shown only when it fails."""
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", *arguments], stderr=subprocess.PIPE, text=True,
                          check=False)
    if done.returncode:
        print(done.stderr, file=sys.stderr, end="")
    return done.returncode == 0


def main(python: str) -> int:
    # A wheel on this machine: torch alone without the network, then its own dependencies from the indexes.
    found_locally = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "torch"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if found_locally.returncode == 0:
        print("setup: installing PyTorch from a wheel on this machine")
        return 0 if pip(python, "torch") else 1
    gpu, system = has_nvidia_gpu(), platform.system()
    arguments = download_arguments(gpu, system)
    build = "the CUDA build, for the NVIDIA GPU" if gpu else "the CPU build" if CPU_INDEX in arguments else system
    print(f"setup: downloading PyTorch ({build})")
    return 0 if pip(python, *arguments) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.executable))
