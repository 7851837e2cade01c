"""Bearer tokens by role on real Serve over HTTP: 401 without, 403 with the wrong role, refusals change nothing,
tokens rotate by rewriting the secret file with no restart."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import requests

from rayml.serving.auth import write_demo_tokens

pytestmark = pytest.mark.integration


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def test_roles_refusals_and_rotation(serve_url, recommender_args, tmp_path):
    from ray import serve

    from rayml.serving.app import build_recommender

    tokens_file = tmp_path / "secrets" / "tokens.yaml"
    tokens = write_demo_tokens(tokens_file)
    assert (tokens_file.stat().st_mode & 0o777) == 0o600
    events_dir = tmp_path / "events"
    args = recommender_args.model_copy(update={
        "auth": {"enabled": True, "tokens_file": str(tokens_file), "reload_s": 0},
        "event_log": str(events_dir), "feature_log": None})
    serve.run(build_recommender(args), name="auth", route_prefix="/auth")
    base = f"{serve_url}/auth"

    def recommend(token: str | None, **extra) -> requests.Response:
        return requests.post(f"{base}/recommend", json={"user_id": 11, "k": 3, **extra}, headers=bearer(token),
                             timeout=10)

    def clicks(user: int) -> int:
        body = requests.post(f"{base}/recommend", json={"user_id": user, "k": 3, "explain": True},
                             headers=bearer(tokens["admin"]), timeout=10).json()
        return body["features"]["rt.user"]["clicks_5m"][0]

    def ingest(token: str | None, headers: dict | None = None) -> requests.Response:
        body = {"events": [{"user_id": 11, "item_id": 5, "clicked": True}]}
        return requests.post(f"{base}/events", json=body, headers=headers or bearer(token), timeout=10)

    try:
        missing = recommend(None)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization" in missing.json()["detail"]
        assert recommend("not-a-real-token-at-all-0000").status_code == 401
        malformed = requests.post(f"{base}/recommend", json={"user_id": 11}, timeout=10,
                                  headers={"Authorization": tokens["read"]})  # no scheme
        assert malformed.status_code == 401 and tokens["read"] not in malformed.text  # never echoed
        assert recommend(tokens["read"]).status_code == 200
        explain = recommend(tokens["read"], explain=True)
        assert explain.status_code == 403 and "admin" in explain.json()["detail"]
        assert recommend(tokens["admin"], explain=True).status_code == 200

        before = clicks(11)
        assert ingest(None).status_code == 401
        assert ingest(tokens["read"]).status_code == 403
        assert clicks(11) == before and not events_dir.exists()  # refusals change nothing
        assert ingest(tokens["ingest"]).status_code == 200
        assert clicks(11) == before + 1 and events_dir.exists()

        x = np.zeros((1, requests.get(f"{base}/v2/models/ranker", headers=bearer(tokens["read"]), timeout=10)
                      .json()["inputs"][0]["shape"][1]), np.float32)
        infer = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        assert requests.post(f"{base}/v2/models/ranker/infer", json=infer, timeout=10).status_code == 401
        assert requests.post(f"{base}/v2/models/ranker/infer", json=infer, headers=bearer(tokens["read"]),
                             timeout=10).status_code == 200
        for open_path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/v2"):
            assert requests.get(f"{base}{open_path}", timeout=10).status_code == 200, open_path

        replica = requests.get(f"{base}/healthz", timeout=10).json()["replica"]
        old = tokens["read"]
        rotated = write_demo_tokens(tokens_file)  # a new secret: old tokens out, new ones in
        os.utime(tokens_file, (time.time() + 5, time.time() + 5))
        assert recommend(rotated["read"]).status_code == 200
        assert recommend(old).status_code == 401
        assert requests.get(f"{base}/healthz", timeout=10).json()["replica"] == replica  # no restart
    finally:
        serve.delete("auth")
