"""Generate a synthetic world chunk by chunk and write it as Parquet with bounded memory.

Layout written under ``out``::

    world.json                          config and counts
    items.parquet                       item features (item_id, category, price, quality, g0..)
    users/valid_from=YYYY-MM-DD/part-00000.parquet   full user-feature snapshot valid from that date
    events/date=YYYY-MM-DD/part-00000.parquet   impressions (user_id, item_id, ts, clicked)
    truth/items.parquet                 item vectors and biases
    truth/users/part-00000.parquet      user tastes and biases
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayml.world.config import WorldConfig
from rayml.world.truth import SECONDS_PER_DAY, WorldParams, label_shift_keep_rates, sigmoid

DEVICES = np.array(["ios", "android", "web"])
EVENT_SLICE = 1_000_000  # events scored at once; bounds the [n, d] temporaries


@dataclass(frozen=True)
class BuildSummary:
    """What :func:`build_world` wrote."""

    path: Path
    n_users: int
    n_items: int
    n_events: int
    n_clicks: int

    @property
    def ctr(self) -> float:
        return self.n_clicks / max(self.n_events, 1)


def _with_missing(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Float copy of ``values`` with a ``rate`` share replaced by NaN."""
    out = values.astype(np.float32)
    out[rng.random(len(out)) < rate] = np.nan
    return out


def _labels(prefix: str, codes: np.ndarray, missing: np.ndarray) -> pa.Array:
    """Categorical codes as strings like ``c07``; masked rows become null."""
    width = 2
    text = np.char.add(prefix, np.char.zfill(codes.astype(str), width))
    return pa.array(text, mask=missing)


def _observed(rng, vecs, projection, noise, rate, prefix) -> dict[str, np.ndarray]:
    """Noisy projections of latent vectors, the features a model can actually see."""
    base = vecs @ projection + rng.normal(0, noise, (len(vecs), projection.shape[1]))
    return {f"{prefix}{j}": _with_missing(rng, base[:, j], rate) for j in range(base.shape[1])}


def make_items(config: WorldConfig, params: WorldParams) -> tuple[pa.Table, pa.Table]:
    """All items: (features, truth). Items are few enough to build in one go."""
    rng = np.random.default_rng([config.seed, 1])
    n, d = config.n_items, config.latent_dim
    category = rng.integers(0, config.n_categories, n)
    vecs = params.centroids[category] + rng.normal(0, 0.5 / np.sqrt(d), (n, d))
    bias = rng.normal(0, config.click.item_bias_std, n)
    ids = np.arange(n, dtype=np.int64)
    features = {
        "item_id": ids,
        "category": _labels("c", category, np.zeros(n, bool)),
        "price": _with_missing(rng, np.exp(rng.normal(3, 0.6, n)), config.missing_rate),
        "quality": _with_missing(rng, bias + rng.normal(0, 0.3, n), config.missing_rate),
        **_observed(rng, vecs, params.item_projection, config.feature_noise, config.missing_rate, "g"),
    }
    truth = {
        "item_id": ids,
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float32).ravel()), d),
        "bias": bias.astype(np.float32),
    }
    return pa.table(features), pa.table(truth)


@dataclass(frozen=True)
class UserChunk:
    """One chunk of users: feature snapshots (a new one when covariate drift starts) and truth."""

    snapshots: list[tuple[dt.date, pa.Table]]  # full feature table per validity start
    truth: pa.Table
    tastes: np.ndarray  # [n, d]
    bias: np.ndarray  # [n]


