"""The docs name what is there: every module in the README's layout, every benchmark script RESULTS.md cites."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "nextword"


def readme_layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## How it is built", 1)[1].split("```")[1]


def test_the_readme_layout_names_every_module_of_training_data_and_model():
    layout = readme_layout()
    modules = [path for folder in ("training", "data", "model") for path in sorted((PACKAGE / folder).glob("*.py"))
               if path.name != "__init__.py"]
    modules += [path for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")]
    assert [path.relative_to(PACKAGE) for path in modules if path.name not in layout] == []


def test_every_benchmark_script_results_cites_exists_or_is_cited_at_a_commit():
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    missing = {name for name in re.findall(r"benchmarks/(\w+\.py)", results) if not (ROOT / "benchmarks" / name).is_file()}
    kept_in_history = set(re.findall(r"git show [0-9a-f]{7,40}:benchmarks/(\w+\.py)", results))
    assert missing - kept_in_history == set()
