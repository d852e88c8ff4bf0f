"""The README stays true: every setting, every command, the deploy example and CI's test command."""
import re
import subprocess
from pathlib import Path

from bot.settings import Settings
from training.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def settings_table() -> list[str]:
    """The README's settings table as the declarations in bot/settings.py write it, row by row."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for field in Settings.model_fields.values():
        default = ("(required)" if field.alias == "TELEGRAM_BOT_TOKEN" else f"`{field.default}`" if field.default
                   else "(none)")
        rows.append(f"| `{field.alias}` | {default} | {field.description} |")
    return rows


def test_readme_settings_table_is_the_declarations():
    lines = README.splitlines()
    first = lines.index("| setting | default | meaning |")
    table = lines[first:lines.index("", first)]
    for expected, written in zip(settings_table(), table):
        assert written == expected, f"the README's row should read:\n{expected}"
    assert len(table) == len(settings_table()), table[len(settings_table()):] or "rows missing at the end"


def test_readme_shows_every_kimchi_train_command():
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in commands:
        assert f"kimchi-train {command}" in README, command


def test_deploy_env_example_is_valid_with_every_example_switched_on(tmp_path):
    example = (ROOT / "deploy" / "env.example").read_text(encoding="utf-8")
    named = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.MULTILINE)
    assert set(named) <= {field.alias for field in Settings.model_fields.values()}, named
    environment = {"KIMCHI_HOME": str(tmp_path), "TELEGRAM_BOT_TOKEN": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"}
    settings = Settings.load(environ=environment, env_file=ROOT / "deploy" / "env.example")  # the environment wins
    assert settings.admin_ids == frozenset({11111111}) and settings.home.root == tmp_path and not settings.webhook_mode
    switched_on = tmp_path / ".env"
    switched_on.write_text(re.sub(r"^#\s*(?=[A-Z][A-Z0-9_]*=)", "", example, flags=re.MULTILINE), encoding="utf-8")
    settings = Settings.load(environ=environment, env_file=switched_on)
    assert settings.webhook_mode and settings.local_mode and settings.max_download_mb == 100
    assert settings.train_args == ("--arch", "efficientnet_lite0", "--epochs", "3")


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    awk = script.split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    extracted = subprocess.run(["bash", "-c", f"{awk} README.md"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    block = README.split("<!-- test-command -->", 1)[1].split("```")[1].strip().removeprefix("bash").strip()
    assert extracted == block == "pip install '.[test]' && python -m pytest"
