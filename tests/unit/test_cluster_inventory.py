"""Every tracked file under ``cluster/`` is checked by a test, and this module says which: a new file with no
checker, or a checker that was renamed away, fails here. It also holds the checks of the files no other module
reads: ``cluster/README.md`` (what it names exists), the wheelhouse's ``.gitignore`` and the rehearsal build script."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayml.cli import app
from tests.conftest import REPO
from tests.image import dockerfile as df

pytestmark = pytest.mark.unit

HERE = "tests/unit/test_cluster_inventory.py"
MANIFESTS = "tests/unit/test_deploy_manifests.py"
RENDER = "tests/unit/test_deploy_render.py::test_committed_files_equal_the_rendered_ones"
IMAGE = "tests/unit/test_container_image.py"
DASHBOARDS = "tests/unit/test_monitor_dashboards.py"
SCRAPE = ("tests/integration/test_dashboard_scrape.py::"
          "test_every_series_and_label_the_dashboard_and_rules_read_is_on_rays_metrics_endpoint")

# Tracked path (or glob) under cluster/ → the tests that check it, through its schema or its own tool.
CHECKED_BY: dict[str, tuple[str, ...]] = {
    "cluster/ray-cluster.aws.yaml": (
        f"{MANIFESTS}::test_ray_cluster_yaml_validates_against_rays_own_schema",  # Ray's ray-schema.json
        f"{MANIFESTS}::test_ray_cluster_yaml_spot_gpu_and_head_node_types",
        f"{MANIFESTS}::test_ray_cluster_yaml_has_the_haproxy_ingress_env_and_no_secret_values",
        RENDER,
    ),
    "cluster/k8s/rayservice.yaml": (
        f"{MANIFESTS}::test_rayservice_validates_against_the_kuberay_crd",
        f"{MANIFESTS}::test_serve_config_v2_is_the_production_serve_config_and_rays_schema_accepts_it",
        f"{MANIFESTS}::test_core_objects_validate_with_kubernetes_validate",  # its Service and pod templates
        RENDER,
    ),
    "cluster/k8s/rayjob-*.yaml": (
        f"{MANIFESTS}::test_rayjobs_validate_against_the_kuberay_crd",
        f"{MANIFESTS}::test_core_objects_validate_with_kubernetes_validate",  # their pod templates
        f"{MANIFESTS}::test_rayjobs_clean_up_retry_and_run_the_batch_entrypoints",
        RENDER,
    ),
    "cluster/k8s/pdb.yaml": (
        f"{MANIFESTS}::test_core_objects_validate_with_kubernetes_validate",
        f"{MANIFESTS}::test_pdb_covers_the_serve_workers",
        RENDER,
    ),
    "cluster/k8s/networkpolicy.yaml": (
        f"{MANIFESTS}::test_core_objects_validate_with_kubernetes_validate",
        f"{MANIFESTS}::test_only_the_http_port_is_exposed_and_the_network_policy_matches",
        RENDER,
    ),
    "cluster/Dockerfile": (
        f"{IMAGE}::test_hadolint_passes",
        f"{IMAGE}::test_nothing_unpinned_and_no_latest",
        f"{IMAGE}::test_dockerignore_lets_in_only_what_the_image_copies",
        "tests/image/test_image.py::test_image_serves_its_health_endpoint_and_stops_within_the_bound",  # built, run
    ),
    "cluster/docker/healthcheck.py": (
        f"{IMAGE}::test_healthcheck_script_exit_codes",
        "tests/e2e/test_image_entrypoint.py::test_image_entrypoint_serves_passes_its_healthcheck_and_drains_on_sigterm",
    ),
    "cluster/docker/lock.py": (f"{IMAGE}::test_committed_locks_equal_what_lock_py_derives_from_the_venv",),
    "cluster/docker/requirements.lock": (
        f"{IMAGE}::test_committed_locks_equal_what_lock_py_derives_from_the_venv",  # lock.py --check
        f"{IMAGE}::test_locks_are_exact_pins_covering_the_runtime_dependencies",
    ),
    "cluster/docker/requirements.cpu.lock": (
        f"{IMAGE}::test_committed_locks_equal_what_lock_py_derives_from_the_venv",
        f"{IMAGE}::test_locks_are_exact_pins_covering_the_runtime_dependencies",
    ),
    # lock.py --check leaves it out (`--gpu` resolves it against PyPI): its pins and their invariants are checked.
    "cluster/docker/requirements.gpu.lock": (f"{IMAGE}::test_locks_are_exact_pins_covering_the_runtime_dependencies",),
    "cluster/docker/rehearsal-build.sh": (
        f"{HERE}::test_rehearsal_build_script_parses_and_builds_what_the_image_test_runs",
        "tests/image/test_image.py::test_image_serves_its_health_endpoint_and_stops_within_the_bound",  # runs it
    ),
    "cluster/docker/wheelhouse/.gitignore": (f"{HERE}::test_wheelhouse_keeps_only_its_gitignore_in_git",),
    "cluster/grafana/METRICS.md": (f"{DASHBOARDS}::test_metrics_md_lists_the_contract_with_ray_names", SCRAPE),
    "cluster/grafana/rayml-dashboard.json": (
        f"{DASHBOARDS}::test_dashboard_is_importable",
        f"{DASHBOARDS}::test_dashboard_uses_only_contract_metrics",
        SCRAPE,
    ),
    "cluster/prometheus/rayml-alerts.yaml": (
        f"{DASHBOARDS}::test_promtool_check_rules",
        f"{DASHBOARDS}::test_promtool_rule_unit_tests",
        f"{DASHBOARDS}::test_rules_use_only_contract_metrics_and_recorded_series",
        SCRAPE,
    ),
    "cluster/README.md": (
        f"{HERE}::test_cluster_readme_names_only_what_exists",
        f"{HERE}::test_cluster_readme_table_covers_every_file_and_its_checkers_are_real",
    ),
}
OPT_IN_MARKS = ("image", "scale")  # deselected by pyproject's addopts: `make test` never runs them

# What cluster/README.md's "checked by" column names → the tests that do that check (one per kind of file).
README_TOOLS: dict[str, tuple[str, ...]] = {
    "ray-schema.json": (f"{MANIFESTS}::test_ray_cluster_yaml_validates_against_rays_own_schema",),
    "KubeRay CRD": (f"{MANIFESTS}::test_rayservice_validates_against_the_kuberay_crd",
                    f"{MANIFESTS}::test_rayjobs_validate_against_the_kuberay_crd"),
    "kubernetes-validate": (f"{MANIFESTS}::test_core_objects_validate_with_kubernetes_validate",),
    "ServeDeploySchema": (f"{MANIFESTS}::test_serve_config_v2_is_the_production_serve_config_and_rays_schema_accepts_it",),
    "hadolint": (f"{IMAGE}::test_hadolint_passes",),
    "Grafana queries against a scrape": (SCRAPE,),
    "promtool": (f"{DASHBOARDS}::test_promtool_check_rules",),
    "test_deploy_manifests.py": (f"{MANIFESTS}::test_ray_cluster_yaml_spot_gpu_and_head_node_types",),
}


def tracked_cluster_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "cluster"], cwd=REPO, capture_output=True, text=True, check=True)
    files = out.stdout.split()
    assert files, "git ls-files cluster lists nothing: run the tests from a git checkout"
    return files


@cache
def module_tree(path: str) -> ast.Module:
    return ast.parse((REPO / path).read_text(), filename=path)


def node_problem(node: str) -> str | None:
    """Why a test node id does not name a test of this repository, or None."""
    path, _, name = node.partition("::")
    name = name.split("[", 1)[0]
    if not (REPO / path).is_file():
        return f"{node}: no file {path}"
    tests = {f.name for f in module_tree(path).body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    if not name.startswith("test") or name not in tests:
        return f"{node}: {path} defines no test function {name!r}"
    return None


def opt_in(node: str) -> bool:
    """Whether the node's module is marked with a mark that `make test` deselects."""
    path = node.partition("::")[0]
    for statement in module_tree(path).body:
        if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in statement.targets):
            source = ast.unparse(statement.value)
            return any(f"mark.{mark}" in source for mark in OPT_IN_MARKS)
    return False


