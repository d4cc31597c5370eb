"""The progress bar long work shows on a terminal (and nowhere else)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, enabled: bool, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr, drawn only when ``enabled`` and stderr is a terminal; it clears
    itself when done (``leave=False``), so logs and piped output stay clean."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        disable=not enabled or not sys.stderr.isatty(),
        leave=False,
        file=sys.stderr,
    )
