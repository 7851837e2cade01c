"""Model-quality metrics: ranking (NDCG@k) and classification (AUC)."""

from __future__ import annotations

import numpy as np


def dcg_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    """DCG of each row of ``gains`` [n, m], taken in the given order, truncated at k. → [n]."""
    gains = np.asarray(gains, dtype=np.float64)[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2))
    return gains @ discounts


def ndcg_at_k(recommended_gains: np.ndarray, all_gains: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per user. → [n] in [0, 1].

    Args:
        recommended_gains: [n, ≥k] true gain of each recommended item, in recommended order.
        all_gains: [n, m] true gain of every item for each user (defines the ideal ranking).
        k: cut-off.
    """
    ideal = -np.sort(-np.asarray(all_gains, dtype=np.float64), axis=1)
    idcg = dcg_at_k(ideal, k)
    return np.where(idcg > 0, dcg_at_k(recommended_gains, k) / np.where(idcg > 0, idcg, 1), 0.0)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic (ties get average ranks)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    # Imported here: a serving replica imports this module, and scipy.stats costs about half a second.
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