def checkers(path: str) -> tuple[str, ...]:
    return tuple(node for pattern, nodes in CHECKED_BY.items() if fnmatch.fnmatchcase(path, pattern) for node in nodes)


def test_every_cluster_file_is_mapped_to_a_test_that_make_test_runs():
    files = tracked_cluster_files()
    unmapped = [f for f in files if not checkers(f)]
    assert not unmapped, f"files under cluster/ that no test checks (add a checker and map it in CHECKED_BY): {unmapped}"
    stale = [pattern for pattern in CHECKED_BY if not any(fnmatch.fnmatchcase(f, pattern) for f in files)]
    assert not stale, f"CHECKED_BY maps paths that are not tracked under cluster/: {stale}"
    only_opt_in = [f for f in files if all(opt_in(node) for node in checkers(f))]
    assert not only_opt_in, f"checked only by tests `make test` deselects ({OPT_IN_MARKS}): {only_opt_in}"


def test_every_mapped_checker_exists():
    nodes = {node for nodes in [*CHECKED_BY.values(), *README_TOOLS.values()] for node in nodes}
    problems = sorted(p for p in map(node_problem, nodes) if p is not None)
    assert not problems, "\n".join(problems)


def test_a_renamed_checker_is_caught():
    assert node_problem(f"{IMAGE}::test_hadolint_passes") is None
    assert "defines no test function 'test_hadolint_passed'" in str(node_problem(f"{IMAGE}::test_hadolint_passed"))
    assert "no file" in str(node_problem("tests/unit/test_gone.py::test_x"))
    assert "defines no test function 'tracked_cluster_files'" in str(node_problem(f"{HERE}::tracked_cluster_files"))
    assert opt_in("tests/image/test_image.py::test_image_serves_its_health_endpoint_and_stops_within_the_bound")
    assert not opt_in(SCRAPE)


