"""Render a deploy spec into the files under ``cluster/``, check it first, and diff against what is committed.

:func:`render` returns ``{relative path: text}``; nothing is written until every check passed, so a refused
config never leaves half a set of manifests behind.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayml.config import ConfigError
from rayml.deploy import checks, render_k8s, render_ray
from rayml.deploy.spec import DeploySpec, load_deploy_spec

RAY_CLUSTER_FILE = "cluster/ray-cluster.aws.yaml"
K8S_DIR = "cluster/k8s"


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (serveConfigV2, commands) as ``|`` literals so they read as files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(documents: list[dict[str, Any]], header: str) -> str:
    body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
                        for d in documents)
    return header + body


@dataclass(frozen=True)
class Rendered:
    spec: DeploySpec
    files: dict[str, str]  # repository-relative path -> text


def _recommender_auth(serve_raw: dict[str, Any]) -> tuple[str | None, str | None]:
    """(tokens_file, tokens_env) of the recommender apps: where the API tokens Secret must appear."""
    for app in serve_raw.get("applications") or []:
        if app.get("import_path") == checks.RECOMMENDER_IMPORT_PATH:
            auth = (app.get("args") or {}).get("auth") or {}
            if auth.get("enabled"):
                return auth.get("tokens_file"), auth.get("tokens_env", "RAYML_API_TOKENS")
    return None, None


def render(spec_path: str | Path, repo: str | Path) -> Rendered:
    """Check ``spec_path`` and everything it references, then render every file.

    Raises:
        ConfigError: naming the file and key of the first problem (see :mod:`rayml.deploy.checks`).
    """
    repo, spec_path = Path(repo), Path(spec_path)
    spec = load_deploy_spec(spec_path)
    source = spec_path.resolve().relative_to(repo.resolve()).as_posix() if spec_path.resolve().is_relative_to(
        repo.resolve()) else spec_path.name
    _, serve_text, serve_raw = checks.load_serve_config(spec, spec_path, repo)
    serve_needs = checks.serve_needs(serve_raw, spec.serve_config)
    checks.refuse_spot_serving(serve_needs)
    checks.require_groups(spec, spec_path, serve_needs, "the Serve config")
    job_configs = [(job, checks.load_job_config(job, spec_path, repo, i)) for i, job in enumerate(spec.jobs)]
    checks.require_candidate_view(serve_raw, spec.serve_config, job_configs, spec_path)
    job_needs = []
    for job, config in job_configs:
        needs = checks.job_needs(job, config)
        checks.require_groups(spec, spec_path, needs, f"job {job.name!r}")
        job_needs.append(needs)

    tokens_file, tokens_env = _recommender_auth(serve_raw)
    builder = render_k8s.PodBuilder(spec, render_k8s.grace_period_s(serve_raw), tokens_file,
                                    None if tokens_file else tokens_env)
    header = (f"# Rendered by `rayml deploy render` from {source} and {spec.serve_config}.\n"
              "# Do not edit by hand: change the source and render again (a test compares the two).\n")
    files = {
        RAY_CLUSTER_FILE: dump([render_ray.cluster_yaml(spec, tokens_file)], header),
        f"{K8S_DIR}/rayservice.yaml": dump([render_k8s.rayservice(spec, builder, serve_text)], header),
        f"{K8S_DIR}/pdb.yaml": dump([render_k8s.pod_disruption_budget(spec)], header),
        f"{K8S_DIR}/networkpolicy.yaml": dump([render_k8s.network_policy(spec)], header),
    }
    for job, needs in zip(spec.jobs, job_needs, strict=True):
        files[f"{K8S_DIR}/rayjob-{job.name}.yaml"] = dump([render_k8s.rayjob(spec, builder, job, needs)], header)
    return Rendered(spec=spec, files=files)


def diff(rendered: Rendered, repo: str | Path) -> str:
    """A unified diff from the committed files to the rendered ones; empty when they are equal."""
    repo = Path(repo)
    chunks = []
    for rel, text in rendered.files.items():
        path = repo / rel
        old = path.read_text() if path.is_file() else ""
        if old != text:
            chunks.append("".join(difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                                       f"a/{rel} (committed)", f"b/{rel} (rendered)")))
    for path in sorted((repo / K8S_DIR).glob("*.yaml")):
        rel = path.relative_to(repo).as_posix()
        if rel not in rendered.files:
            chunks.append(f"only committed, not rendered (remove it): {rel}\n")
    return "\n".join(chunks)


def write(rendered: Rendered, repo: str | Path) -> list[str]:
    """Write every file that changed; returns their paths."""
    repo, changed = Path(repo), []
    for rel, text in rendered.files.items():
        path = repo / rel
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(rel)
    return changed


__all__ = ["ConfigError", "Rendered", "diff", "render", "write"]
