"""servegym: Gymnasium environments over a numba simulator of LLM-inference clusters."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"


def _numba_cache_dir() -> None:
    """Key numba's on-disk cache by the simulator's source.

    numba invalidates a cached function only when its own file changes, not when a function it inlines or
    calls from another module does; a stale kernel would silently run old rules. A cache folder per source
    hash avoids that. An explicit NUMBA_CACHE_DIR is left alone.
    """
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for sub in ("sim", "perf"):
        for f in sorted((here / sub).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "servegym" / "numba"
    os.environ["NUMBA_CACHE_DIR"] = str(base / h.hexdigest()[:16])


_numba_cache_dir()
