"""Nobody can stall, relabel or break the bot for others: each row of the hardening review, tried through
the fake Bot API as an outside user would."""
import asyncio
import logging
import os
import sys
import time


from bot.app import main as bot_main
from models.artifact import WEIGHTS
from tests.botkit import ADMIN, ROOT, TOKEN, answered, bot_env, rows, running_bot, spawn_bot, stop_bot
from tests.imagegen import photo_bytes
from tests.modelkit import publish_relabelled
from tests.telegram_fake import user

INVALID = "This button is no longer valid."


async def test_a_long_correction_is_refused_unread_and_others_are_not_held_up(trained_copy, fake):
    mallory, bob = user(3001, "en"), user(3002, "en")
    async with running_bot(trained_copy.home, fake):
        await answered(fake, mallory, photo_bytes(0, 1))
        floods = [await fake.send_text(mallory, "/correct " + "깍" * 4000) for _ in range(3)]
        await fake.send_text(bob, "/start")
        greeting = (await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == bob["id"]))[0]
        refusals = [(await fake.reply_to(m)).params["text"] for m in floods]
    assert greeting.params["text"].startswith("Hello!")
    assert all(r.startswith("That's too long for a kimchi name (40 characters at most)") for r in refusals)
    assert all(len(c.params.get("text", "")) <= 4096 and "깍깍" not in c.params.get("text", "")
               for c in fake.calls if c.method == "sendMessage")
    assert rows(trained_copy.home, "SELECT COUNT(*) FROM corrections")[0][0] == 0


async def test_channel_posts_are_ignored_and_a_senderless_photo_is_only_an_admins_to_fix(trained_copy, fake):
    channel = {"id": -100777, "type": "channel", "title": "kimchi news"}
    stranger, admin = user(3003, "en"), user(ADMIN, "en")
    group = -4242
    async with running_bot(trained_copy.home, fake):
        await fake._push("channel_post", {"message_id": 1, "date": int(time.time()), "chat": channel,
                                          "sender_chat": channel, "photo": []})
        # in a group, posted on behalf of the linked channel: no user of its own
        sent, answer, _ = await answered(fake, {**user(136817688, "en"), "is_bot": True}, photo_bytes(0, 2),
                                         chat_id=group, sender_chat=channel)
        await fake.tap(stranger, answer, f"set:{sent['message_id']}:4")
        refused = (await fake.wait_for(lambda c: c.method == "answerCallbackQuery"))[0]
        await fake.tap(admin, answer, f"set:{sent['message_id']}:4")
        await fake.wait_for(lambda c: c.method == "editMessageText")
        text = await fake.send_text(stranger, "just chatting", chat_id=group)
        edited = {**fake.messages[(stranger["id"], (await fake.send_text(stranger, "/classes"))["message_id"])],
                  "text": "/start", "edit_date": int(time.time())}
        await fake.wait_for(lambda c: c.method == "sendMessage" and "11 kinds" in c.params.get("text", ""))
        await fake._push("edited_message", edited)  # an edit must not re-run a command
        await fake.send_text(stranger, "/start", chat_id=group)
        await fake.wait_for(lambda c: c.method == "sendMessage" and c.params.get("text", "").startswith("Hello"))
    assert refused.params["text"] == "Only the person who sent the photo can fix it."
    (prediction,) = rows(trained_copy.home, "SELECT user_id, chat_id FROM predictions")
    assert prediction["user_id"] is None and prediction["chat_id"] == group
    (correction,) = rows(trained_copy.home, "SELECT user_id, corrected_label FROM corrections")
    assert tuple(correction) == (ADMIN, "깍두기")
    assert not [c for c in fake.calls if int(c.params.get("chat_id", 0) or 0) == channel["id"]]
    replies_to_chatter = [c for c in fake.calls if c.method == "sendMessage"
                          and (c.params.get("reply_parameters") or {}).get("message_id") == text["message_id"]]
    assert replies_to_chatter == []
    greetings = [c for c in fake.calls if c.method == "sendMessage" and c.params.get("text", "").startswith("Hello")]
    assert [int(c.params["chat_id"]) for c in greetings] == [group]  # the group's /start, not the edit