# --- cluster/README.md ----------------------------------------------------------------------------------------------

README = REPO / "cluster" / "README.md"
# Names the README uses that are neither paths nor commands, and the module that must define each.
README_NAMES = {"ServeDeploySchema": "ray.serve.schema"}
runner = CliRunner()


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), re.M))


def rayml_problem(words: list[str]) -> str | None:
    """Why ``rayml <words>`` is not a command line of the typer CLI (its subcommands and options), or None."""
    command = [w for w in words if not w.startswith("-")]
    options = [w.split("=", 1)[0] for w in words if w.startswith("--")]
    result = runner.invoke(app, [*command, "--help"], terminal_width=400)
    if result.exit_code != 0:
        return f"`rayml {' '.join(command)}` is not a rayml command (`--help` exits {result.exit_code})"
    unknown = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", result.output)]
    return f"`rayml {' '.join(command)}` has no option {unknown}" if unknown else None


def ray_problem(words: list[str]) -> str | None:
    """Why ``ray <words>`` is not a command line of Ray's own CLI, or None."""
    from ray.scripts.scripts import cli

    name, *rest = words
    command = cli.commands.get(name)
    if command is None:
        return f"`ray {name}` is not a ray command"
    options = {opt for param in command.params for opt in param.opts}
    unknown = [w for w in rest if w.startswith("-") and w.split("=", 1)[0] not in options]
    return f"`ray {name}` has no option {unknown}" if unknown else None


def path_exists(token: str) -> bool:
    """A path as the README writes it: relative to cluster/ or to the repository, a glob, or one of Ray's files."""
    import ray

    roots = (REPO / "cluster", REPO, Path(ray.__file__).parent / "autoscaler")
    return any(any(root.glob(token.rstrip("/"))) for root in roots)


