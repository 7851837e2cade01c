"""Arguments of the recommender application (the ``args:`` block of a Serve config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayml.config import ConfigError, StrictModel
from rayml.features.definitions import FeatureRepo, load_feature_repo
from rayml.features.feature_log import FeatureLogConfig
from rayml.serving.auth import AuthConfig
from rayml.serving.filters import PostFilters


class HealthConfig(StrictModel):
    """When a replica counts as failing (Serve replaces it) rather than degraded (it keeps serving)."""

    stall_s: float = Field(10.0, gt=0, le=600, description="An event loop stalled longer than this is failing.")
    failing_after: int = Field(
        20, ge=1, le=100_000, description="This many model calls failing in a row (no success between) is failing."
    )


class OverloadMode(StrictModel):
    """Shedding under sustained overload (:class:`rayml.serving.http_guards.InFlight`).

    While clients ask for no more than ``max_in_flight`` requests at once, all are admitted. Once one is shed,
    demand exceeds capacity, and queueing more requests than the replica needs to keep its batches full only adds
    latency: for ``hold_s`` after the latest shed, a POST is admitted only while fewer than ``in_flight`` are
    inside. Admitted requests then keep the latency of a replica at its best throughput, and the rest get 503 +
    Retry-After at once."""

    in_flight: int = Field(
        16, ge=1, le=100_000,
        description="Admitted requests at most while overloaded: at least a batch, about the concurrency at which "
        "the replica reaches its best throughput (C* of `benchmarks/edge.py --overload`).",
    )
    hold_s: float = Field(
        3.0, gt=0, le=3600,
        description="Overloaded until this long after the latest shed; at least retry_after_s, so polite clients "
        "coming back after Retry-After still find the tight limit.",
    )


class ExperimentArmServing(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="The arm's name.")
    weight_pct: float = Field(gt=0, le=100, description="Share of users, percent; the arms sum to 100.")
    alias: str | None = Field(None, description="Ranker alias the arm serves (one of the served aliases); "
                              "null: the default ranker.")


class ExperimentServing(StrictModel):
    """An A/B experiment: users split into arms by a hash with the experiment's own salt (orthogonal to the canary).
    Its users' requests go to the outcome log with their arm; `rayml experiment export` turns them into per-user
    results for `rayml experiment analyze`."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    salt: str | None = Field(None, description="Hash salt; default: the name. A new salt reshuffles the users.")
    arms: list[ExperimentArmServing] = Field(min_length=2, max_length=16)
    log_sample: float = Field(1.0, gt=0, le=1, description="Share of the experiment's users logged (by user hash).")

    @model_validator(mode="after")
    def _arms(self) -> ExperimentServing:
        total = sum(a.weight_pct for a in self.arms)
        if abs(total - 100) > 1e-9:
            raise ValueError(f"arms: weight_pct sum to {total:g}, not 100")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names repeat ({names})")
        return self


class RolloutServing(StrictModel):
    """Canary routing, outcome logging and shadow traffic in the replicas (the controller: ``rayml.rollout``)."""

    outcomes: str = Field(description="Directory of the outcome log (requests and clicks, date-partitioned Parquet).")
    flush_s: float = Field(2.0, gt=0, le=3600, description="Outcome-log buffers are written at least this often.")
    shadow_queue: int = Field(64, ge=1, le=100_000, description="Shadow jobs waiting at most; beyond, dropped.")
    shadow_busy_in_flight: int = Field(
        4, ge=1, le=100_000, description="Shadow work is dropped while this many user requests are in the replica.")
    experiment: ExperimentServing | None = Field(None, description="An A/B experiment layer; null: none.")

    @field_validator("outcomes")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().resolve())


class MonitoringServing(StrictModel):
    """Sampling of served rows for the monitor deployment (``rayml.serving.monitor_app``)."""

    sample_rate: float = Field(0.1, ge=0, le=1, description="Share of answered requests sent to the monitor.")
    app: str = Field("monitor", description="Serve application of the monitor.")
    deployment: str = Field("Monitor", description="Its deployment name.")
    send_every_s: float = Field(1.0, ge=0.05, le=3600, description="At most one message per replica this often.")
    profile_bucket_s: float | None = Field(
        1.0, gt=0, description="Replicas pre-aggregate their sampled rows into mergeable profiles (sketches) per "
        "model version and event-time bucket of this many seconds; it must divide the monitor's window_s. "
        "null: send the rows only.")
    outcome_sample: float = Field(
        0.0, ge=0, le=1,
        description="Share of users (by hash) whose requests go to the outcome log outside a rollout, so the monitor "
        "computes delayed-label performance (needs `rollout.outcomes`, the log it reuses); 0: off.")


