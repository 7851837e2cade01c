"""Point-in-time joins: never a value from after the event, TTL respected, order kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayml.features.offline import get_historical_features, point_in_time_rows, read_history

pytestmark = pytest.mark.unit
T = pd.Timestamp


def test_crafted_case_where_a_naive_join_leaks_the_future():
    history = pd.DataFrame({
        "user_id": [1, 1, 2],
        "valid_from": [T("2026-01-01"), T("2026-01-10"), T("2026-01-05")],
        "spend": [10.0, 999.0, 5.0],  # 999 becomes known only on Jan 10
    })
    events = pd.DataFrame({
        "user_id": [1, 1, 2, 2, 3],
        "event_timestamp": [T("2026-01-09 23:59"), T("2026-01-10"), T("2026-01-04"), T("2026-01-06"), T("2026-01-06")],
    })
    naive = events.merge(history.sort_values("valid_from").groupby("user_id").tail(1), on="user_id", how="left")
    assert naive["spend"].iloc[0] == 999.0  # the latest-value join leaks Jan 10's value into Jan 9
    joined = get_historical_features(events, history, key="user_id")
    assert joined["spend"].iloc[0] == 10.0  # as known on Jan 9
    assert joined["spend"].iloc[1] == 999.0  # valid from Jan 10 inclusive
    assert np.isnan(joined["spend"].iloc[2])  # user 2 had nothing yet on Jan 4
    assert joined["spend"].iloc[3] == 5.0
    assert np.isnan(joined["spend"].iloc[4])  # unknown user
    assert joined["feature_missing"].tolist() == [False, False, True, False, True]
    assert joined["user_id"].tolist() == events["user_id"].tolist()  # input order kept


def test_mixed_timestamp_resolutions_join():
    history = pd.DataFrame({"user_id": [1], "valid_from": np.array(["2026-01-01"], dtype="datetime64[s]"), "x": [1.0]})
    events = pd.DataFrame({"user_id": [1], "event_timestamp": np.array(["2026-01-02T00:00:00.5"], dtype="datetime64[ms]")})
    assert get_historical_features(events, history, key="user_id")["x"].tolist() == [1.0]


def test_ttl_expires_old_values():
    history = pd.DataFrame({"user_id": [1], "valid_from": [T("2026-01-01")], "spend": [3.0]})
    events = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [T("2026-01-02"), T("2026-01-20")]})
    joined = get_historical_features(events, history, key="user_id", ttl=np.timedelta64(7, "D"))
    assert joined["spend"].iloc[0] == 3.0 and np.isnan(joined["spend"].iloc[1])


def test_unknown_feature_and_missing_columns_are_named():
    history = pd.DataFrame({"user_id": [1], "valid_from": [T("2026-01-01")], "spend": [3.0]})
    events = pd.DataFrame({"user_id": [1], "event_timestamp": [T("2026-01-02")]})
    with pytest.raises(KeyError, match=r"unknown features \['spnd'\]"):
        get_historical_features(events, history, key="user_id", features=["spnd"])
    with pytest.raises(KeyError, match="entity_df lacks column 'event_timestamp'"):
        get_historical_features(events.rename(columns={"event_timestamp": "ts"}), history, key="user_id")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 30)), min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), min_size=1, max_size=40))
def test_matches_a_brute_force_search(history_rows, event_rows):
    hk = np.array([k for k, _ in history_rows])
    ht = np.array([np.datetime64("2026-01-01") + np.timedelta64(d, "D") for _, d in history_rows])
    ek = np.array([k for k, _ in event_rows])
    et = np.array([np.datetime64("2026-01-01") + np.timedelta64(d, "D") for _, d in event_rows])
    got = point_in_time_rows(hk, ht, ek, et)
    for i, (key, ts) in enumerate(zip(ek, et, strict=True)):
        valid = [j for j in range(len(hk)) if hk[j] == key and ht[j] <= ts]
        if not valid:
            assert got[i] == -1
        else:
            assert got[i] >= 0 and hk[got[i]] == key and ht[got[i]] == max(ht[j] for j in valid)


def test_reads_world_snapshots_as_history(tiny_world):
    history = read_history(tiny_world.path / "users", "user_id")
    assert len(history) == tiny_world.n_users and str(history["valid_from"].dtype).startswith("datetime64")
    assert (history["valid_from"] == T("2026-01-01")).all()