FORGED = ["ok:²", "ok:99999999999", "set:1:99", "fix:1:2", "x:1", "ok:-1", "set:1:٣", "ok:0", "", "ok:1\n",
          "rv:a:1", "rv:l:1:99"]


async def test_forged_callback_data_is_one_short_answer(trained_copy, fake, caplog):
    eve = user(3004, "en")
    async with running_bot(trained_copy.home, fake):
        _, answer, _ = await answered(fake, eve, photo_bytes(0, 3))
        for data in FORGED:
            await fake.tap(eve, answer, data)
        replies = await fake.wait_for(lambda c: c.method == "answerCallbackQuery", count=len(FORGED))
    texts = [r.params["text"] for r in replies]
    assert texts.count(INVALID) == len(FORGED) - 1  # rv:a:1 is well formed: a stranger is told it is not theirs
    assert "Sorry, you can't use this command." in texts
    assert "Traceback" not in caplog.text and rows(trained_copy.home, "SELECT COUNT(*) FROM corrections")[0][0] == 0


async def test_a_flood_of_taps_is_budgeted_and_another_users_correction_goes_through(trained_copy, fake):
    flooder, other = user(3005, "en"), user(3006, "en")
    async with running_bot(trained_copy.home, fake, KIMCHI_ACTION_RATE_LIMIT="10"):
        sent, answer, _ = await answered(fake, flooder, photo_bytes(0, 4))
        mine, _, _ = await answered(fake, other, photo_bytes(0, 5))
        for i in range(40):
            await fake.tap(flooder, answer, f"set:{sent['message_id']}:{i % 11}")
        started = time.monotonic()
        fix = await fake.send_text(other, "/correct 갓김치", reply_to=mine)
        done = await fake.reply_to(fix, timeout=60)
        waited = time.monotonic() - started
        answers = await fake.wait_for(lambda c: c.method == "answerCallbackQuery", count=40, timeout=60)
    print(f"bystander's /correct answered in {waited * 1000:.0f} ms during a 40-tap flood")
    assert done.params["text"].startswith("Thanks! Changed 배추김치")
    slowed = [a for a in answers if a.params.get("text", "").startswith("That's a lot at once")]
    assert len(slowed) >= 30  # 10 actions a minute: the rest were turned away before any work


async def test_one_chats_backlog_does_not_hold_up_another_chats_answer(trained_copy, fake):
    """Telegram's ~30 messages a second are handed out by turns between chats, not first come first served."""
    flooder, bystander = user(3020, "en"), user(3021, "en")
    async with running_bot(trained_copy.home, fake, KIMCHI_ACTION_RATE_LIMIT="0"):
        for _ in range(70):
            await fake.send_text(flooder, "/start")
        await fake.send_text(bystander, "/start")  # after all of them
        await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == flooder["id"],
                            count=70, timeout=30)
    order = [int(c.params["chat_id"]) for c in fake.calls if c.method == "sendMessage"]
    assert order.count(bystander["id"]) == 1
    # the bucket lets ~30 through at once; after that the bystander's turn comes next, not after the other 40
    assert order.index(bystander["id"]) <= 35, order.index(bystander["id"])


async def test_promoting_a_damaged_version_moves_nothing_and_the_bot_can_restart(trained_copy, fake, tmp_path):
    registry = trained_copy.registry
    broken = publish_relabelled(registry, "v1")
    weights = registry.path(broken) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:2048])
    good = publish_relabelled(registry, "v1")
    admin = user(ADMIN, "en")
    async with running_bot(trained_copy.home, fake):
        await fake.send_text(admin, f"/promote {broken}")
        refused = (await fake.wait_for(lambda c: c.params.get("text", "").startswith("Could not serve")))[0]
        await fake.send_text(admin, f"/promote {good}")
        await fake.send_text(admin, "/promote v1")
        await fake.wait_for(lambda c: "now serves" in c.params.get("text", ""), count=2)
        await answered(fake, user(3007, "en"), photo_bytes(0, 6))
    assert f"{broken}" in refused.params["text"] and "v1 keeps serving" in refused.params["text"]
    served = rows(trained_copy.home, "SELECT model_version FROM predictions")[0][0]
    assert served == registry.current()  # what is served is what `current` names, after racing promotes
    env = {**os.environ, **bot_env(trained_copy.home, fake), "PYTHONPATH": str(ROOT)}
    check = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.app", "--check", cwd=tmp_path, env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(check.communicate(), timeout=120)
    assert check.returncode == 0 and "settings ok" in out.decode(), out.decode()[-2000:]


