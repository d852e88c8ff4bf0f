"""The label audit on users' labels: noise labelled as kimchi by agreeing accounts is flagged `not_kimchi`
(by the version's stored open-set check, or by one the audit fits for an old version), a flood of
near-identical photos from one account is flagged `flood`, ordinary labels pass; /retrain lists the accounts
behind each label, and /review shows the reason in words."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.datafiles import file_sha256, image_files, label_of
from models.labels import CLASS_NAMES, NOT_KIMCHI
from models.protocol import AuditedEvent, parse
from tests.conftest import SESSION_CLASSES
from tests.imagegen import UsersLabels, draw, draw_other
from tests.test_audit import photo
from training.audit import FLOOD, LABEL, NOT_KIMCHI_ISSUE, Listed, run_audit
from training.cli import main
from tests.test_supervisor import world  # noqa: F401  (the supervisor with a scripted trainer)

NOISE = 10
FLOOD_COPIES = 6
AGREEING = ("101", "102")  # two accounts that agree on every label they give


def _users_set(root: Path, base: Path) -> tuple[list[tuple[Path, str]], dict[Path, tuple[str, ...]], dict[str, list[Path]]]:
    """The session's training images as the base, and users' labels: noise called 배추김치, noise honestly
    called not kimchi, fresh kimchi with their right names, and two bursts of one photo re-saved
    FLOOD_COPIES times, one from a single account and one from as many accounts as copies."""
    labelled = UsersLabels(root, [(path, label_of(path)) for path in image_files(base)])
    add = labelled.add
    for i in range(NOISE):
        add("noise", draw_other("noise", (200, 150), seed=300 + i), CLASS_NAMES[0], AGREEING)
    for i in range(3):
        add("honest", draw_other("noise", (200, 150), seed=400 + i), NOT_KIMCHI, AGREEING)
    for i in range(2 * SESSION_CLASSES):
        add("kimchi", draw(i % SESSION_CLASSES, (200, 150), seed=7000 + i), CLASS_NAMES[i % SESSION_CLASSES], AGREEING)
    # photo-like pictures (tests/test_audit.py): imagegen's per-pixel noise changes with every re-save
    burst = photo(1, seed=8000)
    for i in range(FLOOD_COPIES):
        add("flood", burst, CLASS_NAMES[1], ("103",), quality=95 - 4 * i)
    popular = photo(2, seed=8100)
    for i in range(FLOOD_COPIES):
        add("popular", popular, CLASS_NAMES[2], (str(200 + i),), quality=95 - 4 * i)
    return labelled.items, labelled.users, labelled.kinds


@pytest.fixture(scope="module")
def users_set(trained, tmp_path_factory):
    return _users_set(tmp_path_factory.mktemp("users") / "photos", trained.data)


def _flags(result) -> dict[Path, tuple[str, ...]]:
    return {row.file: row.issues for row in result.rows}


def test_a_stored_check_flags_noise_labelled_as_kimchi_and_a_flood(calibrated, users_set):
    items, users, kinds = users_set
    # and a few base labels moved to the next class: cleanlab still finds them beside the new checks
    flipped = dict([(path, CLASS_NAMES[(CLASS_NAMES.index(label) + 1) % SESSION_CLASSES])
                    for path, label in items if path not in users][3::20])
    result = run_audit(Listed([(p, flipped.get(p, label)) for p, label in items], users), calibrated.registry,
                       calibrated.version, picture=False)
    flags = _flags(result)
    assert sum(LABEL in flags[p] for p in flipped) >= len(flipped) - 1, "cleanlab finds labels moved to another class"
    assert result.openset == "stored" and f"{calibrated.version}'s own" in result.summary()
    assert [p.name for p in kinds["noise"] if NOT_KIMCHI_ISSUE not in flags[p]] == []
    assert all(NOT_KIMCHI_ISSUE not in flags[p] for p in kinds["honest"]), "a not_kimchi label is what the check says"
    # ordinary kimchi labels pass: the check keeps 95% of kimchi by design, so one of eight may be doubted
    assert sum(bool({NOT_KIMCHI_ISSUE, FLOOD, LABEL} & set(flags[p])) for p in kinds["kimchi"]) <= 1
    assert all(FLOOD in flags[p] for p in kinds["flood"]), "six copies from one account"
    assert all(FLOOD not in flags[p] for p in kinds["popular"]), "the same picture labelled by six accounts"
    base = [p for p, _ in items if p not in users]
    assert all(NOT_KIMCHI_ISSUE not in flags[p] and FLOOD not in flags[p] for p in base), "base images have no accounts"
    assert result.count(FLOOD) == FLOOD_COPIES and f"{FLOOD_COPIES} users' photos in floods" in result.summary()
    assert f"{result.count(NOT_KIMCHI_ISSUE)} users' labels on photos that are not kimchi" in result.summary()


def test_an_old_version_gets_a_check_fitted_from_the_base_and_retrain_reads_it_by_sha(trained, users_set, tmp_path, capsys):
    """`kimchi-train audit --items FILE --progress json` as /retrain runs it, on a version with no stored check."""
    items, users, kinds = users_set
    listed = tmp_path / "items.jsonl"
    listed.write_text("".join(json.dumps({"path": str(p), "label": label, "sha256": f"sha-{i}",
                                          **({"users": list(users[p])} if p in users else {})}, ensure_ascii=False)
                              + "\n" for i, (p, label) in enumerate(items)), encoding="utf-8")
    sha = {p: f"sha-{i}" for i, (p, _) in enumerate(items)}
    rc = main(["--home", str(tmp_path / "home"), "audit", "--items", str(listed), "--models-dir",
               str(trained.registry.root), "--out", str(tmp_path / "audit"), "--device", "cpu", "--progress", "json"])
    assert rc == 0
    events = [parse(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (event,) = [e for e in events if isinstance(e, AuditedEvent)]
    assert event.openset == "fitted" and "open-set check fitted on" in event.summary
    flagged = event.flagged
    assert [p.name for p in kinds["noise"] if NOT_KIMCHI_ISSUE not in flagged.get(sha[p], [])] == []
    assert all(NOT_KIMCHI_ISSUE not in flagged.get(sha[p], []) for p in kinds["honest"])
    assert sum(NOT_KIMCHI_ISSUE in flagged.get(sha[p], []) for p in kinds["kimchi"]) <= 1  # kept: 95% by design
    assert all(FLOOD in flagged[sha[p]] for p in kinds["flood"])
    assert all(FLOOD not in flagged.get(sha[p], []) for p in kinds["popular"] + kinds["kimchi"])


async def test_retrain_lists_the_accounts_and_review_names_the_reason(world):
    """/retrain writes who gave each user's label into the audit's item list; a `not_kimchi` or `flood` flag
    sends the label back to /review like a wrong label, and the review item says why in words."""
    import hashlib
    import io

    from bot.review import caption
    from bot.ledger import next_pending
    from bot.store import Correction, PredictionRecord
    from tests.botkit import rows
    from tests.test_supervisor import run_script, trainer

    world.settings = world.settings.model_copy(update=dict(retrain_audit=True))

    def jpeg(image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, "JPEG")
        return buf.getvalue()

    noise, burst = jpeg(draw_other("noise", (96, 72), seed=5)), jpeg(draw(0, (96, 72), seed=99))
    for user, data, message in ((5, noise, 1), (6, noise, 2), (7, burst, 3)):  # 5 and 6 agree on the noise
        prediction = await world.store.record_prediction(
            PredictionRecord(user, user, message, f"f{message}", f"u{message}", hashlib.sha256(data).hexdigest(),
                             "배추김치", 0.9))
        await world.store.save_correction(Correction(prediction, "배추김치", user, message + 10, status="accepted"), data)
    noise_sha, burst_sha = hashlib.sha256(noise).hexdigest(), hashlib.sha256(burst).hexdigest()
    audited = AuditedEvent(n=22, flagged={noise_sha: ["not_kimchi", "outlier"], burst_sha: ["flood"]},
                           summary="2 of 22 flagged.", openset="fitted")
    world.audit_script = f"print({audited.to_json()!r})"
    run, _ = await run_script(world, trainer(exit_code=3))

    listed = [json.loads(line) for line in (run.folder / "audit-items.jsonl").read_text(encoding="utf-8").splitlines()]
    users = {row["sha256"]: row.get("users") for row in listed}
    assert users[noise_sha] == [5, 6] and users[burst_sha] == [7]
    base = world.settings.home.base / "깍두기" / "0.jpg"
    assert users[file_sha256(base)] is None, "a base image has no accounts"

    statuses = {r["sha256"]: (r["status"], r["audit_flag"]) for r in
                rows(world.settings.home, "SELECT sha256, status, audit_flag FROM corrections")}
    assert statuses == {noise_sha: ("pending", "not_kimchi,outlier"), burst_sha: ("pending", "flood")}
    assert run.flagged_corrections == 3

    item = await next_pending(world.ledger)
    assert "⚠️ Flagged by the audit: a kimchi label on a photo that does not look like kimchi; unlike the other photos" \
        in caption(item, "en")
    assert "김치가 아닌 것 같은 사진에 김치 라벨" in caption(item, "ko")
    flood_item = await next_pending(world.ledger, after_id=item.id + 1)
    assert "one of many near-identical photos labelled by few accounts" in caption(flood_item, "en")
