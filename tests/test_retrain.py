"""/retrain end to end through the fake Bot API: a real trainer subprocess, a real registry and SQLite file."""
import asyncio
import json
import os
import re
import signal
import sqlite3

import pytest

from tests.botkit import ADMIN, rows, running_bot, spawn_bot, until
from tests.imagegen import photo_bytes
from tests.modelkit import publish_relabelled
from tests.telegram_fake import user
from training.importer import import_dataset

TINY = ("--arch efficientnet_lite0 --size 64 --presize 160 --epochs 1 --freeze-epochs 1 --bs 16 --workers 0 "
        "--device cpu")
RETRAIN = dict(KIMCHI_TRAIN_ARGS=TINY, KIMCHI_RETRAIN_MIN_PER_CLASS="5", KIMCHI_HOLDOUT_PCT="20",
               KIMCHI_RETRAIN_AUDIT="0")


@pytest.fixture
def world(trained_copy):
    """The session's v1 serving, and its training images imported as the base dataset."""
    import_dataset(trained_copy.data, trained_copy.home.base, presize=160, workers=1)
    return trained_copy


async def trainer_pid(home, timeout: float = 20.0) -> int:
    """The pid the bot recorded for the newest retrain's trainer, once it has one: the trainer runs."""
    return await until(lambda: rows(home, "SELECT pid FROM retrain_runs ORDER BY id DESC LIMIT 1")[0]["pid"],
                       "the retrain recording a trainer pid", timeout, every=0.1)