async def test_two_promotes_at_once_leave_served_equal_to_current(trained_copy, fake):
    registry = trained_copy.registry
    v2, v3 = publish_relabelled(registry, "v1"), publish_relabelled(registry, "v1")
    admin = user(ADMIN, "en")
    async with running_bot(trained_copy.home, fake):
        await asyncio.gather(fake.send_text(admin, f"/promote {v2}"), fake.send_text(admin, f"/promote {v3}"))
        await fake.wait_for(lambda c: "now serves" in c.params.get("text", ""), count=2)
        await answered(fake, user(3008, "en"), photo_bytes(0, 7))
    assert rows(trained_copy.home, "SELECT model_version FROM predictions")[0][0] == registry.current()


async def test_a_crash_between_the_correction_file_and_its_row_is_reconciled_at_start(trained_copy, fake, caplog):
    """What kill -9 after the file's rename and before the row's commit leaves behind, and the reverse."""
    home, gus = trained_copy.home, user(3009, "en")
    async with running_bot(home, fake):
        sent, _, _ = await answered(fake, gus, photo_bytes(0, 8))
        await fake.reply_to(await fake.send_text(gus, "/correct 갓김치", reply_to=sent))
    (row,) = rows(home, "SELECT path FROM corrections")
    orphan = home.corrections / "백김치" / ("0" * 64 + ".jpg")  # renamed into place, its row never committed
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(photo_bytes(1, 9))
    staged = home.corrections / ".incoming" / "half-written.jpg"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"\xff\xd8")
    os.unlink(row["path"])  # and a row whose file is gone
    caplog.set_level(logging.WARNING, logger="bot.store")
    async with running_bot(home, fake):
        pass
    assert not orphan.exists() and not staged.exists()
    assert rows(home, "SELECT missing_file FROM corrections")[0][0] == 1
    assert "2 file(s) without a row removed, 1 row(s) without a file flagged" in caplog.text


def test_train_args_cannot_steer_the_retrain_and_the_bot_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("KIMCHI_HOME", str(tmp_path / "home"))
    for value in ("--epochs 1 --holdout /tmp/mine.jsonl", "--models-dir=/tmp/x", "--progress bar", "/tmp/data"):
        monkeypatch.setenv("KIMCHI_TRAIN_ARGS", value)
        assert bot_main(["--check"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kimchi-bot: KIMCHI_TRAIN_ARGS") and err.count("\n") == 1 and "Traceback" not in err


async def test_the_token_is_in_no_log_file_after_a_failed_download(trained_copy, fake, tmp_path):
    fake.fail_get_file = True
    process = spawn_bot(trained_copy.home, fake, tmp_path, KIMCHI_LOG_LEVEL="DEBUG")
    try:
        await fake.wait_for(lambda c: c.method == "setMyCommands", timeout=90)
        sent = await fake.send_photo(user(3010, "en"), photo_bytes(0, 10))
        await fake.reply_to(sent, timeout=30)
    finally:
        await stop_bot(process)
    logs = list(trained_copy.home.logs.glob("*")) + [tmp_path / "bot.out"]
    assert any("download of" in p.read_text(errors="replace") for p in logs)
    secret = TOKEN.split(":", 1)[1]
    assert all(secret not in p.read_text(errors="replace") for p in logs)


def test_a_world_readable_env_file_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    for name in ("TELEGRAM_BOT_TOKEN", "KIMCHI_HOME", "KIMCHI_TRAIN_ARGS"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\nKIMCHI_HOME={tmp_path / 'h'}\nKIMCHI_DEVICE=cpu\n"
                   "TELEGRAM_API_BASE_URL=http://127.0.0.1:9/bot\n")
    env.chmod(0o644)
    caplog.set_level(logging.WARNING)
    bot_main(["--check"])  # whatever the Bot API says, the warning comes first
    assert "can be read by other users" in caplog.text and "chmod 600" in caplog.text
