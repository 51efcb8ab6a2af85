"""Where the real datasets live: `SEQMODELS_DATA`, else `../shared/data` beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """The folder of the shared public datasets, or None when this machine has none."""
    env = os.environ.get("SEQMODELS_DATA")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    return None


def data_path(*parts: str) -> Path | None:
    """A file or folder under the data root, or None when it is absent."""
    root = data_root()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None
