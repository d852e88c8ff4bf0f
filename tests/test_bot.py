"""The bot end to end: real PTB over real HTTP to a fake Bot API on 127.0.0.1, a real SQLite file, real images."""
import asyncio
import io
import re
import signal

import numpy as np
from PIL import Image


from bot.app import main as bot_main
from models.labels import CLASS_NAMES
from tests.botkit import ADMIN, TOKEN, buttons, rows, running_bot, spawn_bot
from tests.imagegen import draw, encode, photo_bytes
from tests.telegram_fake import user

PERCENT = re.compile(r"\d+%")


async def test_photo_gets_label_confidence_and_keyboard(trained_copy, fake):
    alice = user(1001, "ko")
    async with running_bot(trained_copy.home, fake):
        sent = await fake.send_photo(alice, photo_bytes(0, 1), thumb=photo_bytes(3, 9))
        reply = await fake.reply_to(sent)
    text = reply.params["text"]
    assert text.startswith("배추김치 — ") and PERCENT.search(text)
    (row,) = buttons(reply)
    assert [b["text"] for b in row] == ["✅ 맞아요", "✏️ 고치기"]
    assert all(len(b["callback_data"].encode()) <= 64 for b in row)
    got = [c.params["file_id"] for c in fake.calls if c.method == "getFile"]
    assert got == [sent["photo"][-1]["file_id"]]  # the largest size, not the thumbnail
    (pred,) = rows(trained_copy.home, "SELECT * FROM predictions")
    assert pred["label"] == "배추김치" and pred["model_version"] == "v1" and pred["reply_message_id"]


async def test_english_and_unsure_answers_show_top_three(trained_copy, fake):
    bob = user(1002, "en")
    async with running_bot(trained_copy.home, fake, KIMCHI_CONFIDENCE_THRESHOLD="1.0"):
        sent = await fake.send_photo(bob, photo_bytes(2, 3))
        reply = await fake.reply_to(sent)
    lines = reply.params["text"].splitlines()
    assert lines[0].startswith("파김치 (pa-kimchi, green onion kimchi) — ")
    assert lines[1] == "I'm not sure. My best guesses:"
    assert len(lines) == 5 and lines[2].startswith("1. 파김치")


