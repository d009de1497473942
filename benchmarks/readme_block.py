"""Replaces a generated block between `<!-- name -->` and `<!-- /name -->` markers in README.md or benchmarks/README.md.

Each block lives in one of the two files. Blocks write links relative to the repository root
(`benchmarks/results/x.png`); in benchmarks/README.md they are rewritten relative to that file (`results/x.png`).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS_README = ROOT / "benchmarks" / "README.md"


def update_readme_block(name: str, block: str, readme: Path | None = None) -> bool:
    """Writes `block` between the markers of `name` in `readme`, or in whichever of README.md and benchmarks/README.md
    holds them; returns False (and writes nothing) if they are missing."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    for path in [readme] if readme is not None else [README, BENCHMARKS_README]:
        text = path.read_text() if path.is_file() else ""
        if start in text and end in text:
            break
    else:
        print(f"no <!-- {name} --> block in README.md or benchmarks/README.md: add its markers to publish the table there",
              file=sys.stderr)
        return False
    if path.resolve().parent == BENCHMARKS_README.parent:
        block = block.replace("](benchmarks/results/", "](results/")
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1])
    return True
