"""git, asked about this checkout: what the benchmark harness records (the measuring commit) and what ``make bench``
compares (the library code between two recorded commits) go through one runner."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str | None:
    """``git args`` in this checkout: its stdout, or ``None`` where there is no git, no checkout, or git fails
    (an unknown commit, say)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None
