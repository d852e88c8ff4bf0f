"""The bot says "not kimchi", and users can teach it so (issue 21): the answer and its two buttons, 🚫 under
every ✏️, `/correct 김치아님` under each correction policy, labelling mode, /metrics and the retrain report."""
import hashlib
import io
from types import SimpleNamespace

import pytest
from PIL import Image

from bot.admin import TelegramNotifier
from bot.handlers import answer_text, keyboard_for
from bot.keyboards import asked_pair, parse_tap
from bot.metrics import BotMetrics
from bot.supervisor import Outcome, RunStatus
from models.labels import CLASS_NAMES, NOT_KIMCHI, NOT_KIMCHI_CLASS, by_name
from models.promotion import Decision
from models.protocol import DoneEvent, HoldoutScore, ScoredEvent, TrainResult, parse
from models.registry import Registry
from models.types import Prediction
from tests.botkit import ADMIN, answered, buttons, rows, running_bot
from tests.imagegen import other_photo_bytes, photo_bytes
from tests.telegram_fake import user

LOOSE = dict(KIMCHI_ACTION_RATE_LIMIT="0", KIMCHI_CORRECTIONS_PER_DAY="0")
CLASSES_EN = ["배추김치 (baechu-kimchi)", "오이소박이 (oi-sobagi)", "파김치 (pa-kimchi)", "열무김치 (yeolmu-kimchi)",
              "깍두기 (kkakdugi)", "부추김치 (buchu-kimchi)", "무생채 (musaengchae)", "백김치 (baek-kimchi)",
              "나박김치 (nabak-kimchi)", "갓김치 (gat-kimchi)", "총각김치 (chonggak-kimchi)"]


def flat(call) -> list[dict]:
    return [b for row in buttons(call) for b in row]


async def after_tap(fake, who: dict, message: dict, data: str, method: str = "editMessageText"):
    """`who` taps `data` under the bot's `message`; the bot's next `method` call about that message (for
    answerCallbackQuery: the next alert)."""
    before = {id(c) for c in fake.calls}

    def follows(c) -> bool:
        if id(c) in before or c.method != method:
            return False
        if method == "answerCallbackQuery":
            return bool(c.params.get("show_alert"))
        return int(c.params.get("message_id", 0)) == message["message_id"]

    await fake.tap(who, message, data)
    (call,) = await fake.wait_for(follows)
    return call


async def command(fake, who: dict, text: str, **kw) -> str:
    """`who` sends `text`; the text of the bot's next message in that chat."""
    sent = await fake.send_text(who, text, **kw)
    (reply,) = await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == who["id"]
                                   and c.result["message_id"] > sent["message_id"])
    return reply.params["text"]


