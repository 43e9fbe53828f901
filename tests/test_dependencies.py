"""pyproject.toml's lower bounds leave out every release with a known hole that nextword could reach."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

requirements = pytest.importorskip("packaging.requirements")

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
# The last release before each fix (CVE ids in pyproject.toml's comments beside each bound).
LAST_WITH_A_HOLE = {
    "pyarrow": "14.0.0",  # CVE-2023-47248: a crafted Parquet file runs code
    "tqdm": "4.66.2",  # CVE-2024-34062
    "torch": "2.9.1",  # CVE-2025-3001
    "aiohttp": "3.14.3",  # PYSEC-2026-4369
    "transformers": "5.2.0",  # CVE-2026-4372
    "ray": "2.55.1",  # CVE-2026-57516
    "lxml_html_clean": "0.4.4",  # javascript: URLs in xlink:href
    "pytest": "9.0.2",  # CVE-2025-71176
    "setuptools": "78.1.0",  # CVE-2025-47273
}


def declared() -> dict[str, list]:
    """Every requirement pyproject.toml names, core, optional and build, by its normalised name."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    lines = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for extra in project["project"]["optional-dependencies"].values():
        lines.extend(extra)
    found: dict[str, list] = {}
    for line in lines:
        requirement = requirements.Requirement(line)
        found.setdefault(requirement.name.lower().replace("-", "_"), []).append(requirement)
    return found


def test_no_bound_admits_a_release_with_a_known_hole():
    named = declared()
    admitted = [f"{name} {version}" for name, version in LAST_WITH_A_HOLE.items()
                for requirement in named[name] if requirement.specifier.contains(version, prereleases=True)]
    assert not admitted, "bounds admit releases with known holes: " + ", ".join(admitted)


def test_hf_urls_have_their_package_in_the_remote_extra():
    """fsspec resolves hf:// to huggingface_hub.HfFileSystem; without it `pip install nextword[remote]` cannot read
    hf:// sources."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    remote = [requirements.Requirement(line).name for line in project["project"]["optional-dependencies"]["remote"]]
    assert "huggingface_hub" in remote
