"""The retrain supervisor without Telegram: a fake trainer script that prints protocol events, a recording
notifier, and the real store, registry and engine."""
import asyncio
import json
import sys
import textwrap

import pytest

from bot.serving import Serving
from bot.settings import Settings
from bot.store import Store
from bot.supervisor import Failure, RetrainRefused, RetrainSupervisor, Refusal, RunStatus
from bot.ledger import Ledger
from models.artifact import WEIGHTS
from models.engine import Classifier, EngineConfig
from models.protocol import (AuditedEvent, DoneEvent, EpochEvent, ErrorEvent, HoldoutScore, ScoredEvent, Stage, StageEvent,
                             StartEvent)
from tests.botkit import ADMIN, TOKEN, rows
from tests.imagegen import draw
from tests.modelkit import publish_relabelled


class Recorder:
    """A notifier that remembers what it was told."""

    def __init__(self) -> None:
        self.events, self.outcomes, self.counted = [], [], []

    async def counts(self, run) -> None:
        self.counted.append(run.training_set)

    async def progress(self, run, event) -> None:
        self.events.append(event)

    async def finished(self, run, outcome) -> None:
        self.outcomes.append(outcome)


class ScriptedSupervisor(RetrainSupervisor):
    """Runs a small Python script in place of `kimchi-train train`."""

    script = ""

    def command(self, tset):
        return [sys.executable, "-c", self.script]

    def audit_command(self, items_file, out_dir):
        return [sys.executable, "-c", self.audit_script]

    audit_script = "raise SystemExit(3)"


def trainer(*events, sleep: float = 0.0, exit_code: int = 0, extra: str = "") -> str:
    lines = "\n".join(f"print({e.to_json()!r}, flush=True)" for e in events)
    return textwrap.dedent(f"""
        import os, signal, sys, time
        print("fastai chatter that is not an event", flush=True)
        print('{{"event": "epoch", "epoch": "bad"}}', flush=True)
        {extra}
        time.sleep({sleep})
    """) + lines + f"\nsys.exit({exit_code})\n"


def score(version: str, f1: float) -> HoldoutScore:
    return HoldoutScore(version, 6, f1, f1, f1, f1, {"배추김치": f1, "깍두기": f1}, 0, None, {"배추김치": 3, "깍두기": 3})


def events_for(candidate: HoldoutScore, current: HoldoutScore | None) -> list:
    return [StartEvent(arch="efficientnet_lite0", classes=("깍두기", "배추김치"), n_train=8, n_valid=2, total=2),
            EpochEvent(epoch=1, total=2, phase="frozen", train_loss=1.0, valid_loss=0.9, metrics={"accuracy": 0.5}),
            EpochEvent(epoch=2, total=2, phase="unfrozen", train_loss=0.5, valid_loss=0.4, metrics={"accuracy": 0.9}),
            StageEvent(stage=Stage.SCORING),
            ScoredEvent(n=6, candidate=candidate, current=current, confusion_png=None),
            DoneEvent(version=candidate.version, path="/nowhere", kept_epoch=2, train_time_s=1.0)]


@pytest.fixture
async def world(trained_copy):
    home = trained_copy.home
    for name, index in (("배추김치", 0), ("깍두기", 4)):
        (home.base / name).mkdir(parents=True)
        for i in range(10):  # with a 30% holdout: some held out, never a whole class
            draw(index, (96, 72), seed=i).save(home.base / name / f"{i}.jpg")
    settings = Settings.load(environ={"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(home.root),
                                      "KIMCHI_ADMIN_IDS": str(ADMIN), "KIMCHI_DEVICE": "cpu",
                                      "KIMCHI_RETRAIN_MIN_PER_CLASS": "1", "KIMCHI_HOLDOUT_PCT": "30",
                                      "KIMCHI_RETRAIN_AUDIT": "0"}, env_file=None)
    store = await Store.open(home.database, home.corrections)
    classifier = Classifier(trained_copy.registry, "current", EngineConfig(device="cpu"))
    serving = Serving(trained_copy.registry, classifier)
    notifier = Recorder()
    supervisor = ScriptedSupervisor(settings, store, serving, notifier, Ledger(store, settings))
    yield supervisor
    classifier.close()
    await store.close()


async def run_script(supervisor, script: str):
    supervisor.script = script
    run = await supervisor.prepare(ADMIN, ADMIN, "en")
    supervisor.start(run)
    await asyncio.wait_for(run.task, timeout=30)
    return run, supervisor.notifier.outcomes[-1]


