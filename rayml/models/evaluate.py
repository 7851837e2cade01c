"""Compare ranker artifacts on held-out users: size, NDCG@10 against the world's truth, AUC, ORT latency."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rayml.models.data import TrainingData
from rayml.models.export import onnx_parameter_count, ort_session
from rayml.models.privileged import PrivilegedFeatures
from rayml.monitoring import ndcg_at_k, roc_auc
from rayml.world import World


@dataclass(frozen=True)
class EvalRow:
    name: str
    version: str
    params: int
    file_kb: float
    ndcg10: float
    auc: float
    latency_b1_us: float
    latency_b256_us: float

    def to_dict(self) -> dict:
        return asdict(self)


def _latency_us(session, n: int, width: int, repeats: int) -> float:
    x = np.random.default_rng(n).normal(size=(n, width)).astype(np.float32)
    for _ in range(20):
        session.run(None, {"features": x})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            session.run(None, {"features": x})
        times.append((time.perf_counter() - start) / repeats * 1e6)
    return float(np.median(times))


@dataclass(frozen=True)
class HoldoutSet:
    """Held-out users with their true relevance over every item, and held-out impressions."""

    users: np.ndarray  # [U] rows of data.user_x
    truth: np.ndarray  # [U, I] true click probability
    rows: np.ndarray  # [E] held-out impression indices


def holdout_set(world: World, data: TrainingData, max_users: int = 500) -> HoldoutSet:
    rows = np.flatnonzero(data.is_holdout)
    users = np.unique(data.event_user[rows])[:max_users]
    truth = world.relevance(data.user_ids[users], data.item_ids)
    return HoldoutSet(users, truth, rows)


def user_ndcg10(path: str | Path, data: TrainingData, holdout: HoldoutSet,
                privileged: PrivilegedFeatures | None = None) -> np.ndarray:
    """NDCG@10 per held-out user of the model at ``path`` ranking every item, against the world's truth. [U].

    With ``privileged`` (a teacher's offline-only inputs) each user's features are appended as of the end of the
    log, the time the truth is taken at, from impressions before it.
    """
    session = ort_session(path, threads=1)
    n_items = len(data.item_ids)
    top = np.empty((len(holdout.users), 10), np.int64)
    for i, u in enumerate(holdout.users):
        parts = [np.repeat(data.user_x[u : u + 1], n_items, 0), data.item_x]  # [I, Fu], [I, Fi]
        if privileged is not None:
            parts.append(privileged.for_all_items(int(data.user_ids[u])))  # [I, P]
        scores = session.run(["score"], {"features": np.concatenate(parts, axis=1)})[0]
        top[i] = np.argsort(-scores, kind="stable")[:10]
    return ndcg_at_k(np.take_along_axis(holdout.truth, top, 1), holdout.truth, 10)


def evaluate_ranker(name: str, version: str, path: str | Path, data: TrainingData, holdout: HoldoutSet,
                    privileged: PrivilegedFeatures | None = None, per_user_ndcg: np.ndarray | None = None) -> EvalRow:
    """Score every item for each held-out user (NDCG@10 vs truth) and the held-out impressions (AUC).

    ``privileged``: the model is a teacher that also reads these features (point-in-time for each impression).
    ``per_user_ndcg``: this model's :func:`user_ndcg10` when already computed.
    """
    session = ort_session(path, threads=1)
    if per_user_ndcg is None:
        per_user_ndcg = user_ndcg10(path, data, holdout, privileged)
    ndcg = float(per_user_ndcg.mean())

    def pairs(rows: np.ndarray) -> np.ndarray:
        x = data.pairs(rows)
        return x if privileged is None else np.concatenate([x, privileged.per_event[rows]], axis=1)

    scores = np.concatenate([
        session.run(["score"], {"features": pairs(chunk)})[0]
        for chunk in np.array_split(holdout.rows, max(1, len(holdout.rows) // 65_536))
    ])
    width = data.user_x.shape[1] + data.item_x.shape[1] + (privileged.width if privileged is not None else 0)
    return EvalRow(
        name=name, version=version, params=onnx_parameter_count(path),
        file_kb=round(Path(path).stat().st_size / 1024, 1), ndcg10=round(ndcg, 4),
        auc=round(roc_auc(data.label[holdout.rows], scores), 4),
        latency_b1_us=round(_latency_us(session, 1, width, 2000), 1),
        latency_b256_us=round(_latency_us(session, 256, width, 200), 1),
    )


def markdown_table(rows: list[EvalRow]) -> str:
    header = "| model | version | params | file KB | NDCG@10 | AUC | ORT µs batch 1 | ORT µs batch 256 |\n|---|---|---|---|---|---|---|---|\n"
    return header + "".join(
        f"| {r.name} | {r.version} | {r.params:,} | {r.file_kb} | {r.ndcg10:.4f} | {r.auc:.4f} | "
        f"{r.latency_b1_us} | {r.latency_b256_us} |\n" for r in rows
    )


@dataclass(frozen=True)
class PairedGap:
    """Mean per-user difference of two models' NDCG@10 on the same users, with its uncertainty.

    Attributes:
        mean: mean of ``a - b`` over users.
        low, high: bootstrap (BCa) confidence interval of the mean, resampling users.
        p_value: two-sided paired t-test of ``a == b``.
        users: number of users compared.
    """

    mean: float
    low: float
    high: float
    p_value: float
    users: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_gap(a: np.ndarray, b: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> PairedGap:
    """Compare per-user metrics ``a`` and ``b`` ([U] each, same users in the same order)."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_gap needs two 1-D arrays of one length >= 2; got shapes {a.shape} and {b.shape}")
    diff = a - b
    interval = stats.bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=confidence,
                               method="BCa", random_state=seed).confidence_interval
    return PairedGap(mean=float(diff.mean()), low=float(interval.low), high=float(interval.high),
                     p_value=float(stats.ttest_rel(a, b).pvalue), users=len(a))