def corrections(home) -> dict[str, dict]:
    """The corrections rows by the sha256 of their photo."""
    return {r["sha256"]: dict(r) for r in rows(home, "SELECT * FROM corrections")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# a version with the open-set check

async def test_a_photo_that_is_no_kimchi_is_told_so_agreed_with_or_fixed(calibrated_copy, fake):
    home = calibrated_copy.home
    alice, carol, bob = user(2101, "ko"), user(2102, "ko"), user(2103, "en")
    rings, checker = other_photo_bytes("rings", 0), other_photo_bytes("checker", 1)
    # trusted policy, everyone seasoned: one ✅ waits, a second person's ✅ on the same photo is agreement
    async with running_bot(home, fake, **LOOSE, KIMCHI_CORRECTION_POLICY="trusted", KIMCHI_AGREE_MIN_DAYS="0",
                           KIMCHI_AGREE_MIN_DECIDED="0") as app:
        svc = app.bot_data["services"]
        judged = {name: await svc.classifier.classify(data) for name, data in (("rings", rings), ("checker", checker))}
        # the open-set score says so: the 4-class head alone would have named a kimchi
        assert all(p.far and p.not_kimchi and p.answer == NOT_KIMCHI and p.label in CLASS_NAMES
                   for p in judged.values()), judged

        sent, answer, call = await answered(fake, alice, rings)
        closest, p = judged["rings"].closest
        assert call.params["text"] == f"김치가 아닌 것 같아요 🤔 김치라면 가장 가까운 건 {closest}({p * 100:.0f}%)예요"
        mid = sent["message_id"]
        assert [[(b["text"], b["callback_data"]) for b in row] for row in buttons(call)] == [
            [("✅ 맞아요", f"ok:{mid}"), ("✏️ 김치예요", f"fix:{mid}")]]
        pending = await after_tap(fake, alice, answer, f"ok:{mid}")
        assert pending.params["text"].endswith("✓ 고마워요! 김치 아님(으)로 저장했어요. 확인되면 학습에 쓸게요.")

        again, answer2, _ = await answered(fake, carol, rings)  # the same photo, a second person agrees
        agreed = await after_tap(fake, carol, answer2, f"ok:{again['message_id']}")
        assert agreed.params["text"].endswith("✓ 고마워요! 맞다고 저장했어요. ✓")
        standing = {u["id"]: await svc.ledger.standing(u["id"]) for u in (alice, carol)}

        sent3, answer3, call3 = await answered(fake, bob, checker)
        closest, p = judged["checker"].closest
        assert call3.params["text"] == (f"I don't think this is kimchi 🤔 If it is, the closest kind is "
                                        f"{closest} ({by_name(closest).roman}) at {p * 100:.0f}%.")
        mid3 = sent3["message_id"]
        assert [b["text"] for b in flat(call3)] == ["✅ Right", "✏️ It is kimchi"]
        opened = await after_tap(fake, bob, answer3, f"fix:{mid3}", "editMessageReplyMarkup")
        assert [b["text"] for b in flat(opened)] == [*CLASSES_EN, "🚫 Not kimchi"]
        assert buttons(opened)[-1] == [{"text": "🚫 Not kimchi", "callback_data": f"set:{mid3}:11"}]
        # forged taps: the A/B question never offers not_kimchi, and there is no label after it
        for forged in (f"ask:{mid3}:{NOT_KIMCHI_CLASS.id}", f"set:{mid3}:12"):
            alert = await after_tap(fake, bob, answer3, forged, "answerCallbackQuery")
            assert alert.params["text"] == "This button is no longer valid."
        fixed = await after_tap(fake, bob, answer3, f"set:{mid3}:4")
        assert fixed.params["text"].endswith("✓ Saved as 깍두기 (kkakdugi), thanks; it will be used once it's confirmed.")
        exposition = app.bot_data["metrics"].exposition().decode()

    predicted = {r["sha256"]: r["label"] for r in rows(home, "SELECT sha256, label FROM predictions")}
    assert predicted == {sha(rings): NOT_KIMCHI, sha(checker): NOT_KIMCHI}  # the answer, not the head's class
    confirmations = rows(home, "SELECT * FROM corrections WHERE sha256=? ORDER BY user_id", (sha(rings),))
    assert [(r["user_id"], r["corrected_label"], r["predicted_label"], r["source"], r["status"]) for r in confirmations] \
        == [(alice["id"], NOT_KIMCHI, NOT_KIMCHI, "confirm", "accepted"),
            (carol["id"], NOT_KIMCHI, NOT_KIMCHI, "confirm", "accepted")]
    assert (home.corrections / NOT_KIMCHI / f"{sha(rings)}.jpg").is_file()  # a negative for the next retrain
    assert all(s.accepted == 0 for s in standing.values())  # a ✅ on the model's own answer earns no trust
    fix = corrections(home)[sha(checker)]
    assert (fix["corrected_label"], fix["predicted_label"], fix["status"]) == ("깍두기", NOT_KIMCHI, "pending")
    assert 'kimchi_not_kimchi_answers_total{by="score"} 3.0' in exposition
    assert 'kimchi_not_kimchi_answers_total{by="class"} 0.0' in exposition


def test_a_model_trained_with_negatives_answers_not_kimchi_by_its_class_and_never_asks_about_it():
    """The head's own not_kimchi (a version trained with negatives): the same sentence and buttons; the A/B
    question is never about not_kimchi, nor under a not-kimchi answer."""
    by_class = Prediction(NOT_KIMCHI, 0.52, ((NOT_KIMCHI, 0.52), ("깍두기", 0.41), ("배추김치", 0.07)), "v3")
    assert answer_text(by_class, 0.6, "ko") == "김치가 아닌 것 같아요 🤔 김치라면 가장 가까운 건 깍두기(41%)예요"
    alone = Prediction(NOT_KIMCHI, 1.0, ((NOT_KIMCHI, 1.0),), "v3")
    assert answer_text(alone, 0.6, "en") == "I don't think this is kimchi 🤔"
    close = ((NOT_KIMCHI, 0.45), ("깍두기", 0.44), ("배추김치", 0.11))
    far_but_close = Prediction("깍두기", 0.45, (("깍두기", 0.45), ("배추김치", 0.44)), "v3", openset=2.0, threshold=1.0)
    kimchi_then_none = Prediction("깍두기", 0.45, (("깍두기", 0.45), (NOT_KIMCHI, 0.44)), "v3")
    for p in (Prediction(NOT_KIMCHI, 0.45, close, "v3"), far_but_close, kimchi_then_none):
        assert asked_pair(p, 0.2) is None, p
    for p in (by_class, far_but_close):
        assert [b.text for row in keyboard_for(p, 5, 0.2, "ko").inline_keyboard for b in row] == ["✅ 맞아요", "✏️ 김치예요"]
    assert asked_pair(Prediction("깍두기", 0.45, (("깍두기", 0.45), ("배추김치", 0.44)), "v3"), 0.2) == ("깍두기", "배추김치")
    assert parse_tap("set:5:11").class_id == NOT_KIMCHI_CLASS.id
    assert parse_tap("set:5:12") is None and parse_tap("ask:5:11") is None


# ---------------------------------------------------------------------------------------------
# a version published before the check, under each correction policy

SAVED = {  # (policy, who) -> what the user reads after /correct 김치아님, and the row's status
    ("open", "plain"): ("→ 김치 아님(으)로 고쳐서 저장했어요. ✓", "accepted"),
    ("trusted", "plain"): ("김치 아님(으)로 저장했어요. 확인되면 학습에 쓸게요.", "pending"),
    ("trusted", "trusted"): ("→ 김치 아님(으)로 고쳐서 저장했어요. ✓", "accepted"),
    ("review", "plain"): ("김치 아님(으)로 저장했어요. 확인되면 학습에 쓸게요.", "pending"),
    ("review", "admin"): ("→ 김치 아님(으)로 고쳐서 저장했어요. ✓", "accepted"),
}


@pytest.mark.parametrize("policy", ["open", "trusted", "review"])
async def test_correct_not_kimchi_passes_through_the_policy(policy, trained_copy, fake):
    home = trained_copy.home
    people = {"plain": user(2201, "ko"), "trusted": user(2202, "ko"), "admin": user(ADMIN, "ko")}
    cases = [who for (pol, who) in SAVED if pol == policy]
    async with running_bot(home, fake, **LOOSE, KIMCHI_CORRECTION_POLICY=policy,
                           KIMCHI_TRUSTED_IDS=str(people["trusted"]["id"])) as app:
        said, photos = {}, {}
        for i, who in enumerate(cases):
            data = other_photo_bytes("stripes", 10 + i)
            if i == 0:  # no open-set check in this version: a photo of stripes gets a kimchi name
                p = await app.bot_data["services"].classifier.classify(data)
                assert p.openset is None and not p.not_kimchi and p.answer in CLASS_NAMES
            sent, _, call = await answered(fake, people[who], data)
            assert not call.params["text"].startswith("김치가 아닌")
            said[who] = await command(fake, people[who], "/correct 김치아님", reply_to=sent)
            photos[who] = sha(data)
        if policy == "open":  # every alias names the same label, and the answer says it in words
            for alias in ("김치 아님", "아님", "not kimchi", "none", "NOT_KIMCHI"):
                assert "김치 아님" in await command(fake, people["plain"], f"/correct {alias}")
            usage = await command(fake, people["plain"], "/correct")
            assert "🚫 김치가 아니면: /correct 김치아님" in usage
    saved = corrections(home)
    for who in cases:
        text, status = SAVED[(policy, who)]
        assert text in said[who], (who, said[who])
        row = saved[photos[who]]
        assert (row["corrected_label"], row["status"]) == (NOT_KIMCHI, status), who
        assert (home.corrections / NOT_KIMCHI / f"{photos[who]}.jpg").is_file()


async def test_the_no_button_under_a_kimchi_answer_saves_not_kimchi(trained_copy, fake):
    home, erin = trained_copy.home, user(2301, "ko")
    data = photo_bytes(0, 41)
    async with running_bot(home, fake, **LOOSE):
        sent, answer, call = await answered(fake, erin, data)
        mid = sent["message_id"]
        assert call.params["text"].startswith("배추김치 — ")
        assert [b["text"] for b in flat(call)] == ["✅ 맞아요", "✏️ 고치기"]
        opened = await after_tap(fake, erin, answer, f"fix:{mid}", "editMessageReplyMarkup")
        no = flat(opened)[-1]
        assert (no["text"], no["callback_data"]) == ("🚫 김치 아님", f"set:{mid}:11") and len(flat(opened)) == 12
        saved = await after_tap(fake, erin, answer, no["callback_data"])
        classes = await command(fake, erin, "/classes")
    assert saved.params["text"].endswith("✓ 고마워요! 배추김치 → 김치 아님(으)로 고쳐서 저장했어요. ✓")
    row = corrections(home)[sha(data)]
    assert (row["corrected_label"], row["predicted_label"], row["status"]) == (NOT_KIMCHI, "배추김치", "accepted")
    assert classes.splitlines()[-1] == "🚫 김치가 아니면: /correct 김치아님"


async def test_labelling_mode_offers_not_kimchi(home, fake):
    gina = user(2401, "en")
    data = other_photo_bytes("cross", 3)
    async with running_bot(home, fake, **LOOSE):
        sent, answer, call = await answered(fake, gina, data)
        assert "collecting labels" in call.params["text"]
        assert [b["text"] for b in flat(call)] == [*CLASSES_EN, "🚫 Not kimchi"]
        saved = await after_tap(fake, gina, answer, f"set:{sent['message_id']}:11")
    assert saved.params["text"].endswith("✓ Thanks! Saved as Not kimchi. ✓")
    row = corrections(home)[sha(data)]
    assert (row["corrected_label"], row["predicted_label"], row["source"]) == (NOT_KIMCHI, None, "label")


# ---------------------------------------------------------------------------------------------
# the retrain report

def result(metrics: dict) -> TrainResult:
    """A run's result as the bot reads it from the trainer's lines."""
    score = HoldoutScore(version="v2", n=20, accuracy=0.9, precision_macro=0.9, recall_macro=0.9, f1_macro=0.9,
                         per_class_f1={"배추김치": 0.9, NOT_KIMCHI: 0.8})
    done = parse(DoneEvent(version="v2", path="/x/v2", kept_epoch=1, train_time_s=3.0, metrics=metrics).to_json())
    return TrainResult.from_events([done, ScoredEvent(n=20, candidate=score)])


class FakeBot:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_message(self, chat_id, text, **kw):
        self.sent.append(("message", text))

    async def send_photo(self, chat_id, photo, caption="", **kw):
        assert photo.read(8) == b"\x89PNG\r\n\x1a\n"
        self.sent.append(("photo", caption))


async def test_the_retrain_report_shows_the_open_set_figures_and_histogram(tmp_path):
    figures = {"accuracy": 0.9, "openset_kept": 0.95, "openset_caught": 0.8125, "openset_right_kind": 0.9,
               "openset_threshold": 0.25}
    registry = Registry(tmp_path / "models")
    report = registry.path("v2") / "report"
    report.mkdir(parents=True)
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    (report / "openset.png").write_bytes(png.getvalue())
    bot = FakeBot()
    app = SimpleNamespace(bot=bot, bot_data={"metrics": BotMetrics(), "services": SimpleNamespace(registry=registry)})
    run = SimpleNamespace(id=1, chat_id=7, lang="en", audit=None,
                          training_set=SimpleNamespace(train_counts={"배추김치": 30}, corrections=0, left_out={}))
    for metrics, line in ((figures, "not-kimchi check: kimchi kept 95.0%, negatives caught 81.2%, right kind 90.0%"),
                          ({**figures, "openset_caught": None},
                           "not-kimchi check: kimchi kept 95.0%, negatives caught -, right kind 90.0%"),
                          ({"accuracy": 0.9}, None)):
        bot.sent.clear()
        if line is None:  # a version without the check: no line, and no histogram
            (report / "openset.png").unlink()
        await TelegramNotifier(app).finished(run, Outcome(RunStatus.PROMOTED, 5.0, result=result(metrics),
                                                          decision=Decision(True, ())))
        table = bot.sent[0][1]
        photos = [caption for kind, caption in bot.sent if kind == "photo"]
        if line is None:
            assert "not-kimchi check" not in table and photos == []
        else:
            assert line in table
            assert photos == ["Not-kimchi score of v2: kimchi against negatives"]