async def test_a_better_candidate_is_promoted_and_served(world):
    v2 = publish_relabelled(world.serving.registry, "v1")
    run, outcome = await run_script(world, trainer(*events_for(score(v2, 0.9), score("v1", 0.5))))
    assert outcome.status is RunStatus.PROMOTED and outcome.decision.promote
    assert world.serving.version == v2 and world.serving.registry.current() == v2
    shown = world.notifier.events
    assert [e.epoch for e in shown if isinstance(e, EpochEvent)] == [1, 2]  # the malformed line was skipped
    assert isinstance(shown[-1], StageEvent) and shown[-1].stage is Stage.SCORING
    (row,) = rows(world.settings.home, "SELECT status, candidate, baseline, decision, pid FROM retrain_runs")
    assert tuple(row) == ("promoted", v2, "v1", "promote", row["pid"]) and row["pid"] > 0
    assert world.run is None


async def test_a_worse_candidate_is_kept_and_the_reason_is_typed(world):
    v2 = publish_relabelled(world.serving.registry, "v1")
    _, outcome = await run_script(world, trainer(*events_for(score(v2, 0.4), score("v1", 0.5))))
    assert outcome.status is RunStatus.KEPT and world.serving.version == "v1"
    (row,) = rows(world.settings.home, "SELECT status, reason FROM retrain_runs")
    (finding,) = [f for f in json.loads(row["reason"])["findings"] if not f["passed"]]
    assert row["status"] == "kept" and finding["check"] == "macro_f1"


@pytest.mark.parametrize("script, failure, detail", [
    (trainer(ErrorEvent(message="No images in /x."), exit_code=1), Failure.TRAINER_ERROR, "No images in /x."),
    (trainer(extra="os.kill(os.getpid(), signal.SIGKILL)"), Failure.SIGNAL, "SIGKILL"),
    (trainer(exit_code=3), Failure.EXIT_STATUS, "3"),
    (trainer(), Failure.NO_RESULT, ""),
])
async def test_a_trainer_that_fails_leaves_the_model_serving(world, script, failure, detail):
    _, outcome = await run_script(world, script)
    assert (outcome.status, outcome.failure, outcome.detail) == (RunStatus.FAILED, failure, detail)
    assert world.serving.version == "v1" and world.serving.registry.current() == "v1"
    assert json.loads(rows(world.settings.home, "SELECT reason FROM retrain_runs")[0][0])["failure"] == failure.value


async def test_a_candidate_that_cannot_load_is_not_pointed_at(world):
    v2 = publish_relabelled(world.serving.registry, "v1")
    weights = world.serving.registry.path(v2) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    _, outcome = await run_script(world, trainer(*events_for(score(v2, 0.9), score("v1", 0.5))))
    assert (outcome.status, outcome.failure) == (RunStatus.FAILED, Failure.LOAD_FAILED)
    assert world.serving.version == "v1" and world.serving.registry.current() == "v1"


async def test_cancel_before_the_spawn_and_a_timeout(world):
    world.script = trainer(sleep=30)
    run = await world.prepare(ADMIN, ADMIN, "en")
    with pytest.raises(RetrainRefused) as refused:
        await world.prepare(ADMIN, ADMIN, "en")
    assert refused.value.code is Refusal.RUNNING
    await world.cancel()
    world.start(run)
    await asyncio.wait_for(run.task, timeout=10)
    assert world.notifier.outcomes[-1].status is RunStatus.CANCELLED and run.process is None

    world.settings = world.settings.model_copy(update=dict(retrain_timeout_min=0.02))
    run, outcome = await run_script(world, trainer(sleep=30))
    assert (outcome.status, outcome.failure) == (RunStatus.FAILED, Failure.TIMEOUT)
    assert run.process.process.returncode is not None  # stopped, not left running


