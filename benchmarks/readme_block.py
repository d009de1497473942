"""Replaces a generated block of README.md between `<!-- name -->` and `<!-- /name -->` markers."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme_block(name: str, block: str, readme: Path = README) -> bool:
    """Writes `block` between the markers of `name`; returns False (and writes nothing) if they are missing."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1])
    return True
