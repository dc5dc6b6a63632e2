"""Where prefkit keeps what it computes once and reuses across runs: ``$PREFKIT_CACHE``, else
``~/.cache/prefkit`` (reference log-probs, the lab's base models, built C++ operators)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$PREFKIT_CACHE`` or ``~/.cache/prefkit`` (not created here)."""
    return Path(os.environ.get("PREFKIT_CACHE") or Path.home() / ".cache" / "prefkit")
