"""False alarms over time: a k-of-n alarm policy over per-window family drift decisions.

Policy (:class:`KOfN`): after each window, the alarm FIRES when at least ``k`` of the last ``n``
windows' family decisions were "drifted" (windows before the first count as not drifted). An
alarm ONSET (a page) is a window where it fires and did not fire on the window before; while the
condition holds the alarm stays raised.

False-alarm rate: with no drift, each window's family decision is ~ Bernoulli(α) independently
(α = the family-wise level of :func:`~rayml.monitoring.presets.run_preset`, which its Holm
correction keeps ≤ α). :func:`false_alarm_rate_per_day` estimates firing windows and onsets per
day by simulation and checks them against an exact Markov chain over the last n decisions (2ⁿ
states, started from "nothing drifted"), whose long-run limit is the closed form
``windows_per_day · P(Binomial(n, α) ≥ k)`` for firing windows.

Shipped policy: 2 of 3 at α = 0.01 with 24 windows/day (hourly windows). Firing probability per
window = 3α²(1 − α) + α³ = 2.980e-4, i.e. 7.15e-3 firing windows/day; onsets per window (exact,
stationary) = 1.960e-4 (a firing usually lasts 2 windows) → 4.70e-3 pages per day, about one
false page every 213 days (1.7 per year). A single-window policy (1 of 1) at the same α
pages 0.238 times a day (one every 4.2 days).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class KOfN:
    """Fires when ≥ ``k`` of the last ``n`` per-window family decisions were drifted."""

    k: int = 2
    n: int = 3
    _history: deque[bool] = field(init=False, repr=False)
    _firing: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"need 1 ≤ k ≤ n, got k={self.k}, n={self.n}")
        self._history = deque(maxlen=self.n)

    def update(self, drifted: bool) -> bool:
        """Record one window's family decision → whether the alarm fires after it."""
        self._history.append(bool(drifted))
        self._firing = sum(self._history) >= self.k
        return self._firing

    def update_onset(self, drifted: bool) -> bool:
        """Like :meth:`update` but True only on an alarm ONSET (fires now, did not before)."""
        before = self._firing
        return self.update(drifted) and not before

    def run(self, decisions: Iterable[bool]) -> list[bool]:
        """Firing after each decision of a stream (continues from the current state)."""
        return [self.update(d) for d in decisions]

    def reset(self) -> None:
        """Forget the history."""
        self._history.clear()
        self._firing = False

    @property
    def firing(self) -> bool:
        return self._firing


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(Binomial(n, p) ≥ k)."""
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


def stationary_rates(alpha: float, k: int, n: int) -> tuple[float, float]:
    """Long-run (firing, onset) probability per window, exact, by enumerating n + 1 windows."""
    fire = binomial_tail(n, k, alpha)
    onset = 0.0
    for bits in range(2 ** (n + 1)):
        w = [(bits >> i) & 1 for i in range(n + 1)]  # w[0] oldest … w[n] newest
        if sum(w[1:]) >= k and sum(w[:-1]) < k:
            s = sum(w)
            onset += alpha**s * (1 - alpha) ** (n + 1 - s)
    return fire, onset


def markov_expected(alpha: float, k: int, n: int, n_windows: int) -> tuple[float, float]:
    """Exact expected (firing windows, onsets) in ``n_windows`` windows started from an empty
    history, by propagating the distribution over the 2ⁿ states of the last n decisions."""
    size = 2**n
    states = np.arange(size)
    popcount = np.array([bin(s).count("1") for s in range(size)])
    fires = popcount >= k
    prob = np.zeros(size)
    prob[0] = 1.0
    mask = size - 1
    exp_fire = exp_onset = 0.0
    for _ in range(n_windows):
        new = np.zeros(size)
        onset = 0.0
        for bit, w in ((0, 1 - alpha), (1, alpha)):
            nxt = ((states << 1) | bit) & mask
            contrib = prob * w
            np.add.at(new, nxt, contrib)
            onset += float(contrib[fires[nxt] & ~fires[states]].sum())
        prob = new
        exp_fire += float(prob[fires].sum())
        exp_onset += onset
    return exp_fire, exp_onset


@dataclass
class FalseAlarmEstimate:
    """Per-day false alarms of a k-of-n policy: simulated (mean ± s.e. over runs) and exact."""

    alpha: float
    k: int
    n: int
    windows_per_day: int
    days: int
    runs: int
    simulated_firing_per_day: float
    simulated_firing_stderr: float
    simulated_onsets_per_day: float
    simulated_onsets_stderr: float
    exact_firing_per_day: float
    exact_onsets_per_day: float
    stationary_firing_per_day: float
    stationary_onsets_per_day: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _simulate(alpha: float, k: int, n: int, n_windows: int, runs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over runs: → (firing windows per run, onsets per run)."""
    rng = np.random.default_rng(seed)
    decisions = rng.random((runs, n_windows)) < alpha
    padded = np.concatenate([np.zeros((runs, n), dtype=np.int64), decisions.astype(np.int64)], axis=1)
    csum = np.cumsum(padded, axis=1)
    window_sums = csum[:, n:] - csum[:, :-n]  # sum of the last n decisions after each window
    firing = window_sums >= k
    prev = np.concatenate([np.zeros((runs, 1), dtype=bool), firing[:, :-1]], axis=1)
    return firing.sum(axis=1), (firing & ~prev).sum(axis=1)


def false_alarm_rate_per_day(
    alpha: float = 0.01,
    k: int = 2,
    n: int = 3,
    windows_per_day: int = 24,
    days: int = 365,
    runs: int = 200,
    seed: int = 0,
) -> FalseAlarmEstimate:
    """False alarms per day of ``KOfN(k, n)`` when each window drifts ~ Bernoulli(alpha).

    Simulates ``runs`` independent streams of ``days · windows_per_day`` windows (the simulation
    is the vectorised equivalent of feeding :class:`KOfN` one decision at a time) and computes
    the exact expectation (Markov chain) and the stationary closed form for comparison.
    """
    if not 0 <= alpha <= 1:
        raise ValueError("alpha must be in [0, 1]")
    n_windows = windows_per_day * days
    fire_runs, onset_runs = _simulate(alpha, k, n, n_windows, runs, seed)
    exact_fire, exact_onset = markov_expected(alpha, k, n, n_windows)
    st_fire, st_onset = stationary_rates(alpha, k, n)
    se = math.sqrt(max(runs - 1, 1))
    return FalseAlarmEstimate(
        alpha, k, n, windows_per_day, days, runs,
        float(fire_runs.mean() / days), float(fire_runs.std(ddof=1) / days / se) if runs > 1 else 0.0,
        float(onset_runs.mean() / days), float(onset_runs.std(ddof=1) / days / se) if runs > 1 else 0.0,
        exact_fire / days, exact_onset / days, st_fire * windows_per_day, st_onset * windows_per_day,
    )
