"""The trainer protocol: every event survives the trip through one JSON line, and bad lines are named."""
import json

import pytest

from models.protocol import (AuditedEvent, BatchEvent, DoneEvent, EpochEvent, ErrorEvent, HoldoutScore, ProtocolError,
                             ScoredEvent, Stage, StageEvent, StartEvent, TrainResult, parse)

SCORE = HoldoutScore("v2", 20, 0.9, 0.88, 0.87, 0.86, {"깍두기": 0.9, "백김치": 0.8}, 3, 2 / 3,
                     {"깍두기": 12, "백김치": 8}, {"ab" * 32: True, "cd" * 32: False})
EVENTS = [
    StartEvent(elapsed=0.5, arch="resnet18", classes=("깍두기", "백김치"), counts={"깍두기": 10, "백김치": 9},
               n_train=15, n_valid=4, total=6, device="cpu", mixed_precision="no"),
    BatchEvent(elapsed=1.0, epoch=1, total=6, fraction=0.25),
    EpochEvent(elapsed=2.0, epoch=1, total=6, phase="frozen", train_loss=1.2, valid_loss=0.9,
               metrics={"accuracy": 0.75, "f1_macro": None}, best=True),
    StageEvent(elapsed=3.0, stage=Stage.SCORING),
    ScoredEvent(elapsed=4.0, n=20, candidate=SCORE, current=None, confusion_png="/x/confusion.png"),
    DoneEvent(elapsed=5.0, version="v2", path="/x/v2", kept_epoch=4, train_time_s=9.5, metrics={"accuracy": 0.9}),
    AuditedEvent(elapsed=5.5, n=40, flagged={"ab" * 32: ["label"], "cd" * 32: ["near_duplicate", "outlier"]},
                 groups=[["ab" * 32, "ef" * 32]], suspects_png="/x/suspects.png", summary="2 of 40 flagged"),
    ErrorEvent(elapsed=6.0, message="No images in /x."),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_every_event_round_trips_through_one_line(event):
    line = event.to_json()
    assert "\n" not in line and json.loads(line)["event"] == event.kind
    assert parse(line) == event


def test_non_finite_figures_become_null_not_invalid_json():
    line = EpochEvent(epoch=1, total=1, train_loss=float("nan"), valid_loss=float("inf")).to_json()
    assert parse(line).train_loss is None and parse(line).valid_loss is None


@pytest.mark.parametrize("line, says", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"event": "compare"}', "unknown event 'compare'"),
    ('{"stage": "epoch", "epoch": 1}', "unknown event None"),
    ('{"event": "epoch", "epoch": 1, "colour": "red"}', "unknown fields ['colour']"),
    ('{"event": "epoch", "epoch": "one", "total": 2}', "whole number"),
    ('{"event": "stage", "stage": "comparing"}', "malformed stage event"),
    ('{"event": "scored", "n": 1, "candidate": {"version": "v2"}}', "holdout score"),
    ('{"event": "scored", "n": 1, "candidate": {"version": "v2", "n": 1, "accuracy": 1, "precision_macro": 1, '
     '"recall_macro": 1, "f1_macro": 1, "per_class_f1": {}, "correct": {"ab": "yes"}}}', "true or false"),
])
def test_a_malformed_line_is_one_clear_error(line, says):
    with pytest.raises(ProtocolError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse(line)


def test_train_result_needs_a_published_and_scored_version():
    assert TrainResult.from_events(EVENTS[:4]) is None
    assert TrainResult.from_events([EVENTS[5]]) is None  # published, never scored
    result = TrainResult.from_events(EVENTS)
    assert (result.version, result.kept_epoch, result.candidate, result.current) == ("v2", 4, SCORE, None)
    assert result.summary()["candidate"]["per_class_n"] == {"깍두기": 12, "백김치": 8}


def test_a_score_from_a_trainer_without_per_image_results_still_parses():
    """`correct` came later (the paired promotion test): a line without it reads as no per-image results."""
    body = json.loads(ScoredEvent(n=20, candidate=SCORE, current=SCORE).to_json())
    assert body["candidate"]["correct"] == {"ab" * 32: True, "cd" * 32: False}
    del body["candidate"]["correct"], body["current"]["correct"]
    event = parse(json.dumps(body, ensure_ascii=False))
    assert event.candidate.correct == {} and event.candidate.per_class_n == SCORE.per_class_n


def test_the_run_record_keeps_figures_not_every_images_result():
    result = TrainResult.from_events(EVENTS)
    assert "correct" not in result.summary()["candidate"] and result.candidate.correct
