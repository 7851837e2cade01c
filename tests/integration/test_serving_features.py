"""The recommender reads every feature through the online store: real-time ingestion, explain, bad events."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

pytestmark = pytest.mark.integration


def post(url: str, path: str, body) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=30)


def test_ingested_events_show_up_in_served_realtime_features(serve_url, recommender_args):
    before = post(serve_url, "/recommend", {"user_id": 11, "k": 3, "explain": True}).json()
    item = before["items"][0]
    now = time.time()
    events = [{"user_id": 11, "item_id": item, "clicked": True, "ts": now - 10},
              {"user_id": 11, "item_id": item, "clicked": False},  # ts defaults to the server's clock
              {"user_id": 11, "item_id": item, "clicked": True, "ts": now - 1800}]  # inside 1h, outside 5m
    response = post(serve_url, "/events", {"events": events})
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3}
    after = post(serve_url, "/recommend", {"user_id": 11, "k": 3, "explain": True}).json()
    user_rt, item_rt = after["features"]["rt.user"], after["features"]["rt.item"]
    delta = {name: user_rt[name][0] - before["features"]["rt.user"][name][0] for name in user_rt}
    assert delta == {"impressions_5m": 2, "clicks_5m": 1, "impressions_1h": 3, "clicks_1h": 2}
    position = after["items"].index(item)
    assert item_rt["clicks_1h"][position] >= 2 and item_rt["impressions_5m"][position] >= 2
    # Batch features come through the same call: the user's profile as materialized.
    assert set(after["features"]["user_profile"]) >= {"age", "region", "f0"}
    # The acknowledged events are in the event log, for replay and the skew check.
    log = pq.read_table(recommender_args.event_log).to_pandas()
    assert ((log.user_id == 11) & (log.item_id == item)).sum() >= 3


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"events": []}, ["body", "events"]),
        ({"events": [{"user_id": 1, "item_id": 2}]}, ["body", "events", 0, "clicked"]),
        ({"events": [{"user_id": "1", "item_id": 2, "clicked": True}]}, ["body", "events", 0, "user_id"]),
        ({"events": [{"user_id": 1, "item_id": -2, "clicked": True}]}, ["body", "events", 0, "item_id"]),
        ({"events": [{"user_id": 1, "item_id": 2, "clicked": "yes"}]}, ["body", "events", 0, "clicked"]),
        ({"events": [{"user_id": 1, "item_id": 2, "clicked": True, "extra": 1}]}, ["body", "events", 0, "extra"]),
        ({"events": [{"user_id": 1, "item_id": 2, "clicked": True},
                     {"user_id": 1, "item_id": 2, "clicked": True, "ts": time.time() + 3600}]},
         ["body", "events", 1, "ts"]),
        ({"event": []}, ["body", "events"]),
    ],
)
def test_bad_events_get_422_naming_the_field_and_nothing_is_ingested(serve_url, body, loc):
    before = post(serve_url, "/recommend", {"user_id": 1, "k": 1, "explain": True}).json()["features"]["rt.user"]
    response = post(serve_url, "/events", body)
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]]
    after = post(serve_url, "/recommend", {"user_id": 1, "k": 1, "explain": True}).json()["features"]["rt.user"]
    assert after == before  # a refused batch adds nothing, not even its valid events


def test_served_features_are_logged(serve_url, recommender_args):
    for user in range(20, 30):
        assert post(serve_url, "/recommend", {"user_id": user, "k": 5}).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(np.atleast_1d(_log_files(recommender_args))):
        time.sleep(0.5)
    log = pq.read_table(recommender_args.feature_log.path).to_pandas()
    assert {"request_id", "ts", "user_id", "item_id", "user_profile.age", "item_catalog.price",
            "rt.user.clicks_5m", "rt.item.impressions_1h"} <= set(log.columns)
    assert log.groupby("request_id").user_id.nunique().max() == 1  # a logged request keeps its candidates


def _log_files(args) -> list:
    from pathlib import Path

    return list(Path(args.feature_log.path).glob("date=*/part-*.parquet"))