async def test_the_decision_is_against_what_serves_when_the_run_ends(world, monkeypatch):
    """A manual /promote during training: the candidate is compared with that model, scored on the holdout,
    here in the bot, on the bot's CPU runtime (which may come from .env, not the environment)."""
    from models import holdout

    monkeypatch.delenv("KIMCHI_CPU_RUNTIME", raising=False)
    world.settings = world.settings.model_copy(update=dict(cpu_runtime="torch"))
    runtimes, config = [], holdout.EngineConfig
    monkeypatch.setattr(holdout, "EngineConfig", lambda **kw: runtimes.append(kw["cpu_runtime"]) or config(**kw))
    registry = world.serving.registry
    v2 = publish_relabelled(registry, "v1")
    v3 = publish_relabelled(registry, "v1")
    world.script = trainer(*events_for(score(v2, 0.2), score("v1", 0.1)), sleep=2)
    run = await world.prepare(ADMIN, ADMIN, "en")
    world.start(run)
    await world.serving.promote(v3, reason="manual", by="test")
    await asyncio.wait_for(run.task, timeout=30)
    outcome = world.notifier.outcomes[-1]
    held_out = [json.loads(line)["sha256"] for line in run.training_set.holdout_file.read_text().splitlines()]
    assert outcome.result.current.version == v3 and outcome.result.current.n == len(held_out)
    assert sorted(outcome.result.current.correct) == sorted(held_out)  # per image, for the paired test
    # v3 (relabelled, confidently wrong) scores low on the real holdout; the decision used its real figures
    assert outcome.decision.findings[0].current == outcome.result.current.f1_macro
    assert world.serving.version == (v2 if outcome.decision.promote else v3)
    assert runtimes == ["torch"]


async def test_too_few_classes_is_refused_before_any_run(world):
    import shutil

    shutil.rmtree(world.settings.home.base / "깍두기")
    with pytest.raises(RetrainRefused) as refused:
        await world.prepare(ADMIN, ADMIN, "en")
    assert refused.value.code is Refusal.TOO_FEW_CLASSES and refused.value.values == {"n": 1}
    assert rows(world.settings.home, "SELECT COUNT(*) FROM retrain_runs")[0][0] == 0


async def test_the_audit_sends_a_flagged_label_back_to_review_and_keeps_near_duplicates_together(world):
    import hashlib

    from bot.store import Correction, PredictionRecord

    world.settings = world.settings.model_copy(update=dict(retrain_audit=True))
    data = (world.settings.home.base / "깍두기" / "0.jpg").read_bytes()
    photo = draw(0, (96, 72), seed=77)
    import io
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    user_photo = buf.getvalue()
    sha = hashlib.sha256(user_photo).hexdigest()
    prediction = await world.store.record_prediction(PredictionRecord(5, 5, 1, "f", "u", sha, "배추김치", 0.9))
    await world.store.save_correction(Correction(prediction, "깍두기", 5, 2, status="accepted"), user_photo)
    pair = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in
                  [world.settings.home.base / "배추김치" / "1.jpg", world.settings.home.base / "배추김치" / "2.jpg"])
    audited = AuditedEvent(n=21, flagged={sha: ["label"], hashlib.sha256(data).hexdigest(): ["label"]},
                           groups=[pair], summary="2 of 21 flagged.")
    world.audit_script = f"print({audited.to_json()!r})"
    run, outcome = await run_script(world, trainer(exit_code=3))
    (row,) = rows(world.settings.home, "SELECT status, audit_flag FROM corrections")
    assert tuple(row) == ("pending", "label")  # a user's label the audit doubts waits for an admin again
    assert run.flagged_corrections == 1 and sha not in {p.stem for p in run.training_set.train_dir.rglob("*")}
    assert world.notifier.counted and run.labels == {"accepted": 0, "pending": 1, "rejected": 0}
    sides = {r["sha256"]: r["split"] for r in rows(world.settings.home, "SELECT sha256, split FROM splits")}
    assert sides[pair[0]] == sides[pair[1]]  # near-duplicates on one side of the holdout
    assert outcome.failure is Failure.EXIT_STATUS


async def test_the_trainer_runs_the_model_on_the_bots_cpu_runtime(world):
    """KIMCHI_CPU_RUNTIME may come from .env, which the trainer does not read: the bot hands it over, so the
    holdout scoring and the audit run the model the way the bot serves it."""
    world.settings = world.settings.model_copy(update=dict(cpu_runtime="torch"))
    said = f"print({ErrorEvent(message='@').to_json()!r}.replace('@', os.environ['KIMCHI_CPU_RUNTIME'])); sys.exit(1)"
    _, outcome = await run_script(world, trainer(extra=said))
    assert (outcome.failure, outcome.detail) == (Failure.TRAINER_ERROR, "torch")


