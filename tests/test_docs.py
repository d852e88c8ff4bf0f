"""The README stays true: every setting, every command, the deploy example and CI's test command."""
import subprocess
from pathlib import Path

from bot.settings import SETTINGS, Settings, read_env_file
from training.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_setting_with_its_default():
    for name, (default, _) in SETTINGS.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, name
        assert (f"`{default}`" in row) if default else ("(none)" in row or "(required)" in row), row


def test_readme_shows_every_kimchi_train_command():
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in commands:
        assert f"kimchi-train {command}" in README, command


def test_deploy_env_example_is_valid(tmp_path):
    values = read_env_file(ROOT / "deploy" / "env.example")
    values["KIMCHI_HOME"] = str(tmp_path)
    values["TELEGRAM_BOT_TOKEN"] = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"
    settings = Settings.load(environ=values, env_file=None)
    assert settings.admin_ids == frozenset({11111111})


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    awk = script.split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    extracted = subprocess.run(["bash", "-c", f"{awk} README.md"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    block = README.split("<!-- test-command -->", 1)[1].split("```")[1].strip().removeprefix("bash").strip()
    assert extracted == block == "pip install '.[test]' && python -m pytest"
