"""Settings: each variable declared once, a bad value refused in one sentence that names it, the token never
printed, and KIMCHI_TRAIN_ARGS read by the trainer's own recipe parser before the bot starts."""
from __future__ import annotations

import logging

import pytest

from bot.app import main as bot_main
from bot.settings import Settings
from models.errors import KimchiError
from models.recipe_flags import check_recipe_args
from tests.botkit import TOKEN, refused
from training.cli import build_parser

SECRET = "s3cret-webhook_token"
ACCEPTS_ANY_TEXT = {"TELEGRAM_API_BASE_URL", "TELEGRAM_API_FILE_URL", "KIMCHI_HOME", "KIMCHI_WEBHOOK_SECRET",
                    "KIMCHI_PRIVACY_CONTACT", "KIMCHI_PRIVACY_URL"}


def load(tmp_path, env_file=None, **values: str) -> Settings:
    return Settings.load(environ={"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(tmp_path), **values},
                         env_file=env_file)


def test_every_checked_variable_refuses_a_bad_value_in_one_sentence_naming_it(tmp_path):
    unchecked = set()
    for field in Settings.model_fields.values():
        sentences = []
        for bad in ("x", "99999999999", "--epochs x"):
            try:
                load(tmp_path, **{field.alias: bad})
            except KimchiError as err:
                sentences.append(str(err))
        if not sentences:
            unchecked.add(field.alias)
        for sentence in sentences:
            assert sentence.startswith(f"{field.alias} ") and sentence.endswith(".") and "\n" not in sentence, sentence
            assert "Input should" not in sentence and TOKEN not in sentence, sentence  # not pydantic's report
    assert unchecked == ACCEPTS_ANY_TEXT


def test_defaults_are_checked_like_values_and_typed(tmp_path):
    settings = load(tmp_path)
    assert (settings.confidence_threshold, settings.rate_limit, settings.max_pixels) == (0.6, 10, 40_000_000)
    assert settings.retrain_audit is True and settings.local_mode is False and settings.train_args == ()
    assert settings.listen_address is None and settings.user_quota_bytes == 50_000_000
    assert settings.max_download_bytes == 20 * 1024 * 1024 and settings.admin_ids == frozenset()


def test_the_token_and_the_webhook_secret_never_print(tmp_path, caplog):
    settings = load(tmp_path, KIMCHI_WEBHOOK_URL="https://bot.example.com/tg", KIMCHI_WEBHOOK_SECRET=SECRET)
    caplog.set_level(logging.INFO)
    logging.getLogger("test").info("settings: %s %r", settings, settings)
    for shown in (repr(settings), str(settings), settings.model_dump_json(), caplog.text):
        assert TOKEN not in shown and TOKEN.split(":")[1] not in shown and SECRET not in shown, shown
    assert settings.token.get_secret_value() == TOKEN and settings.webhook_secret.get_secret_value() == SECRET


def test_the_environment_wins_over_the_env_file_and_an_unreadable_line_is_named(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"export TELEGRAM_BOT_TOKEN={TOKEN}\nKIMCHI_DEVICE=cpu  # a comment\n"
                   "KIMCHI_TRAIN_ARGS=\"--preset cpu-fast --bs '8'\"\nKIMCHI_RATE_LIMIT=3\nSOMETHING_ELSE=1\n")
    settings = Settings.load(environ={"KIMCHI_HOME": str(tmp_path), "KIMCHI_RATE_LIMIT": "0"}, env_file=env)
    assert (settings.device, settings.rate_limit) == ("cpu", 0)
    assert settings.train_args == ("--preset", "cpu-fast", "--bs", "8")
    env.write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\nKIMCHI_DEVICE cpu\n")
    with pytest.raises(KimchiError, match=r"\.env:2 is not a KEY=VALUE line"):
        Settings.load(environ={}, env_file=env)


@pytest.mark.parametrize("args", ["--epochs 2 --bs 8", "--preset cpu-fast --arch resnet18 --channels-last on",
                                  "--epochs x", "--mixed-precision fp8", "--no-pretrained=1", "--epochs"])
def test_the_bot_reads_train_args_as_the_trainer_does(args):
    def trainer_accepts() -> bool:
        try:
            build_parser().parse_args(["train", *args.split()])
        except SystemExit:
            return False
        return True

    try:
        check_recipe_args(args.split())
        bot_accepts = True
    except ValueError:
        bot_accepts = False
    assert bot_accepts == trainer_accepts()


def test_train_args_outside_the_recipe_or_with_a_bad_value_stop_the_bot_before_it_starts(tmp_path, monkeypatch,
                                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("KIMCHI_HOME", str(tmp_path / "home"))
    for value, needle in (("--epochs x", "invalid int value: 'x'"), ("--gpus 2", "KIMCHI_TRAIN_GPUS"),
                          ("--arhc resnet18", "not '--arhc'"), ("--epochs 1 --cache /tmp", "not '--cache'")):
        monkeypatch.setenv("KIMCHI_TRAIN_ARGS", value)
        refused(capsys, bot_main, ["--check"], "KIMCHI_TRAIN_ARGS", needle, program="kimchi-bot: ")
    assert not (tmp_path / "home").exists()  # refused before anything was made


def test_a_missing_token_is_named_by_its_variable(tmp_path):
    """No TELEGRAM_BOT_TOKEN at all (the default fails its check): the sentence names the variable."""
    with pytest.raises(KimchiError) as err:
        Settings.load(environ={"KIMCHI_HOME": str(tmp_path)}, env_file=None)
    assert str(err.value).startswith("TELEGRAM_BOT_TOKEN is not set: open Telegram")
