"""Schemathesis against an app of its own (POST /events changes state): every answer conforms to the OpenAPI
schema, every status is documented, never a 5xx. Fixed seed, 25 examples per operation (the bench runs 100).

Checks: every schemathesis check except `positive_data_acceptance`, because the app also validates
semantically what a static schema cannot say: an alias the replica does not serve, or a `k` above the app's
`max_k`, is a 422 naming the field.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from rayml.serving.auth import write_demo_tokens
from tests.conftest import MEASURED

pytestmark = pytest.mark.integration

TOKENS: dict[str, str] = {}
EXAMPLES = int(os.environ.get("RAYML_SCHEMA_EXAMPLES", "25"))  # per operation; `make bench` runs 100


@pytest.fixture(scope="module")
def api_schema(serve_url, recommender_args, tmp_path_factory):
    from ray import serve

    from rayml.serving.app import build_recommender

    folder = tmp_path_factory.mktemp("schema-app")
    TOKENS.update(write_demo_tokens(folder / "tokens.yaml"))
    args = recommender_args.model_copy(update={
        "auth": {"enabled": True, "tokens_file": str(folder / "tokens.yaml")},
        "event_log": str(folder / "events"), "feature_log": None})
    serve.run(build_recommender(args), name="schema", route_prefix="/schema")
    schema = schemathesis.openapi.from_url(f"{serve_url}/schema/openapi.json")
    schema.config.update(base_url=f"{serve_url}/schema")
    yield schema
    serve.delete("schema")


def test_every_answer_conforms_to_the_schema(api_schema):
    """Each operation in turn (schemathesis' pytest plugin does not load under this pytest): failures collected,
    then reported together."""
    from hypothesis import given

    failures: dict[str, str] = {}
    operations, calls, statuses = 0, 0, set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def run(case) -> None:
            nonlocal calls
            response = case.call_and_validate(headers={"Authorization": f"Bearer {TOKENS['admin']}"},
                                              excluded_checks=[positive_data_acceptance], timeout=30)
            calls += 1
            statuses.add(response.status_code)

        try:
            run()
        except Exception as exc:  # a check failed: keep the first failure of each operation
            failures[operation.label] = str(exc)[:1500]
    assert operations >= 13 and calls >= 10 * operations, (operations, calls)
    assert not any(code >= 500 for code in statuses), statuses
    MEASURED["schemathesis"] = f"{calls} cases over {operations} operations, statuses {sorted(statuses)}"
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