class RecommenderArgs(StrictModel):
    """Validated by Ray itself when ``serve run`` builds the app. Relative paths resolve against the cwd."""

    plan: Literal["fused", "split"] = Field(
        "fused",
        description="fused: every stage in the ingress replica (fastest on CPU); split: the ranker's ONNX sessions "
        "in their own `Ranker` deployment (give it `num_gpus` under `deployments:`), reached by a Serve handle.",
    )
    registry: str = Field(description="Registry root: a directory, or a URI (`s3://bucket/prefix`) every node can reach.")
    ranker_model: str = Field("ranker", description="Registry model name of the ranker.")
    ranker_alias: str = Field("production", description="Version or alias of the ranker to serve at start.")
    ranker_aliases: list[str] = Field(
        [], description="More aliases served at once (e.g. canary, shadow), chosen per request by `model_alias`."
    )
    alias_poll_s: float = Field(
        5.0, ge=0, le=3600,
        description="How often every served alias (ranker_alias, ranker_aliases, retriever_alias) is re-resolved "
        "in the registry, so promote and rollback reach running replicas; 0: never.",
    )
    item_rows_refresh_s: float = Field(
        60.0, ge=0, le=86_400,
        description="With the redis store, how often the pre-encoded item rows are rebuilt from the store (item "
        "features change only when materialized); the embedded store's snapshot never changes. 0: never.",
    )
    retriever_model: str | None = Field(
        "retriever", description="Registry model whose user tower is served over OIP; null: not served."
    )
    retriever_alias: str = Field("production", description="Version or alias of the retriever.")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="auto = the version's int8 artifact when it has one, else fp32."
    )
    candidates_store: Literal["parquet", "online"] = Field(
        "parquet",
        description="parquet: every replica loads the candidate job's output (`candidates`) into memory (the demo "
        "default; memory grows with users); online: each request reads the user's candidates from the Redis "
        "online store's candidate view (`candidates_view`, written by batch_jobs/materialize_candidates.py) in the "
        "same round trip as the user's features, and replicas follow each newly published run.",
    )
    candidates: str | None = Field(
        None, description="Output directory of the candidate job (needed with candidates_store: parquet)."
    )
    candidates_view: str = Field(
        "candidates", pattern=r"^[A-Za-z0-9_.-]+$", max_length=64,
        description="Name of the candidate view in the online store (candidates_store: online).",
    )
    features: str = Field(description="Feature repo YAML; its `online_store.type` picks embedded or redis.")
    feature_state: str = Field(description="Materialization state dir (the embedded store's snapshots).")
    user_view: str = Field("user_profile", description="Feature view of the ranker's user features.")
    item_view: str = Field("item_catalog", description="Feature view of the ranker's item features.")
    event_log: str | None = Field(None, description="Where POST /events appends ingested events; null: not kept.")
    feature_log: FeatureLogConfig | None = Field(None, description="Sampled log of served features (skew check).")
    filters: PostFilters = Field(PostFilters(), description="Business rules applied after ranking.")
    default_k: int = Field(10, ge=1, le=10_000, description="k when a request omits it.")
    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a request may ask for.")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 30, description="Larger request bodies get 413 before they are read."
    )
    auth: AuthConfig = Field(AuthConfig(), description="Bearer tokens by role (read, ingest, admin).")
    health: HealthConfig = Field(HealthConfig(), description="Liveness thresholds (see rayml.serving.health).")
    max_in_flight: int = Field(
        0, ge=0, le=100_000,
        description="Admission control: a POST arriving while this many requests are inside the replica gets 503 + "
        "Retry-After at once, before any work (0: admit all; Serve's max_queued_requests still sheds). It must be "
        "below the deployment's max_ongoing_requests, the most Serve lets into the app.",
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After of an admission-control 503.")
    overload: OverloadMode | None = Field(
        None, description="Tighter admission while overloaded (needs max_in_flight; null: max_in_flight only).")
    access_log_sample: float = Field(
        0.01, ge=0, le=1, description="Share of requests given an access-log line (every 5xx is logged)."
    )
    monitoring: MonitoringServing | None = Field(
        None, description="Sample served rows (features, scores) to the monitor: drift, quality, alerts.")
    rollout: RolloutServing | None = Field(
        None, description="Route users to a canary by the controller's weights, log outcomes, mirror to a shadow.")

    @field_validator("registry", "candidates", "features", "feature_state", "event_log")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None or "://" in value:  # a URI (s3://, gs://) stays as written
            return value
        return str(Path(value).expanduser().resolve())

    @field_validator("feature_log")
    @classmethod
    def _absolute_log(cls, value: FeatureLogConfig | None) -> FeatureLogConfig | None:
        return None if value is None else value.model_copy(update={"path": str(Path(value.path).expanduser().resolve())})

    @model_validator(mode="after")
    def _rollout_needs_locks(self) -> RecommenderArgs:
        if self.rollout is not None and "://" in self.registry:
            raise ValueError("rollout: needs the registry on a filesystem with file locks (the rollout lease); "
                             f"registry {self.registry.split('?', 1)[0]} is a URI (docs/registry-uri.md)")
        return self

    @model_validator(mode="after")
    def _overload_limits(self) -> RecommenderArgs:
        if self.overload is None:
            return self
        if not self.max_in_flight:
            raise ValueError("overload: needs max_in_flight > 0 (a first shed is what marks the overload)")
        if self.overload.in_flight > self.max_in_flight:
            raise ValueError(f"overload.in_flight={self.overload.in_flight} must be <= "
                             f"max_in_flight={self.max_in_flight}")
        if self.overload.hold_s < self.retry_after_s:
            raise ValueError(f"overload.hold_s={self.overload.hold_s:g} must be >= retry_after_s="
                             f"{self.retry_after_s}: clients retrying after Retry-After would find the limit relaxed")
        return self

    @model_validator(mode="after")
    def _k_order(self) -> RecommenderArgs:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} must be <= max_k={self.max_k}")
        if self.monitoring is not None and self.monitoring.outcome_sample > 0 and self.rollout is None:
            raise ValueError("monitoring.outcome_sample needs rollout.outcomes: the outcome log it writes to")
        experiment = self.rollout.experiment if self.rollout is not None else None
        served = {self.ranker_alias, *self.ranker_aliases}
        for i, arm in enumerate(experiment.arms if experiment is not None else []):
            if arm.alias is not None and arm.alias not in served:
                raise ValueError(f"rollout.experiment.arms.{i}.alias: {arm.alias!r} is not served; serve it in "
                                 f"ranker_aliases (served: {sorted(served)})")
        return self

    @model_validator(mode="after")
    def _candidates_source(self) -> RecommenderArgs:
        if self.candidates_store == "parquet" and self.candidates is None:
            raise ValueError("candidates: required with candidates_store: parquet (the candidate job's output "
                             "directory); or set candidates_store: online")
        return self


