"""Monitoring: model-quality metrics (drift, system metrics and reports arrive with later stages)."""

from __future__ import annotations

from rayml.monitoring.metrics import dcg_at_k, ndcg_at_k, roc_auc

__all__ = ["dcg_at_k", "ndcg_at_k", "roc_auc"]
