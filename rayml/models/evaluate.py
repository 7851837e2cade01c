"""Compare ranker artifacts on held-out users: size, NDCG@10 against the world's truth, AUC, ORT latency."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rayml.models.data import TrainingData
from rayml.models.export import onnx_parameter_count, ort_session
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


def evaluate_ranker(name: str, version: str, path: str | Path, data: TrainingData, holdout: HoldoutSet) -> EvalRow:
    """Score every item for each held-out user (NDCG@10 vs truth) and the held-out impressions (AUC)."""
    session = ort_session(path, threads=1)
    n_items = len(data.item_ids)
    top = np.empty((len(holdout.users), 10), np.int64)
    for i, u in enumerate(holdout.users):
        x = np.concatenate([np.repeat(data.user_x[u : u + 1], n_items, 0), data.item_x], axis=1)
        scores = session.run(["score"], {"features": x})[0]
        top[i] = np.argsort(-scores, kind="stable")[:10]
    ndcg = float(ndcg_at_k(np.take_along_axis(holdout.truth, top, 1), holdout.truth, 10).mean())
    scores = np.concatenate([
        session.run(["score"], {"features": data.pairs(chunk)})[0]
        for chunk in np.array_split(holdout.rows, max(1, len(holdout.rows) // 65_536))
    ])
    width = data.user_x.shape[1] + data.item_x.shape[1]
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
