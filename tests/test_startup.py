"""Start-up against a Bot API that is unreachable, rejects the token, or has another consumer: one sentence
on stderr, exit status 2, no traceback, and nothing taken from the other consumer."""
from __future__ import annotations

import asyncio
import subprocess

from telegram.error import NetworkError, TimedOut

from bot.app import main as bot_main
from bot.settings import Settings
from bot.startup import explain, reason
from tests.botkit import TOKEN, bot_env, free_port, one_sentence, spawn_bot

BOT = "kimchi-bot: "  # how its one sentence starts


async def start_in_thread(home, fake, monkeypatch, capsys, *argv: str, **extra: str) -> tuple[int, str, str]:
    """`kimchi-bot [argv]` in-process (its own event loop, in a thread), with the fake's settings:
    (exit status, stdout, stderr)."""
    for name, value in bot_env(home, fake, **extra).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(home.root)
    code = await asyncio.wait_for(asyncio.to_thread(bot_main, list(argv)), 120)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_unreachable_api_is_one_sentence_and_exit_2(home, fake, tmp_path):
    """The real `python -m bot.app`, pointed at a port where nothing listens."""
    port = free_port()  # nothing listens there
    process = spawn_bot(home, fake, tmp_path, TELEGRAM_API_BASE_URL=f"http://127.0.0.1:{port}/bot")
    try:
        code = await asyncio.to_thread(process.wait, 120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    output = (tmp_path / "bot.out").read_text()
    line = one_sentence(output, BOT)
    assert code == 2, output
    assert f"Cannot reach the Bot API at http://127.0.0.1:{port}/bot (connection refused)" in line
    assert TOKEN not in output


async def test_rejected_token_is_one_sentence_and_exit_2(home, fake, monkeypatch, capsys):
    fake.failures["getMe"] = (401, "Unauthorized")
    code, _, err = await start_in_thread(home, fake, monkeypatch, capsys)
    assert code == 2
    assert "Telegram rejected TELEGRAM_BOT_TOKEN (401 Unauthorized)" in one_sentence(err, BOT)
    assert TOKEN not in err
    code, _, err = await start_in_thread(home, fake, monkeypatch, capsys, "--check")
    assert code == 2 and "401" in one_sentence(err, BOT)
    assert {c.method for c in fake.calls} == {"getMe"}  # nothing else was tried


async def test_another_poller_is_a_409_sentence(home, fake, monkeypatch, capsys):
    fake.failures["getUpdates"] = (409, "Conflict: terminated by other getUpdates request; make sure that only "
                                        "one bot instance is running")
    code, _, err = await start_in_thread(home, fake, monkeypatch, capsys)
    assert code == 2
    line = one_sentence(err, BOT)
    assert "Another program is already polling Telegram with this token (409 Conflict" in line
    assert "stop the other" in line
    assert not [c for c in fake.calls if c.method in ("deleteWebhook", "setMyCommands")]  # stopped before starting


async def test_a_webhook_set_while_polling_is_named_and_kept(home, fake, monkeypatch, capsys):
    fake.webhook = {"url": "https://other.example.com/hook"}
    code, _, err = await start_in_thread(home, fake, monkeypatch, capsys)
    assert code == 2
    line = one_sentence(err, BOT)
    assert "A webhook is set for this bot (https://other.example.com/hook)" in line and "deleteWebhook" in line
    assert fake.webhook == {"url": "https://other.example.com/hook"}  # not silently deleted
    assert not [c for c in fake.calls if c.method == "getUpdates"]


async def test_check_calls_get_me_after_settings_and_model(home, fake, monkeypatch, capsys):
    code, out, _ = await start_in_thread(home, fake, monkeypatch, capsys, "--check")
    assert code == 0
    assert "settings ok" in out and "Bot API ok: @kimchi_test_bot" in out
    assert [c.method for c in fake.calls] == ["getMe", "getWebhookInfo"]  # no getUpdates: a running bot is left alone
    code, _, err = await start_in_thread(home, fake, monkeypatch, capsys, "--check", KIMCHI_WEBHOOK_URL="https://x.org/tg")
    assert code == 2 and "KIMCHI_WEBHOOK_SECRET must be set" in one_sentence(err, BOT)


def test_reasons_in_a_few_words(tmp_path):
    settings = Settings.load(environ={"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(tmp_path)}, env_file=None)
    dns = NetworkError("httpx.ConnectError: [Errno -3] Temporary failure in name resolution")
    assert reason(dns) == "DNS lookup failed"
    refused = NetworkError("httpx.ConnectError: All connection attempts failed")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert reason(refused) == "connection refused"
    assert reason(TimedOut()) == "timed out"
    assert explain(dns, settings).startswith("Cannot reach the Bot API at https://api.telegram.org/bot (DNS lookup")
    bad_gateway = NetworkError("Bad Gateway")  # an answer from a proxy, not a failed connection
    assert "did not answer the start-up check as expected: Bad Gateway" in explain(bad_gateway, settings)
