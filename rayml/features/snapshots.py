"""Locating feature snapshots on disk."""

from __future__ import annotations

from pathlib import Path


def resolve_snapshot(path: str | Path) -> Path:
    """A Parquet file or directory, or the latest ``valid_from=YYYY-MM-DD`` snapshot under it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature path {path} does not exist")
    snapshots = sorted(path.glob("valid_from=*")) if path.is_dir() else []
    return snapshots[-1] if snapshots else path