async def test_documents_stickers_videos_and_text(trained_copy, fake):
    carol = user(1003, "ko")
    async with running_bot(trained_copy.home, fake):
        png = await fake.send_document(carol, encode(draw(1, (200, 150)), "PNG"), "image/png", "kimchi.png")
        pdf = await fake.send_document(carol, b"%PDF-1.4 not an image", "application/pdf", "menu.pdf")
        huge = await fake.send_document(carol, b"\xff\xd8", "image/jpeg", "big.jpg", size=25 * 1024 * 1024)
        heic = await fake.send_document(carol, b"....", "image/heic", "phone.heic")
        sticker = await fake.user_message(carol, sticker={"file_id": "s1", "file_unique_id": "us1", "type": "regular",
                                                          "width": 512, "height": 512, "is_animated": False,
                                                          "is_video": False})
        video = await fake.user_message(carol, video={"file_id": "v1", "file_unique_id": "uv1", "width": 640,
                                                      "height": 480, "duration": 3})
        hello = await fake.send_text(carol, "안녕하세요")
        whole = photo_bytes(0)
        broken = await fake.send_photo(carol, whole[: len(whole) // 2])
        replies = {name: (await fake.reply_to(msg)).params["text"] if name != "hello" else None
                   for name, msg in dict(png=png, pdf=pdf, huge=huge, heic=heic, sticker=sticker, video=video,
                                         broken=broken, hello=hello).items()}
        hint = await fake.wait_for(lambda c: c.method == "sendMessage" and "/correct" in c.params.get("text", "")
                                   and "사진" in c.params.get("text", ""))
    assert replies["png"].startswith("오이소박이 — ")
    assert "사진 파일만" in replies["pdf"]
    assert "20MB" in replies["huge"]
    assert "형식" in replies["heic"]
    assert "스티커" in replies["sticker"]
    assert "동영상" in replies["video"]
    assert "손상" in replies["broken"]
    assert hint
    downloaded = {c.params["file_id"] for c in fake.calls if c.method == "getFile"}
    assert downloaded == {png["document"]["file_id"], broken["photo"][-1]["file_id"]}  # nothing else fetched


async def test_album_gets_every_photo_answered(trained_copy, fake):
    dave = user(1004)
    async with running_bot(trained_copy.home, fake):
        album = [await fake.send_photo(dave, photo_bytes(i % 4, 20 + i), media_group_id="album-1") for i in range(4)]
        answers = [await fake.reply_to(m) for m in album]
    assert len({a.params["reply_parameters"]["message_id"] for a in answers}) == 4
    for answer in answers:  # each a real answer with a label and a confidence, not the generic error
        assert PERCENT.search(answer.params["text"]) and answer.params["text"].split(" —")[0] in CLASS_NAMES


async def test_correct_command_paths(trained_copy, fake):
    erin = user(1005, "ko")
    home = trained_copy.home
    async with running_bot(home, fake):
        nothing = await fake.send_text(erin, "/correct 깍두기")
        assert "찾지 못했어요" in (await fake.reply_to(nothing)).params["text"]

        first = await fake.send_photo(erin, photo_bytes(0, 5))
        answer = await fake.reply_to(first)
        bot_message = fake.messages[(erin["id"], answer.result["message_id"])]
        by_alias = await fake.send_text(erin, "/correct kkakdugi", reply_to=bot_message)
        assert "배추김치 → 깍두기" in (await fake.reply_to(by_alias)).params["text"]

        typo = await fake.send_text(erin, "/correct 깍뚜기")
        assert "혹시 깍두기?" in (await fake.reply_to(typo)).params["text"]
        unknown = await fake.send_text(erin, "/correct pizza")
        unknown_text = (await fake.reply_to(unknown)).params["text"]
        assert "모르는 김치" in unknown_text and "총각김치" in unknown_text
        usage = await fake.send_text(erin, "/correct")
        assert "예: /correct 깍두기" in (await fake.reply_to(usage)).params["text"]

        second = await fake.send_photo(erin, photo_bytes(1, 6))
        await fake.reply_to(second)
        latest = await fake.send_text(erin, "/correct 백김치")  # no reply: the latest prediction
        assert "백김치" in (await fake.reply_to(latest)).params["text"]
        to_photo = await fake.send_text(erin, "/correct 갓김치", reply_to=first)  # replying to the photo itself
        assert "깍두기 → 갓김치" in (await fake.reply_to(to_photo)).params["text"]

    corrections = rows(home, "SELECT * FROM corrections ORDER BY prediction_id")
    assert len(corrections) == 2  # the repeat updated the first row
    first_row, second_row = corrections
    assert first_row["corrected_label"] == "갓김치" and first_row["predicted_label"] == "배추김치"
    assert first_row["model_version"] == "v1" and first_row["user_id"] == erin["id"] and first_row["confirmed"] == 0
    assert first_row["file_unique_id"] and len(first_row["sha256"]) == 64
    assert second_row["corrected_label"] == "백김치"
    saved = sorted(p.relative_to(home.corrections).as_posix() for p in home.corrections.rglob("*.jpg"))
    assert saved == sorted([f"갓김치/{first_row['sha256']}.jpg", f"백김치/{second_row['sha256']}.jpg"])
    # the photo as it was sent, re-encoded clean (no metadata) at its own size: the same picture
    kept = Image.open(home.corrections / "갓김치" / f"{first_row['sha256']}.jpg")
    sent_image = Image.open(io.BytesIO(photo_bytes(0, 5)))
    assert kept.format == "JPEG" and kept.size == sent_image.size and not kept.getexif()
    assert np.abs(np.asarray(kept, np.int16) - np.asarray(sent_image.convert("RGB"), np.int16)).mean() < 3


async def test_inline_keyboard_correction_and_confirmation(trained_copy, fake):
    frank, mallory = user(1006, "ko"), user(6666, "ko")
    home = trained_copy.home
    async with running_bot(home, fake):
        sent = await fake.send_photo(frank, photo_bytes(2, 7))
        answer = await fake.reply_to(sent)
        message = answer.result
        fix_data = buttons(answer)[0][1]["callback_data"]
        await fake.tap(mallory, message, fix_data)
        refused = await fake.wait_for(lambda c: c.method == "answerCallbackQuery" and c.params.get("show_alert"))
        await fake.tap(frank, message, fix_data)
        opened = (await fake.wait_for(lambda c: c.method == "editMessageReplyMarkup"))[0]
        choices = [b for row in buttons(opened) for b in row]
        assert len(choices) == 12 and all(len(b["callback_data"].encode()) <= 64 for b in choices)
        assert choices[-1]["text"] == "🚫 김치 아님"  # the 11 classes, then not kimchi
        nabak = next(b for b in choices if b["text"] == "나박김치")
        await fake.tap(frank, message, nabak["callback_data"])
        edited = (await fake.wait_for(lambda c: c.method == "editMessageText"))[0]

        other = await fake.send_photo(frank, photo_bytes(3, 8))
        other_answer = await fake.reply_to(other)
        await fake.tap(frank, other_answer.result, buttons(other_answer)[0][0]["callback_data"])
        await fake.wait_for(lambda c: c.method == "editMessageText", count=2)
    assert "사진을 보낸 분만" in refused[0].params["text"]
    assert "나박김치" in edited.params["text"] and edited.params["text"].startswith(answer.params["text"])
    by_prediction = {r["corrected_label"]: r for r in rows(home, "SELECT * FROM corrections")}
    assert by_prediction["나박김치"]["confirmed"] == 0 and by_prediction["나박김치"]["predicted_label"] == "파김치"
    confirmed = [r for r in by_prediction.values() if r["confirmed"] == 1]
    assert len(confirmed) == 1 and confirmed[0]["corrected_label"] == confirmed[0]["predicted_label"] == "열무김치"


async def test_admin_commands_and_polite_refusals(trained_copy, fake):
    admin, guest = user(ADMIN, "en"), user(1007, "ko")
    async with running_bot(trained_copy.home, fake):
        sent = await fake.send_photo(guest, photo_bytes(0, 11))
        await fake.reply_to(sent)
        fix = await fake.send_text(guest, "/correct 깍두기")
        await fake.reply_to(fix)
        replies = {}
        for who, command in ((admin, "/stats"), (admin, "/model"), (guest, "/stats"), (guest, "/model"),
                             (guest, "/retrain"), (guest, "/promote v1"), (guest, "/rollback")):
            msg = await fake.send_text(who, command)
            replies[(who["id"], command)] = (await fake.wait_for(
                lambda c, m=msg: c.method == "sendMessage" and int(c.params["chat_id"]) == m["chat"]["id"]
                and c.result["message_id"] > m["message_id"]))[0].params["text"]
    stats = replies[(ADMIN, "/stats")]
    assert "predictions: 1" in stats and "깍두기 (kkakdugi): 1" in stats and "wrong on corrected photos: 100%" in stats
    assert "model v1" in stats and "accuracy" in replies[(ADMIN, "/model")]
    for command in ("/stats", "/model", "/retrain", "/promote v1", "/rollback"):
        assert replies[(guest["id"], command)] == "이 명령은 사용할 수 없어요."


async def test_cold_start_labelling_mode(home, fake):
    gina = user(1008, "ko")
    async with running_bot(home, fake):
        sent = await fake.send_photo(gina, photo_bytes(4, 12))
        answer = await fake.reply_to(sent)
        choices = [b for row in buttons(answer) for b in row]
        await fake.tap(gina, answer.result, next(b for b in choices if b["text"] == "깍두기")["callback_data"])
        await fake.wait_for(lambda c: c.method == "editMessageText")
        again = await fake.send_photo(gina, photo_bytes(1, 13))
        await fake.reply_to(again)
        fix = await fake.send_text(gina, "/correct 오이소박이")
        saved = (await fake.reply_to(fix)).params["text"]
    assert "라벨을 모으는 중" in answer.params["text"] and len(choices) == 12 and choices[-1]["text"] == "🚫 김치 아님"
    assert "오이소박이" in saved
    labels = sorted(r["corrected_label"] for r in rows(home, "SELECT * FROM corrections"))
    assert labels == ["깍두기", "오이소박이"]
    assert all(r["predicted_label"] is None for r in rows(home, "SELECT * FROM corrections"))


async def test_fifty_users_at_once_none_lost(trained_copy, fake):
    people = [user(2000 + i) for i in range(50)]
    async with running_bot(trained_copy.home, fake, KIMCHI_QUEUE_LIMIT="256"):
        sent = await asyncio.gather(*(fake.send_photo(p, photo_bytes(i % 4, 100 + i)) for i, p in enumerate(people)))
        answers = await asyncio.gather(*(fake.reply_to(m, timeout=120) for m in sent))
    assert all(PERCENT.search(a.params["text"]) for a in answers)
    assert len(rows(trained_copy.home, "SELECT id FROM predictions")) == 50


async def test_rate_limit_and_busy_are_polite(trained_copy, fake):
    hana = user(1009)
    async with running_bot(trained_copy.home, fake, KIMCHI_RATE_LIMIT="2"):
        texts = []
        for i in range(3):
            msg = await fake.send_photo(hana, photo_bytes(0, 30 + i))
            texts.append((await fake.reply_to(msg)).params["text"])
    assert PERCENT.search(texts[0]) and PERCENT.search(texts[1]) and "1분에 2장" in texts[2]

    crowd = [user(3000 + i) for i in range(24)]
    async with running_bot(trained_copy.home, fake, KIMCHI_QUEUE_LIMIT="1", KIMCHI_MAX_WAIT_MS="50"):
        sent = await asyncio.gather(*(fake.send_photo(p, photo_bytes(0, 60 + i)) for i, p in enumerate(crowd)))
        answers = [(await fake.reply_to(m, timeout=60)).params["text"] for m in sent]
    assert any("밀려 있어요" in t for t in answers) and any(PERCENT.search(t) for t in answers)


async def test_corrections_survive_a_restart(trained_copy, fake):
    ivy, admin = user(1010), user(ADMIN, "en")
    async with running_bot(trained_copy.home, fake):
        sent = await fake.send_photo(ivy, photo_bytes(0, 40))
        await fake.reply_to(sent)
        fix = await fake.send_text(ivy, "/correct 무생채")
        await fake.reply_to(fix)
    async with running_bot(trained_copy.home, fake):
        await fake.send_text(admin, "/stats")
        text = (await fake.wait_for(lambda c: c.method == "sendMessage" and "predictions" in c.params.get("text", "")))[0]
        again = await fake.send_text(ivy, "/correct 백김치")  # still finds the photo after the restart
        moved = (await fake.reply_to(again)).params["text"]
    assert "무생채 (musaengchae): 1" in text.params["text"]
    assert "무생채 → 백김치" in moved
    (row,) = rows(trained_copy.home, "SELECT * FROM corrections")
    assert row["corrected_label"] == "백김치"
    assert (trained_copy.home.corrections / "백김치" / f"{row['sha256']}.jpg").is_file()
    assert not (trained_copy.home.corrections / "무생채" / f"{row['sha256']}.jpg").exists()


def test_startup_errors_are_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("TELEGRAM_BOT_TOKEN", "KIMCHI_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert bot_main([]) == 2
    assert "@BotFather" in capsys.readouterr().err
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "not-a-token")
    assert bot_main([]) == 2
    assert "does not look like a bot token" in capsys.readouterr().err
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("KIMCHI_HOME", str(blocker))
    assert bot_main([]) == 2
    err = capsys.readouterr().err
    assert "cannot be used" in err and "Traceback" not in err
    (tmp_path / ".env").write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\nKIMCHI_HOME={tmp_path / 'h'}\nKIMCHI_DEVICE=tpu\n")
    monkeypatch.delenv("KIMCHI_HOME")
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN")
    assert bot_main(["--check"]) == 2
    assert "KIMCHI_DEVICE must be one of auto, cpu, cuda" in capsys.readouterr().err


async def test_sigterm_finishes_photos_in_flight_and_exits_zero(trained_copy, fake, tmp_path):
    """kimchi-bot as a process: photos in flight when SIGTERM arrives are still answered, exit status 0."""
    people = [user(4000 + i) for i in range(6)]
    process = spawn_bot(trained_copy.home, fake, tmp_path, KIMCHI_MAX_WAIT_MS="300")
    try:
        await fake.wait_for(lambda c: c.method == "setMyCommands", timeout=90)
        sent = [await fake.send_photo(p, photo_bytes(i % 4, 200 + i)) for i, p in enumerate(people)]
        await fake.wait_for(lambda c: c.method == "getFile", count=len(people), timeout=30)
        process.send_signal(signal.SIGTERM)
        answers = [await fake.reply_to(m, timeout=30) for m in sent]
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = (tmp_path / "bot.out").read_text()
    assert code == 0, stderr[-2000:]
    assert all(PERCENT.search(a.params["text"]) for a in answers)
    assert len(rows(trained_copy.home, "SELECT * FROM predictions")) == len(people)
    log_text = (trained_copy.home.logs / "kimchi-bot.log").read_text()
    assert TOKEN not in log_text and TOKEN not in stderr and "database closed" in log_text
