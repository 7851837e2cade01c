"""The detection matrix on the world's scenarios: each drift is caught by its own detector, in time, and the
others stay quiet where they should (covariate drift leaves the concept and label detectors alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayml.config import load_config
from rayml.monitoring.scenarios import (
    count_windows,
    recalibration,
    scenario_kind,
    seasonal_windows,
    summarize,
    world_stream,
)
from rayml.world import World, WorldConfig, build_world

pytestmark = pytest.mark.unit
SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "world" / "scenarios"
WINDOW, REFERENCE = 5_000, 30_000


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, World]:
    root = tmp_path_factory.mktemp("scenarios")
    out = {}
    for name in ("none", "covariate", "label_shift", "concept", "seasonal"):
        build_world(load_config(SCENARIOS / f"{name}.yaml", WorldConfig), root / name)
        out[name] = World(root / name)
    return out


def _cells(world: World, days: tuple[float, float]) -> dict[str, object]:
    stream = world_stream(world)
    windows = count_windows(stream, WINDOW, REFERENCE, days=days)
    return {o.detector: o for o in summarize(stream.kind, stream.onset_day, windows)}


def test_covariate_drift_is_caught_within_one_window_and_only_by_the_covariate_detector(worlds):
    cells = _cells(worlds["covariate"], days=(5.0, 9.0))
    assert cells["covariate"].first_alarm_window is not None and cells["covariate"].first_alarm_window <= 1
    assert cells["covariate"].alarms_before == 0
    # p(y | x) is kept: the label prior and the model's calibration do not move
    assert cells["concept"].alarms_after == 0 and cells["label_prior"].alarms_after == 0


def test_label_shift_is_caught_within_two_windows_of_labels(worlds):
    cells = _cells(worlds["label_shift"], days=(5.0, 9.5))
    assert cells["label_prior"].first_alarm_window is not None and cells["label_prior"].first_alarm_window <= 2
    assert cells["label_prior"].alarms_before == 0


def test_concept_drift_is_caught_within_a_day_while_the_inputs_look_stable(worlds):
    cells = _cells(worlds["concept"], days=(5.0, 9.0))
    assert cells["concept"].delay_days is not None and cells["concept"].delay_days <= 1.0
    assert cells["concept"].alarms_before == 0
    assert cells["covariate"].alarms_after == 0  # features stay put


def test_no_drift_no_alarm(worlds):
    cells = _cells(worlds["none"], days=(3.0, 14.0))
    assert all(c.alarms_before == 0 and c.windows_before >= 20 for c in cells.values()), cells


def test_seasonal_baseline_off_alarms_nearly_always_on_not(worlds):
    stream = world_stream(worlds["seasonal"])
    outcome = seasonal_windows(stream, period_days=7.0, window_hours=12.0)
    assert outcome.windows == 14
    assert outcome.rate_off >= 0.9, outcome
    assert outcome.alarms_baseline_on == 0, outcome


def test_recalibration_of_a_calibrated_score_is_the_identity():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.6, 200_000)
    (a, b), cov = recalibration(rng.random(len(p)) < p, p)
    assert abs(a) < 4 * np.sqrt(cov[0, 0]) and abs(b - 1) < 4 * np.sqrt(cov[1, 1])


def test_bad_input(worlds, tmp_path):
    stream = world_stream(worlds["none"])
    with pytest.raises(ValueError, match="reference_rows"):
        count_windows(stream, WINDOW, reference_rows=len(stream))
    with pytest.raises(ValueError, match="does not divide the period"):
        seasonal_windows(stream, period_days=7.0, window_hours=10.0)
    config = load_config(SCENARIOS / "covariate.yaml", WorldConfig).model_dump()
    config["drift"]["concept"] = {"enabled": True, "start_day": 7}
    build_world(WorldConfig.model_validate(config), tmp_path / "two")
    with pytest.raises(ValueError, match="one drift each"):
        scenario_kind(World(tmp_path / "two"))
