"""When something fails under the bot, the user gets one clear sentence and nothing is half-saved."""

from models import engine as engine_module
from tests.botkit import buttons, rows, running_bot
from tests.imagegen import photo_bytes
from tests.telegram_fake import user


async def test_a_failed_download_is_one_sentence_and_nothing_is_stored(trained_copy, fake):
    fake.fail_get_file = True
    async with running_bot(trained_copy.home, fake):
        sent = await fake.send_photo(user(2001, "en"), photo_bytes(0, 1))
        reply = await fake.reply_to(sent)
    assert reply.params["text"] == "I couldn't download the photo; please send it again."
    assert rows(trained_copy.home, "SELECT COUNT(*) FROM predictions")[0][0] == 0


async def test_a_crashed_batch_is_one_sentence_and_the_next_photo_is_answered(trained_copy, fake, monkeypatch):
    """As a CUDA out-of-memory error would: the batch fails, the worker carries on."""
    real_run, crashes = engine_module.Runner.run, []

    def crash_once(self, prepared, **kwargs):
        if not crashes:
            crashes.append(1)
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_run(self, prepared, **kwargs)

    monkeypatch.setattr(engine_module.Runner, "run", crash_once)
    erin = user(2002, "en")
    async with running_bot(trained_copy.home, fake):
        first = await fake.reply_to(await fake.send_photo(erin, photo_bytes(0, 2)))
        second = await fake.reply_to(await fake.send_photo(erin, photo_bytes(0, 3)))
    assert first.params["text"] == "Something went wrong while looking at the photo; please send it once more."
    assert second.params["text"].startswith("배추김치 (baechu-kimchi")


async def test_a_correction_that_cannot_be_written_says_so_after_the_tap_is_answered(trained_copy, fake):
    home = trained_copy.home
    home.corrections.mkdir(parents=True, exist_ok=True)
    (home.corrections / "깍두기").write_text("a file where the class folder should be")
    finn = user(2003, "en")
    async with running_bot(home, fake):
        sent = await fake.send_photo(finn, photo_bytes(0, 4))
        answer = await fake.reply_to(sent)
        reply_message = fake.messages[(finn["id"], answer.result["message_id"])]
        await fake.tap(finn, reply_message, f"set:{sent['message_id']}:4")
        edited = (await fake.wait_for(lambda c: c.method == "editMessageText"))[0]
    answered = [c for c in fake.calls if c.method == "answerCallbackQuery"]
    assert answered and answered[0].at < edited.at  # the tap was answered before the slow work
    assert "I couldn't save that; please try again in a moment." in edited.params["text"]
    assert rows(home, "SELECT COUNT(*) FROM corrections")[0][0] == 0
    assert [b["text"] for b in buttons(edited)[0]] == ["✏️ Fix"]


async def test_correct_outside_the_window_finds_nothing_but_a_reply_still_works(trained_copy, fake):
    gina = user(2004, "en")
    async with running_bot(trained_copy.home, fake, KIMCHI_CORRECTION_WINDOW_HOURS="0"):
        sent = await fake.send_photo(gina, photo_bytes(0, 5))
        await fake.reply_to(sent)
        late = await fake.reply_to(await fake.send_text(gina, "/correct 깍두기"))
        replied = await fake.reply_to(await fake.send_text(gina, "/correct 깍두기", reply_to=sent))
    assert late.params["text"].startswith("I can't find a photo to fix.")
    assert replied.params["text"].startswith("Thanks! Changed 배추김치")
    assert rows(trained_copy.home, "SELECT corrected_label FROM corrections")[0][0] == "깍두기"
