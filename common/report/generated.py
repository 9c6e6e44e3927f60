"""Files the study generates from its records and keeps committed (README's
Findings block, results/INDEX.md): write them, or check that the committed
copy is what the generator gives now, so a test or CI can catch a stale one.
"""
from __future__ import annotations

from pathlib import Path


def write_or_check(path: Path, text: str, check: bool, what: str, command: str) -> int:
    """Write ``text`` to ``path`` (0), or with ``check`` compare without writing:
    0 when the file already holds ``text``, 1 when it is stale."""
    if check:
        same = path.exists() and path.read_text() == text
        print(f"{what} is " + ("up to date" if same else f"stale: run {command}"))
        return 0 if same else 1
    path.write_text(text)
    print(f"wrote {what}")
    return 0