async def label_as(store, photo: bytes, label: str, users: tuple[int, ...], status: str = "accepted") -> str:
    """`users` each sent `photo` and labelled it `label`; the policy accepted it (they agreed)."""
    import hashlib

    from bot.store import Correction, PredictionRecord

    sha = hashlib.sha256(photo).hexdigest()
    for user in users:
        prediction = await store.record_prediction(PredictionRecord(user, user, 1, f"f{user}{sha[:8]}", None, sha,
                                                                    "배추김치", 0.9))
        await store.save_correction(Correction(prediction, label, user, 2, status=status), photo)
    return sha


async def test_a_class_under_the_minimum_is_left_out_and_named_not_a_veto_on_every_retrain(world):
    """Issue 19: two accounts labelled three photos of a new class; their labels agreed, so they were
    accepted. A class under KIMCHI_RETRAIN_MIN_PER_CLASS sits the run out; the other classes train, and
    the admin reads which class was left out and why. A base class the serving model knows, left out the
    same way, is named as one the bot would stop naming; its holdout photo is scored for neither model."""
    import hashlib
    import io

    from bot.admin import counts_text, outcome_text
    from bot.reports import report_table

    home = world.settings.home
    world.settings = world.settings.model_copy(update=dict(retrain_min_per_class=4, holdout_pct=1))
    photos = []
    for seed in range(3):
        buf = io.BytesIO()
        draw(7, (96, 72), seed=50 + seed).save(buf, "JPEG")
        photos.append(await label_as(world.store, buf.getvalue(), "백김치", (11, 12)))
    (home.base / "파김치").mkdir()
    sides = []
    for i, side in enumerate(("train", "holdout")):  # 파김치 (known to v1): one image on each side
        draw(2, (96, 72), seed=i).save(home.base / "파김치" / f"{i}.jpg")
        sides.append((hashlib.sha256((home.base / "파김치" / f"{i}.jpg").read_bytes()).hexdigest(), side, "base"))
    await world.store.add_splits(sides)
    assert rows(home, "SELECT COUNT(*) FROM corrections WHERE status='accepted'")[0][0] == 6

    v2 = publish_relabelled(world.serving.registry, "v1")
    run, outcome = await run_script(world, trainer(*events_for(score(v2, 0.4), score("v1", 0.5))))
    tset = run.training_set
    assert outcome.status is RunStatus.KEPT and outcome.refusal is None  # the trainer ran and was judged
    assert set(tset.left_out) == {"백김치", "파김치"} and tset.left_out["파김치"] == 1
    assert sorted(p.name for p in tset.train_dir.iterdir()) == ["깍두기", "배추김치"]
    held_out = [json.loads(line) for line in tset.holdout_file.read_text().splitlines()]
    assert sides[1][0] not in {r["sha256"] for r in held_out}  # not scored: the candidate cannot name it
    assert {r["label"] for r in held_out} <= {"깍두기", "배추김치"}
    assert run.forgets == ("파김치",)  # v1 knows 파김치, not 백김치
    said = counts_text(run, "en")
    assert "Left out of this run, with fewer than 4 training images:" in said and "백김치" in said
    assert "The current model knows 파김치" in said
    assert "이번 학습에서 뺀 클래스" in counts_text(run, "ko") and "백김치" in counts_text(run, "ko")
    table = report_table(outcome.result, sum(tset.train_counts.values()), tset.corrections, 1.0, "en", tset.left_out)
    assert "left out (too few images): " in table and "백김치" in table
    counted = json.loads(rows(home, "SELECT counts_json FROM retrain_runs")[0][0])
    assert set(counted["left_out"]) == {"백김치", "파김치"} and counted["forgets"] == ["파김치"]
    assert set(photos) <= set(await world.store.splits())  # their sides are decided, for a later run

    # fewer than two classes left once the short ones are out: refused, and the admin is told which
    world.settings = world.settings.model_copy(update=dict(retrain_min_per_class=50))
    run, outcome = await run_script(world, trainer(*events_for(score(v2, 0.9), score("v1", 0.5))))
    assert outcome.status is RunStatus.REFUSED and outcome.refusal.code is Refusal.TOO_FEW_TRAINABLE
    said = outcome_text(run, outcome)
    assert said.startswith("Cannot retrain: once the classes with fewer than 50 training images are left out (")
    assert "백김치 " in said and said.endswith("), 0 class(es) remain; at least two are needed.")
    assert "too_few_trainable" in rows(home, "SELECT reason FROM retrain_runs ORDER BY id DESC")[0][0]