def training_cli(pid: int) -> bool:
    """Whether `pid` is `kimchi-train` itself: its launcher has armed the parent-death signal and exec'd it
    (`python -m training.cli …`, where the launcher is `python -c …`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return False
    return argv[1:3] == [b"-m", b"training.cli"]


async def correct_some(fake, people, label_of):
    """Each person sends a photo and corrects it with /correct; returns the photo messages."""
    sent = []
    for i, person in enumerate(people):
        msg = await fake.send_photo(person, photo_bytes(i % 4, 700 + i))
        await fake.reply_to(msg)
        fix = await fake.send_text(person, f"/correct {label_of(i)}")
        await fake.reply_to(fix)
        sent.append(msg)
    return sent


# ---------------------------------------------------------------------------------------------
# end to end

async def test_retrain_promotes_a_better_model_and_serves_it_live(world, fake):
    """photos + /correct → /retrain → counts, progress, photos answered meanwhile, one at a time →
    table, confusion PNG, decision by the rule → later replies name the new version."""
    registry = world.registry
    bad = publish_relabelled(registry, "v1")
    registry.promote(bad)  # a confidently wrong model serves: a fresh one must beat it
    admin, people = user(ADMIN, "en"), [user(5000 + i) for i in range(4)]
    async with running_bot(world.home, fake, **{**RETRAIN, "KIMCHI_RETRAIN_AUDIT": "1"}):
        await correct_some(fake, people, lambda i: ("배추김치", "오이소박이", "파김치", "열무김치")[i % 4])
        mark = len(fake.calls)
        await fake.send_text(admin, "/retrain")
        counts = (await fake.wait_for(lambda c: c.method == "sendMessage" and "Training data per class" in
                                      c.params.get("text", ""), timeout=240))[0].params["text"]
        await fake.send_text(admin, "/retrain")
        refused = (await fake.wait_for(lambda c: c.method == "sendMessage" and "already running" in
                                       c.params.get("text", "")))[0]
        during = await fake.send_photo(people[0], photo_bytes(1, 999))
        answered_during = await fake.reply_to(during, timeout=60)
        running_then = rows(world.home, "SELECT status FROM retrain_runs")[0]["status"]
        await fake.send_text(admin, "/retrain status")  # its own reply, not the refusal above that also names #1
        status = (await fake.wait_for(lambda c: c.method == "sendMessage"
                                      and c.params.get("text", "").startswith("Retrain #1: ")))[0]
        decision = (await fake.wait_for(lambda c: c.method == "sendMessage" and (
            "Promoted" in c.params.get("text", "") or "did not promote" in c.params.get("text", "")), timeout=240))[0]
        after = await fake.send_photo(people[1], photo_bytes(2, 1000))
        answer_after = await fake.reply_to(after)
    assert "배추김치:" in counts and "frozen holdout" in counts and "4 from users" in counts
    assert "Audit: audited 124 images" in counts  # the real `kimchi-train audit` ran on base + accepted labels
    assert running_then == "running" and "%" in answered_during.params["text"]
    assert "one at a time" in refused.params["text"]
    assert re.fullmatch(r"Retrain #1: (starting|epoch \d+/\d+) \(\d+ s\)", status.params["text"]), status.params["text"]
    edits = [c for c in fake.calls[mark:] if c.method == "editMessageText" and "epoch" in c.params.get("text", "")]
    assert edits and "▓" in edits[-1].params["text"] and "accuracy" in edits[-1].params["text"]
    table = next(c for c in fake.calls[mark:] if c.method == "sendMessage" and "<pre>" in c.params.get("text", ""))
    assert "macro F1" in table.params["text"] and "per-class F1" in table.params["text"]
    (png,) = [c for c in fake.calls[mark:] if c.method == "sendPhoto" and "Confusion matrix" in c.params["caption"]]
    assert png.files["photo"][:8] == b"\x89PNG\r\n\x1a\n" and len(png.files["photo"]) > 10_000
    (suspects,) = [c for c in fake.calls[mark:] if c.method == "sendPhoto" and "look wrong" in c.params["caption"]]
    assert suspects.files["photo"][:8] == b"\x89PNG\r\n\x1a\n"

    (run,) = rows(world.home, "SELECT * FROM retrain_runs")
    scores = json.loads(run["metrics_json"])
    new, old = scores["candidate"]["f1_macro"], scores["current"]["f1_macro"]
    assert new >= old, "the relabelled v2 is confidently wrong: a fresh model must score higher"
    assert decision.params["text"].startswith("✅ Promoted v3: no worse: ")
    # a holdout of about 25 images is small: decided image by image (models.promotion), and the admin is told
    (paired,) = [f for f in json.loads(run["reason"])["findings"] if f["check"] == "paired"]
    assert paired["passed"] and paired["candidate"] >= paired["current"] and paired["n"] == scores["candidate"]["n"]
    assert f"on the same {paired['n']} holdout photos" in decision.params["text"]
    assert f"the holdout is small ({paired['n']} photos" in decision.params["text"]
    assert run["status"] == "promoted" and run["candidate"] == "v3" and run["baseline"] == bad
    assert run["duration_s"] > 0 and json.loads(run["counts_json"])["corrections"] == 4
    assert registry.current() == "v3"
    assert rows(world.home, "SELECT model_version FROM predictions ORDER BY id DESC LIMIT 1")[0][0] == "v3"
    assert "%" in answer_after.params["text"]


async def test_retrain_keeps_a_worse_model_with_the_reason(world, fake):
    admin = user(ADMIN, "en")
    weak = TINY.replace("--epochs 1 --freeze-epochs 1", "--epochs 0 --freeze-epochs 1 --no-pretrained --base-lr 1e-6")
    async with running_bot(world.home, fake, **{**RETRAIN, "KIMCHI_TRAIN_ARGS": weak}):
        await fake.send_text(admin, "/retrain")
        decision = (await fake.wait_for(lambda c: c.method == "sendMessage" and (
            "Promoted" in c.params.get("text", "") or "did not promote" in c.params.get("text", "")), timeout=240))[0]
    assert "Kept v2 but did not promote it: worse: on the same" in decision.params["text"]
    assert world.registry.current() == "v1" and "v2" in world.registry.versions()
    (run,) = rows(world.home, "SELECT status, decision, reason FROM retrain_runs")
    assert run["status"] == "kept" and run["decision"] == "keep"
    (paired,) = [f for f in json.loads(run["reason"])["findings"] if f["check"] == "paired"]
    assert not paired["passed"] and paired["candidate"] < paired["current"]  # right alone less often than v1


async def test_refusals_cancel_and_a_killed_trainer(world, fake):
    admin, guest = user(ADMIN, "en"), user(5100)
    async with running_bot(world.home, fake, **{**RETRAIN, "KIMCHI_RETRAIN_MIN_PER_CLASS": "1000"}):
        await fake.send_text(admin, "/retrain")
        too_few = (await fake.wait_for(lambda c: "Cannot retrain" in c.params.get("text", "")))[0]
    assert "fewer than 1000" in too_few.params["text"] and "배추김치" in too_few.params["text"]

    async with running_bot(world.home, fake, **RETRAIN):
        await fake.send_text(admin, "/retrain")
        await fake.wait_for(lambda c: "Starting retrain #2" in c.params.get("text", ""))
        await trainer_pid(world.home)  # the cancel stops a trainer, not the gathering before it
        await fake.send_text(admin, "/retrain cancel")
        cancelled = (await fake.wait_for(lambda c: "was cancelled" in c.params.get("text", ""), timeout=60))[0]

        await fake.send_text(admin, "/retrain")
        await fake.wait_for(lambda c: "Starting retrain #3" in c.params.get("text", ""))
        pid = await trainer_pid(world.home)
        os.killpg(pid, signal.SIGKILL)  # as the kernel's OOM killer would
        failed = (await fake.wait_for(lambda c: "The retrain failed" in c.params.get("text", ""), timeout=60))[0]
        still = await fake.send_photo(guest, photo_bytes(0, 1234))
        still_answered = await fake.reply_to(still)
    assert "Retrain #2" in cancelled.params["text"]
    assert "SIGKILL" in failed.params["text"] and "keeps serving" in failed.params["text"]
    assert "%" in still_answered.params["text"]
    statuses = [r["status"] for r in rows(world.home, "SELECT status FROM retrain_runs ORDER BY id")]
    assert statuses == ["refused", "cancelled", "failed"]
    assert world.registry.current() == "v1" and world.registry.versions() == ["v1"]


async def test_promote_and_rollback_swap_live(world, fake):
    admin, guest = user(ADMIN, "en"), user(5200)
    v2 = publish_relabelled(world.registry, "v1")
    async with running_bot(world.home, fake):
        await fake.send_text(admin, f"/promote {v2}")
        promoted = (await fake.wait_for(lambda c: "now serves" in c.params.get("text", "")))[0]
        first = await fake.send_photo(guest, photo_bytes(0, 1300))
        on_v2 = await fake.reply_to(first)
        await fake.send_text(admin, "/rollback")
        rolled = (await fake.wait_for(lambda c: "Rolled back" in c.params.get("text", "")))[0]
        second = await fake.send_photo(guest, photo_bytes(0, 1300))
        on_v1 = await fake.reply_to(second)
    assert promoted.params["text"] == "v2 now serves (was v1)." and rolled.params["text"].startswith("Rolled back to v1")
    versions = [r["model_version"] for r in rows(world.home, "SELECT model_version FROM predictions ORDER BY id")]
    assert versions == ["v2", "v1"]
    assert on_v1.params["text"].startswith("배추김치") and not on_v2.params["text"].startswith("배추김치")


async def test_bot_killed_mid_retrain_leaves_everything_consistent(world, fake, tmp_path):
    """kill -9 of the whole bot mid-run: the trainer dies with it, `current` still serves, only complete
    versions are listed, the database is intact, and the next start marks the run failed."""
    admin = user(ADMIN, "en")
    process = spawn_bot(world.home, fake, tmp_path, **RETRAIN)
    try:
        await fake.wait_for(lambda c: c.method == "setMyCommands", timeout=90)
        await fake.send_text(admin, "/retrain")
        await fake.wait_for(lambda c: "Starting retrain" in c.params.get("text", ""), timeout=60)
        pid = await trainer_pid(world.home)
        await until(lambda: training_cli(pid), "the trainer's start", timeout=30)  # importing or training now
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        for _ in range(100):  # PR_SET_PDEATHSIG: the trainer follows its parent
            if not os.path.exists(f"/proc/{pid}") or b"training.cli" not in open(f"/proc/{pid}/cmdline", "rb").read():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the trainer outlived the bot")
    finally:
        if process.poll() is None:
            process.kill()
    assert rows(world.home, "SELECT status FROM retrain_runs")[0]["status"] == "running"
    async with running_bot(world.home, fake):
        guest = user(5300)
        sent = await fake.send_photo(guest, photo_bytes(0, 1400))
        answer = await fake.reply_to(sent)
    (run,) = rows(world.home, "SELECT status, reason FROM retrain_runs")
    assert run["status"] == "failed" and json.loads(run["reason"])["failure"] == "bot_stopped"
    assert world.registry.current() == "v1" and world.registry.versions() == ["v1"]
    assert not [p for p in world.home.models.iterdir() if p.name.startswith(".staging")]
    con = sqlite3.connect(world.home.database)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert answer.params["text"].startswith("배추김치")