def make_users(config: WorldConfig, params: WorldParams, chunk: int) -> UserChunk:
    """Users ``[chunk * chunk_users, ...)``; deterministic given (seed, chunk_users, chunk)."""
    rng = np.random.default_rng([config.seed, 2, chunk])
    start = chunk * config.chunk_users
    n = min(config.chunk_users, config.n_users - start)
    d = config.latent_dim
    ids = np.arange(start, start + n, dtype=np.int64)
    pref = rng.integers(0, config.n_categories, n)
    tastes = params.centroids[pref] + rng.normal(0, 0.7 / np.sqrt(d), (n, d))
    bias = rng.normal(0, config.click.user_bias_std, n)
    observed_noise = rng.normal(0, config.feature_noise, (n, config.observed_dim))
    fav_known = rng.random(n) < 0.7
    fav = np.where(fav_known, pref, rng.integers(0, config.n_categories, n))
    static = {
        "age": _with_missing(rng, np.clip(rng.normal(40, 12, n), 18, 80).round(), config.missing_rate),
        "activity": _with_missing(rng, bias + rng.normal(0, 0.3, n), config.missing_rate),
        "region": _labels("r", rng.integers(0, config.n_regions, n), rng.random(n) < config.missing_rate),
        "device": pa.array(DEVICES[rng.integers(0, len(DEVICES), n)]),
        "fav_category": _labels("c", fav, rng.random(n) < 2 * config.missing_rate),
    }
    missing = rng.random((n, config.observed_dim)) < config.missing_rate

    def snapshot(valid_from: dt.date, vecs: np.ndarray) -> pa.Table:
        observed = (vecs @ params.user_projection + observed_noise).astype(np.float32)
        observed[missing] = np.nan
        cols = {"user_id": ids, **static}
        cols.update({f"f{j}": observed[:, j] for j in range(config.observed_dim)})
        return pa.table(cols)

    snapshots = [(config.start_date, snapshot(config.start_date, tastes))]
    cov = config.drift.covariate
    if cov.enabled:
        moved = params.shifted_tastes(tastes, np.ones(n, bool))
        drift_date = config.start_date + dt.timedelta(days=cov.start_day)
        snapshots.append((drift_date, snapshot(drift_date, moved)))
    truth = pa.table(
        {
            "user_id": ids,
            "taste": pa.FixedSizeListArray.from_arrays(pa.array(tastes.astype(np.float32).ravel()), d),
            "bias": bias.astype(np.float32),
        }
    )
    return UserChunk(snapshots=snapshots, truth=truth, tastes=tastes, bias=bias)