def load_serving_repo(args: RecommenderArgs) -> FeatureRepo:
    """The feature repo named by ``args.features``, checked against the views the ranker reads.

    Raises:
        ConfigError: naming the file and key.
    """
    repo = load_feature_repo(args.features, check_sources=False)
    for field in ("user_view", "item_view"):
        view = getattr(args, field)
        if view not in repo.views:
            raise ConfigError(f"{args.features}: no view {view!r} (args.{field}); views: {sorted(repo.views)}")
    if args.candidates_store == "online":
        if repo.online_store.type != "redis":
            raise ConfigError(f"args.candidates_store: online needs a Redis online store; {args.features} has "
                              f"online_store.type {repo.online_store.type!r}")
        if args.candidates_view in repo.views:
            raise ConfigError(f"args.candidates_view: {args.candidates_view!r} is a feature view of {args.features}; "
                              "the candidate view needs its own name")
    rules = args.filters
    if rules.max_per_category is not None and rules.category_feature not in repo.views[args.item_view].features:
        raise ConfigError(f"args.filters.category_feature: view {args.item_view!r} of {args.features} has no feature "
                          f"{rules.category_feature!r}")
    if rules.exclude_clicked and (repo.realtime is None or repo.realtime.recent_clicks == 0):
        raise ConfigError(f"args.filters.exclude_clicked needs recent clicks: {args.features} has no `realtime:` block "
                          "with recent_clicks > 0")
    return repo
