"""The headless browser that tests draw a page with, under whichever name the system installed it."""

from __future__ import annotations

import shutil

import pytest

# Debian and Arch install "chromium", Ubuntu and Fedora "chromium-browser"; Google's builds are "google-chrome".
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The first of BROWSER_NAMES on PATH, as a path; None when none is."""
    return next((path for path in map(shutil.which, BROWSER_NAMES) if path), None)


needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason=f"no headless browser on PATH (looked for {', '.join(BROWSER_NAMES)})")
