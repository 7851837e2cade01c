"""Ground truth of a synthetic world: latent tastes, biases and the click model, at any time."""

from __future__ import annotations

import numpy as np

from rayml.world.config import WorldConfig

SECONDS_PER_DAY = 86_400


class WorldParams:
    """Global parameters that every chunk shares, regenerated from the seed (never stored).

    Attributes:
        centroids: [n_categories, d] taste centre of each category.
        user_projection: [d, observed_dim] maps a taste to observed user features.
        item_projection: [d, observed_dim] maps an item vector to observed item features.
        covariate_direction: [d] direction of the covariate drift (norm 0.5).
        concept_basis: [d, d] orthonormal basis whose coordinate pairs rotate under concept drift.
    """

    def __init__(self, config: WorldConfig) -> None:
        rng = np.random.default_rng([config.seed, 0])
        d, k = config.latent_dim, config.observed_dim
        self.config = config
        self.centroids = rng.normal(0, 1 / np.sqrt(d), (config.n_categories, d))
        self.user_projection = rng.normal(0, 1, (d, k))
        self.item_projection = rng.normal(0, 1, (d, k))
        direction = rng.normal(0, 1, d)
        self.covariate_direction = 0.5 * direction / np.linalg.norm(direction)
        self.concept_basis, _ = np.linalg.qr(rng.normal(0, 1, (d, d)))

    def shifted_tastes(self, tastes: np.ndarray, shifted: np.ndarray) -> np.ndarray:
        """Tastes after covariate drift for rows where ``shifted`` is true. [n, d] → [n, d]."""
        drift = self.config.drift.covariate
        if not drift.enabled:
            return tastes
        return tastes + np.outer(shifted, drift.shift * self.covariate_direction)

    def rotated_tastes(self, tastes: np.ndarray, t_days: np.ndarray) -> np.ndarray:
        """Concept drift: rotate every coordinate pair of the concept basis by θ(t). [n, d] → [n, d]."""
        drift = self.config.drift.concept
        if not drift.enabled:
            return tastes
        theta = np.deg2rad(drift.degrees_per_day * np.clip(t_days - drift.start_day, 0, None))
        coords = tastes @ self.concept_basis  # [n, d] in the rotating basis
        cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
        even, odd = coords[:, 0::2], coords[:, 1::2]
        pairs = min(even.shape[1], odd.shape[1])
        rotated = coords.copy()
        rotated[:, 0 : 2 * pairs : 2] = cos * even[:, :pairs] - sin * odd[:, :pairs]
        rotated[:, 1 : 2 * pairs : 2] = sin * even[:, :pairs] + cos * odd[:, :pairs]
        return rotated @ self.concept_basis.T

    def effective_tastes(self, tastes: np.ndarray, t_days: np.ndarray) -> np.ndarray:
        """Tastes that drive clicks at time ``t_days`` (covariate then concept drift). [n, d]."""
        cov = self.config.drift.covariate
        shifted = cov.enabled & (t_days >= cov.start_day)
        return self.rotated_tastes(self.shifted_tastes(tastes, shifted), t_days)

    def time_logit(self, t_days: np.ndarray) -> np.ndarray:
        """Part of the click logit that depends only on time: base, intercept, seasonality. [n]."""
        cfg = self.config
        logit = np.full(t_days.shape, cfg.click.base_logit, dtype=np.float64)
        intercept = cfg.drift.intercept
        if intercept.enabled:
            logit += np.where(t_days >= intercept.start_day, intercept.delta, 0.0)
        season = cfg.drift.seasonality
        if season.enabled:
            logit += season.amplitude * np.sin(2 * np.pi * t_days / season.period_days)
        return logit

    def click_logit(
        self,
        tastes: np.ndarray,
        user_bias: np.ndarray,
        item_vecs: np.ndarray,
        item_bias: np.ndarray,
        t_days: np.ndarray,
    ) -> np.ndarray:
        """Noise-free click logit for aligned rows of users and items at times ``t_days``. [n]."""
        eff = self.effective_tastes(tastes, t_days)
        match = np.einsum("nd,nd->n", eff, item_vecs)
        return self.time_logit(t_days) + self.config.click.taste_scale * match + user_bias + item_bias

    def model_logit(
        self,
        tastes: np.ndarray,
        user_bias: np.ndarray,
        item_vecs: np.ndarray,
        item_bias: np.ndarray,
        t_days: np.ndarray,
    ) -> np.ndarray:
        """The click logit of a model fitted on the features before any drift, for aligned rows. [n].

        Such a model sees what the observed features carry (covariate drift moves tastes and features
        together, so it stays right) and nothing else: no concept rotation, no intercept change, and
        seasonality at its mean of zero. Its probabilities are what a perfect pre-drift ranker serves.
        """
        cov = self.config.drift.covariate
        shifted = self.shifted_tastes(tastes, cov.enabled & (t_days >= cov.start_day))
        match = np.einsum("nd,nd->n", shifted, item_vecs)
        return self.config.click.base_logit + self.config.click.taste_scale * match + user_bias + item_bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def label_shift_keep_rates(prior: float, new_prior: float) -> tuple[float, float]:
    """Keep probabilities ``(a, b)`` of clicked / other rows that move ``prior`` to ``new_prior``.

    After keeping clicked rows with probability a and the others with b, the click share is
    ``a·π / (a·π + b·(1 − π))``; the larger of a and b is 1, so as few rows as possible are lost.
    """
    if not 0 < prior < 1:
        return 1.0, 1.0
    if new_prior >= prior:
        return 1.0, prior * (1 - new_prior) / (new_prior * (1 - prior))
    return new_prior * (1 - prior) / (prior * (1 - new_prior)), 1.0