def readme_problems(text: str) -> list[str]:
    """What a cluster/README.md text names that does not exist: links, paths, make targets, rayml and ray command
    lines, the README sections it refers to, and the library names it cites."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+://", target) and not (README.parent / target.split("#")[0]).exists():
            problems.append(f"link {target}: no such file")
    for token in re.findall(r"`([^`]+)`", text):
        words = token.split()
        if words[0] == "make":
            problems += [f"`{token}`: no make target {t!r}" for t in words[1:] if t not in make_targets()]
        elif words[0] == "rayml":
            problems += [p for p in [rayml_problem(words[1:])] if p]
        elif words[0] == "ray":
            problems += [p for p in [ray_problem(words[1:])] if p]
        elif token in README_NAMES:
            module = __import__(README_NAMES[token], fromlist=[token])
            if not hasattr(module, token):
                problems.append(f"`{token}`: not in {README_NAMES[token]}")
        elif len(words) == 1 and ("/" in token or "." in token or token[0].isupper()):
            if not path_exists(token):
                problems.append(f"`{token}`: no such path (relative to cluster/ or the repository)")
        else:
            problems.append(f"`{token}`: neither a path, a command line nor a name in README_NAMES")
    headings = (REPO / "README.md").read_text()
    for section in re.findall(r'\(README, "([^"]+)"\)', text):
        if not re.search(rf"^#+ .*{re.escape(section)}", headings, re.M):
            problems.append(f'README section "{section}": no such heading in README.md')
    return problems


def test_cluster_readme_names_only_what_exists():
    assert readme_problems(README.read_text()) == []


def test_the_readme_check_catches_what_does_not_exist():
    broken = ('[x](../docs/nope.md) `k8s/rayservce.yaml` `make demo-dat` `rayml deploy rendr` '
              '`rayml deploy render --chek` `ray strat` `ray start --hed` `SomeSchema` (README, "no such section")')
    assert readme_problems(broken) == [
        "link ../docs/nope.md: no such file",
        "`k8s/rayservce.yaml`: no such path (relative to cluster/ or the repository)",
        "`make demo-dat`: no make target 'demo-dat'",
        "`rayml deploy rendr` is not a rayml command (`--help` exits 2)",
        "`rayml deploy render` has no option ['--chek']",
        "`ray strat` is not a ray command",
        "`ray start` has no option ['--hed']",
        "`SomeSchema`: no such path (relative to cluster/ or the repository)",
        'README section "no such section": no such heading in README.md',
    ]
    assert readme_problems("`make demo` `rayml deploy render --check` `ray start --head` `docker/`") == []


def readme_rows() -> list[tuple[list[str], str]]:
    """The README table: (paths of the row, relative to cluster/; its "checked by" cell)."""
    rows = []
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[3]))
    return rows


def test_cluster_readme_table_covers_every_file_and_its_checkers_are_real():
    """Each tracked file has a row, and each tool a row's "checked by" cell names checks a file of that row."""
    rows = readme_rows()
    assert rows, "no table in cluster/README.md"
    covered = [f"cluster/{p.rstrip('/')}" + ("/*" if p.endswith("/") else "") for paths, _ in rows for p in paths]
    missing = [f for f in tracked_cluster_files() if f != "cluster/README.md"
               and not any(fnmatch.fnmatchcase(f, c) for c in covered)]
    assert not missing, f"cluster/README.md's table has no row for {missing}"
    for paths, checked_by in rows:
        files = [f for f in tracked_cluster_files() for p in paths
                 if fnmatch.fnmatchcase(f, f"cluster/{p.rstrip('/')}" + ("/*" if p.endswith("/") else ""))]
        tools = [tool for tool in README_TOOLS if tool in checked_by]
        assert tools, f"row {paths}: {checked_by!r} names no checker README_TOOLS knows"
        for tool in tools:
            assert any(set(README_TOOLS[tool]) & set(checkers(f)) for f in files), (
                f"row {paths} says {tool!r} checks it, but CHECKED_BY maps no file of the row to {README_TOOLS[tool]}")


# --- cluster/docker/ ------------------------------------------------------------------------------------------------

def git_check_ignore(path: str, *options: str) -> subprocess.CompletedProcess:
    # --no-index: the rules alone decide, whether or not the path is tracked
    return subprocess.run(["git", "check-ignore", "--no-index", *options, path], cwd=REPO, capture_output=True,
                          text=True)


def test_wheelhouse_keeps_only_its_gitignore_in_git():
    """Local wheels (docs/deploy-image.md: an offline build) never reach git, yet the folder exists in every clone
    and the image build copies it from the context."""
    for probe in ("cluster/docker/wheelhouse/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl",
                  "cluster/docker/wheelhouse/nested/any.tar.gz"):
        result = git_check_ignore(probe, "-v")
        assert result.returncode == 0, f"{probe} is not ignored"
        assert result.stdout.startswith("cluster/docker/wheelhouse/.gitignore:"), result.stdout  # by its own rule
    itself = "cluster/docker/wheelhouse/.gitignore"
    assert git_check_ignore(itself).returncode == 1, f"{itself} ignores itself"  # 1: not ignored
    rule = git_check_ignore(itself, "-v").stdout  # -v also prints the negation that keeps it
    assert rule.startswith(f"{itself}:") and ":!.gitignore\t" in rule, rule
    assert "cluster/docker/wheelhouse/.gitignore" in tracked_cluster_files()
    wheels_stage = next(s for s in df.parse()[1] if s.name == "wheels")
    assert df.copies(wheels_stage).get("/wheelhouse") == "cluster/docker/wheelhouse"
    assert not df.ignored("cluster/docker/wheelhouse/x.whl"), ".dockerignore keeps the wheelhouse out of the build"


def test_rehearsal_build_script_parses_and_builds_what_the_image_test_runs():
    """`bash -n` (the script itself runs only under `pytest -m image`, as root with podman), and its defaults agree
    with the Dockerfile, the wheelhouse and the image test."""
    script = REPO / "cluster" / "docker" / "rehearsal-build.sh"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert "-f cluster/Dockerfile" in text and '"$REPO/cluster/docker/wheelhouse/"' in text
    image = re.search(r"^IMAGE=\$\{IMAGE:-([^}]+)\}$", text, re.M)
    assert image, "no IMAGE default"
    version = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert version and image.group(1) == f"localhost/rayml:{version.group(1)}-cpu"
    test_image = (REPO / "tests" / "image" / "test_image.py").read_text()
    assert f'os.environ.get("RAYML_IMAGE", "{image.group(1)}")' in test_image, "the image test runs another tag"
