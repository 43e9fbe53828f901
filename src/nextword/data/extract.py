"""HTML → main text: the page's content without menus, footers, cookie banners and scripts.

Two extractors, chosen by name:
- "resiliparse": fast (C++), its main-content heuristics; the default.
- "trafilatura": slower, the extractor FineWeb used (Penedo et al. 2024), with FineWeb's settings and its text as
  FineWeb had it.
"""

from __future__ import annotations

from nextword.errors import ConfigError

EXTRACTORS = ("resiliparse", "trafilatura")


def extract_text(html: str, extractor: str = "resiliparse") -> str:
    """The main text of one HTML page, paragraphs on their own lines; "" when the page has none."""
    if extractor == "resiliparse":
        return _resiliparse(html)
    if extractor == "trafilatura":
        return _trafilatura(html)
    raise ConfigError(f"clean.extractor: unknown extractor {extractor!r}; use one of {', '.join(EXTRACTORS)}")


def _resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    text = extract_plain_text(HTMLTree.parse(html), main_content=True, preserve_formatting=True,
                              list_bullets=True, alt_texts=False, comments=False)
    return _tidy(text)


def _trafilatura(html: str) -> str:
    import trafilatura

    # FineWeb's settings (datatrove's Trafilatura extractor): precision over recall, no comments, dedup of
    # repeated segments within the page. Its text is kept as it is, indentation of code included, so the rules
    # see what FineWeb's saw.
    return trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True) or ""


def _tidy(text: str) -> str:
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
