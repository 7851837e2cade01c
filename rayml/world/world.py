"""Read a built world back: features, events and the ground-truth relevance of any (user, item)."""

from __future__ import annotations

import datetime as dt
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rayml.world.config import WorldConfig
from rayml.world.truth import WorldParams, sigmoid


class WorldNotFoundError(FileNotFoundError):
    """The directory holds no complete world (``world.json`` is written last)."""


class World:
    """A synthetic world on disk. Cheap to open; tables are read on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "world.json"
        if not meta_file.is_file():
            raise WorldNotFoundError(f"{self.path}: no world here (missing world.json); build one with `rayml world build`")
        try:
            self.meta = json.loads(meta_file.read_text())
            self.config = WorldConfig.model_validate(self.meta["config"])
        except (ValueError, KeyError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
            raise WorldNotFoundError(f"{meta_file}: unreadable world metadata ({type(exc).__name__}); rebuild it") from None
        self.params = WorldParams(self.config)

    @property
    def n_users(self) -> int:
        return self.config.n_users

    @property
    def n_items(self) -> int:
        return self.config.n_items

    @property
    def end_date(self) -> dt.date:
        return self.config.start_date + dt.timedelta(days=self.config.days)

    def user_snapshots(self) -> list[dt.date]:
        """Validity start of each user-feature snapshot, oldest first."""
        return sorted(dt.date.fromisoformat(p.name.split("=", 1)[1]) for p in (self.path / "users").glob("valid_from=*"))

    def user_snapshot_dir(self, as_of: dt.date | None = None) -> Path:
        """Directory of the latest snapshot valid before ``as_of`` (default: end of the log)."""
        as_of = as_of or self.end_date
        valid = [d for d in self.user_snapshots() if d < as_of]
        if not valid:
            raise ValueError(f"{self.path}: no user snapshot valid before {as_of}")
        return self.path / "users" / f"valid_from={valid[-1].isoformat()}"

    def user_features_table(self, as_of: dt.date | None = None) -> pa.Table:
        """One feature row per user as of ``as_of`` (default: end of the log), sorted by user_id."""
        table = pq.read_table(self.user_snapshot_dir(as_of))
        return table.take(pc.sort_indices(table, [("user_id", "ascending")]))

    def item_features_table(self) -> pa.Table:
        """Item features sorted by item_id."""
        return pq.read_table(self.path / "items.parquet")

    @property
    def has_events(self) -> bool:
        return bool(self.meta.get("events", True)) and (self.path / "events").is_dir()

    def events_dataset(self) -> ds.Dataset:
        """Impression log, hive-partitioned by ``date``."""
        if not self.has_events:
            raise WorldNotFoundError(f"{self.path}: this world was built without events (--no-events)")
        return ds.dataset(self.path / "events", format="parquet", partitioning="hive")

    @cached_property
    def _item_truth(self) -> tuple[np.ndarray, np.ndarray]:
        table = pq.read_table(self.path / "truth" / "items.parquet")
        vecs = table["vec"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        return vecs, table["bias"].to_numpy()

    @cached_property
    def _user_truth(self) -> tuple[np.ndarray, np.ndarray]:
        table = pq.read_table(self.path / "truth" / "users")
        table = table.take(pc.sort_indices(table, [("user_id", "ascending")]))
        tastes = table["taste"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        return tastes, table["bias"].to_numpy()

    def model_score(self, user_ids: np.ndarray, item_ids: np.ndarray, t_days: np.ndarray) -> np.ndarray:
        """Click probability a model fitted on the features before any drift gives aligned (user, item, time)
        rows: it follows covariate drift (the features carry it) and misses concept, intercept and seasonal
        changes. The monitoring benchmarks serve it as the "production model". [n]."""
        tastes, user_bias = self._user_truth
        vecs, item_bias = self._item_truth
        user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
        logit = self.params.model_logit(tastes[user_ids], user_bias[user_ids], vecs[item_ids], item_bias[item_ids],
                                        np.asarray(t_days, dtype=np.float64))
        return sigmoid(logit)

    def relevance(self, user_ids: np.ndarray, item_ids: np.ndarray, t_days: float | None = None) -> np.ndarray:
        """True click probability of every (user, item) pair at time ``t_days``. [n_users, n_items].

        ``t_days`` defaults to the end of the log, so drift that has happened is included.
        Label shift is the exception: it thins the logged impressions by class and leaves this
        propensity alone, so after ``drift.label_shift.start_day`` it is the score a model fitted
        before the shift would give (the posterior of the log is ``a·p / (a·p + b·(1 − p))``).
        """
        t = float(self.config.days if t_days is None else t_days)
        tastes, user_bias = self._user_truth
        vecs, item_bias = self._item_truth
        user_ids = np.asarray(user_ids)
        item_ids = np.asarray(item_ids)
        times = np.full(len(user_ids), t)
        eff = self.params.effective_tastes(tastes[user_ids], times)  # [u, d]
        logit = self.config.click.taste_scale * (eff @ vecs[item_ids].T)  # [u, i]
        logit += self.params.time_logit(times)[:, None] + user_bias[user_ids, None] + item_bias[None, item_ids]
        return sigmoid(logit)
