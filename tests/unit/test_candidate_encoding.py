"""The candidate view's value encoding (int32 ids + float16 scores, 6 bytes a candidate) and the config checks
that choose where serving reads candidates from."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from rayml.batch.candidate_store import load_candidate_store_job
from rayml.config import ConfigError
from rayml.features.candidates import (
    BYTES_PER_CANDIDATE,
    CandidateEncodingError,
    decode_candidates,
    encode_candidates,
)
from rayml.serving import RecommenderArgs
from rayml.serving.config import load_serving_repo
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_round_trip_keeps_ids_exactly_and_scores_to_float16():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 2**31 - 1, (50, 100))
    scores = -np.sort(-rng.normal(0, 3, (50, 100)).astype(np.float32), axis=1)
    encoded = encode_candidates(items, scores)
    assert encoded.shape == (50, 100 * BYTES_PER_CANDIDATE) and encoded.dtype == np.uint8  # 600 bytes a user
    for row in range(50):
        got_items, got_scores = decode_candidates(encoded[row].tobytes(), 100, f"k:{row}")
        assert got_items.dtype == np.int64 and (got_items == items[row]).all()
        np.testing.assert_allclose(got_scores, scores[row], rtol=1e-3, atol=1e-4)
        assert (np.diff(got_scores) <= 0).all()  # rounding to float16 is monotone: the order survives


def test_ids_beyond_int32_and_scores_beyond_float16_are_refused():
    with pytest.raises(CandidateEncodingError, match=r"item ids span \[0, 2147483648\]; int32 holds"):
        encode_candidates(np.array([[0, 2**31]]), np.zeros((1, 2)))
    with pytest.raises(CandidateEncodingError, match=r"row 1: score 70000\.0 is beyond float16"):
        encode_candidates(np.zeros((2, 2), int), np.array([[1.0, 0.0], [70_000.0, 0.0]]))
    with pytest.raises(CandidateEncodingError, match=r"items \(2, 3\) and scores \(2, 2\)"):
        encode_candidates(np.zeros((2, 3), int), np.zeros((2, 2)))


def test_a_value_of_the_wrong_length_names_its_key():
    good = encode_candidates(np.arange(4)[None], np.zeros((1, 4)))[0].tobytes()
    with pytest.raises(CandidateEncodingError, match=r"at 'rayml:candidates:r1:7' is 23 bytes; .* top_k=4 takes 24"):
        decode_candidates(good[:-1], 4, "rayml:candidates:r1:7")
    with pytest.raises(CandidateEncodingError, match="top_k=5 takes 30"):
        decode_candidates(good, 5, "k")


def args(**overrides) -> dict:
    return {"registry": "r", "features": "f", "feature_state": "s", **overrides}


def test_parquet_candidates_need_a_path_online_ones_do_not():
    with pytest.raises(ValidationError, match="candidates: required with candidates_store: parquet"):
        RecommenderArgs.model_validate(args())
    assert RecommenderArgs.model_validate(args(candidates="c")).candidates_store == "parquet"
    online = RecommenderArgs.model_validate(args(candidates_store="online"))
    assert online.candidates is None and online.candidates_view == "candidates"
    with pytest.raises(ValidationError, match="candidates_store"):
        RecommenderArgs.model_validate(args(candidates_store="redis"))
    with pytest.raises(ValidationError, match="candidates_view"):
        RecommenderArgs.model_validate(args(candidates_store="online", candidates_view="a:b"))


def test_online_candidates_need_a_redis_store_and_their_own_view_name():
    embedded = RecommenderArgs.model_validate(args(candidates_store="online",
                                                   features=str(REPO / "configs/features/demo.yaml")))
    with pytest.raises(ConfigError, match=r"args\.candidates_store: online needs a Redis online store; .*demo\.yaml "
                                          "has online_store.type 'embedded'"):
        load_serving_repo(embedded)
    redis = embedded.model_copy(update={"features": str(REPO / "configs/features/redis.yaml")})
    assert load_serving_repo(redis).online_store.type == "redis"
    with pytest.raises(ConfigError, match=r"args\.candidates_view: 'user_profile' is a feature view"):
        load_serving_repo(redis.model_copy(update={"candidates_view": "user_profile"}))


def test_shipped_candidate_store_job_config_validates(tmp_path):
    """configs/batch/candidates_store.yaml loads; its checks name the file and the key."""
    shipped = yaml.safe_load((REPO / "configs/batch/candidates_store.yaml").read_text())
    out = tmp_path / "cands"
    out.mkdir()
    (out / "_manifest.json").write_text("{}")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**shipped, "candidates": str(out),
                                    "features": str(REPO / "configs/features/redis.yaml")}))
    config, repo = load_candidate_store_job(path)
    assert config.view == "candidates" and config.keep_runs == 2 and repo.online_store.type == "redis"

    with pytest.raises(ConfigError, match=f"{path}: key 'candidates': {tmp_path / 'nope'} does not exist"):
        load_candidate_store_job(path, {"candidates": str(tmp_path / "nope")})
    (out / "_manifest.json").unlink()
    with pytest.raises(ConfigError, match=f"{path}: key 'candidates': {out} has no _manifest.json"):
        load_candidate_store_job(path)
    (out / "_manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"{path}: key 'features': .*demo.yaml has online_store.type 'embedded'"):
        load_candidate_store_job(path, {"features": str(REPO / "configs/features/demo.yaml")})
    with pytest.raises(ConfigError, match=f"{path}: key 'view': 'item_catalog' is a feature view"):
        load_candidate_store_job(path, {"view": "item_catalog"})
    with pytest.raises(ConfigError, match="keep_runs"):
        load_candidate_store_job(path, {"keep_runs": 0})