def make_events(
    config: WorldConfig, params: WorldParams, chunk: int, users: UserChunk, items: pa.Table
) -> pa.Table:
    """Impressions for one user chunk, sorted by time, with clicks drawn from the click model.

    Under ``drift.label_shift`` the impressions from ``start_day`` on are then thinned by class.
    """
    rng = np.random.default_rng([config.seed, 3, chunk])
    n_users = len(users.bias)
    counts = rng.poisson(config.impressions_per_user, n_users)
    local_user = np.repeat(np.arange(n_users), counts)
    n = len(local_user)
    item_bias = items.column("bias").to_numpy()
    item_vecs = items.column("vec").combine_chunks().flatten().to_numpy().reshape(len(item_bias), -1)
    weights = np.exp(config.popularity_exponent * (item_bias - item_bias.max()))
    item = rng.choice(len(item_bias), size=n, p=weights / weights.sum())
    seconds = rng.integers(0, config.days * SECONDS_PER_DAY, n)
    noise = rng.normal(0, config.click.noise_std, n)
    uniform = rng.random(n)
    clicked = np.empty(n, dtype=bool)
    shift = config.drift.label_shift
    prob = np.empty(n if shift.enabled else 0, dtype=np.float64)
    for lo in range(0, n, EVENT_SLICE):
        sl = slice(lo, lo + EVENT_SLICE)
        u = local_user[sl]
        logit = params.click_logit(
            users.tastes[u], users.bias[u], item_vecs[item[sl]], item_bias[item[sl]],
            seconds[sl] / SECONDS_PER_DAY,
        )
        p_click = sigmoid(logit + noise[sl])
        clicked[sl] = uniform[sl] < p_click
        if shift.enabled:
            prob[sl] = p_click
    if shift.enabled:
        keep = _label_shift_keep(config, chunk, seconds // SECONDS_PER_DAY, clicked, prob)
        local_user, item = local_user[keep], item[keep]
        seconds, clicked = seconds[keep], clicked[keep]
    order = np.argsort(seconds, kind="stable")
    start = np.datetime64(config.start_date, "s").astype("datetime64[us]")
    return pa.table(
        {
            "user_id": users.truth.column("user_id").to_numpy()[local_user[order]],
            "item_id": item[order].astype(np.int64),
            "ts": pa.array(start + seconds[order].astype("timedelta64[s]"), pa.timestamp("us")),
            "clicked": clicked[order],
        }
    )


def _label_shift_keep(
    config: WorldConfig, chunk: int, day: np.ndarray, clicked: np.ndarray, prob: np.ndarray
) -> np.ndarray:
    """Rows kept under label shift: from ``start_day`` thin each day by class to ``new_prior``.

    The prior of each (chunk, day) before thinning is the mean true click probability of its rows
    (a low-variance stand-in for the realised rate). Thinning depends on the class only, so
    p(x | y) is unchanged. Uses its own random stream, so other scenarios' draws do not move.
    """
    shift = config.drift.label_shift
    rng = np.random.default_rng([config.seed, 4, chunk])
    keep_prob = np.ones(len(day))
    for d in range(shift.start_day, config.days):
        rows = day == d
        if not rows.any():
            continue
        a, b = label_shift_keep_rates(float(prob[rows].mean()), shift.new_prior)
        keep_prob[rows] = np.where(clicked[rows], a, b)
    return rng.random(len(day)) < keep_prob


def _write_events_by_date(events: pa.Table, out: Path, config: WorldConfig, chunk: int) -> None:
    """Split a time-sorted event table into ``events/date=YYYY-MM-DD/part-CCCCC.parquet``."""
    day = (events.column("ts").to_numpy() - np.datetime64(config.start_date, "us")) // np.timedelta64(1, "D")
    bounds = np.searchsorted(day, np.arange(config.days + 1))
    for i in range(config.days):
        lo, hi = bounds[i], bounds[i + 1]
        if hi <= lo:
            continue
        date = config.start_date + dt.timedelta(days=i)
        part = out / "events" / f"date={date.isoformat()}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(events.slice(lo, hi - lo), part / f"part-{chunk:05d}.parquet")


def build_world(config: WorldConfig, out: str | Path, *, events: bool = True) -> BuildSummary:
    """Write the whole world under ``out`` (replacing a previous world there), one user chunk at a time.

    Peak memory is set by ``chunk_users × impressions_per_user``, not by ``n_users``.
    ``world.json`` is written last, so its presence marks a complete build.

    Raises:
        FileExistsError: ``out`` is a non-empty directory that does not hold a world.
    """
    out = Path(out)
    if out.exists():
        if any(out.iterdir()) and not (out / "world.json").is_file() and not (out / "users").is_dir():
            raise FileExistsError(f"{out} is not empty and holds no world; refusing to replace it")
        shutil.rmtree(out)
    (out / "users").mkdir(parents=True)
    (out / "truth" / "users").mkdir(parents=True)
    params = WorldParams(config)
    item_features, item_truth = make_items(config, params)
    pq.write_table(item_features, out / "items.parquet")
    pq.write_table(item_truth, out / "truth" / "items.parquet")
    n_events = n_clicks = 0
    n_chunks = -(-config.n_users // config.chunk_users)
    for chunk in range(n_chunks):
        users = make_users(config, params, chunk)
        for valid_from, table in users.snapshots:
            part = out / "users" / f"valid_from={valid_from.isoformat()}"
            part.mkdir(exist_ok=True)
            pq.write_table(table, part / f"part-{chunk:05d}.parquet")
        pq.write_table(users.truth, out / "truth" / "users" / f"part-{chunk:05d}.parquet")
        if events and config.impressions_per_user > 0:
            table = make_events(config, params, chunk, users, item_truth)
            n_events += table.num_rows
            n_clicks += int(np.count_nonzero(table.column("clicked").to_numpy()))
            _write_events_by_date(table, out, config, chunk)
    summary = BuildSummary(out, config.n_users, config.n_items, n_events, n_clicks)
    meta = {
        "config": config.model_dump(mode="json"),
        "events": events and config.impressions_per_user > 0,
        "n_users": config.n_users,
        "n_items": config.n_items,
        "n_events": n_events,
        "n_clicks": n_clicks,
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2))
    return summary
