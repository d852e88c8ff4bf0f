"""Retrain turnaround.

    python bench/retrain_bench.py --mode bot
        This CPU, the tiny config, through the real bot and a fake Bot API: from the admin's /retrain to the
        decision message (training set, trainer subprocess, holdout comparison, promotion, live swap).

    python bench/retrain_bench.py --mode recipes --classes 11 --per-class 100
        Issue 13's CPU retrain: for each recipe (the blog's resnet18, efficientnet_lite0 at the blog's epochs,
        the cpu-fast preset; or --recipe NAME='FLAGS'), the real bot's /retrain from the admin's command to
        the decision, on the same imported 1280x960 photos and the same serving model (efficientnet_lite0,
        one frozen epoch), audit included. Prints each run's seconds to the counts message (training set and
        audit) and to the decision, and the candidate's holdout accuracy.

    python bench/retrain_bench.py --mode trainer --classes 11 --per-class 500
        The blog's config (resnet18, fine_tune(5, freeze_epochs=1)) on synthetic 1280x960 photos, driven the
        way /retrain drives it, without Telegram: the set is presized once at import (the cache), then
        training set -> `kimchi-train train --progress json --holdout` -> rule -> promote.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, report, trained_model  # noqa: E402


async def correct_then_retrain(fake, size: tuple[int, int], timeout: float):
    """Four users each send a photo and /correct it (what a retrain needs: something new), then the admin
    sends /retrain. Returns (when /retrain was sent, the counts message, the decision or failure message)."""
    from models.labels import CLASS_NAMES
    from tests.botkit import ADMIN
    from tests.imagegen import draw, encode
    from tests.telegram_fake import user

    for i in range(4):
        person = user(100 + i)
        await fake.reply_to(await fake.send_photo(person, encode(draw(i, size, seed=900 + i), "JPEG", quality=87)))
        await fake.reply_to(await fake.send_text(person, f"/correct {CLASS_NAMES[i]}"))
    started = time.monotonic()
    await fake.send_text(user(ADMIN, "en"), "/retrain")
    counts = (await fake.wait_for(lambda c: "Training data" in c.params.get("text", ""), timeout=900))[0]
    decision = (await fake.wait_for(lambda c: any(word in c.params.get("text", "") for word in (
        "Promoted", "did not promote", "retrain failed")), timeout=timeout))[0]
    return started, counts, decision


async def bot_mode(home_dir: Path) -> dict:
    from models.home import Home
    from tests.botkit import TOKEN, running_bot
    from tests.imagegen import make_dataset
    from tests.telegram_fake import FakeTelegram
    from training.importer import import_dataset

    home = Home(home_dir).ensure()
    trained_model(home.root, arch="efficientnet_lite0", size=64, presize=160, epochs=1)
    make_dataset(home.root / "src", classes=4, per_class=30, size=(200, 150))
    import_dataset(home.root / "src", home.base, presize=160, workers=1)
    fake = await FakeTelegram(TOKEN).start()
    tiny = "--arch efficientnet_lite0 --size 64 --presize 160 --epochs 1 --freeze-epochs 1 --bs 16 --workers 0"
    try:
        async with running_bot(home, fake, KIMCHI_TRAIN_ARGS=tiny, KIMCHI_RETRAIN_MIN_PER_CLASS="5",
                               KIMCHI_HOLDOUT_PCT="20"):
            started, counts, decision = await correct_then_retrain(fake, (640, 480), timeout=600)
    finally:
        await fake.stop()
    return {"mode": "bot", "config": tiny, "to_counts_s": round(counts.at - started, 2),
            "to_decision_s": round(decision.at - started, 2), "decision": decision.params["text"].splitlines()[0]}


RECIPES = {
    # resnet18's ImageNet weights cannot be downloaded offline; the time per epoch does not depend on them.
    "resnet18 (blog)": "--no-pretrained",
    "efficientnet_lite0 (blog epochs)": "--arch efficientnet_lite0",
    "cpu-fast preset": "--preset cpu-fast",
    "cpu-fast with resnet18": "--preset cpu-fast --arch resnet18 --no-pretrained --channels-last on",
}


async def recipes_mode(work: Path, classes: int, per_class: int, recipes: dict[str, str]) -> list[dict]:
    """Each recipe's /retrain through the real bot, from the same starting home."""
    import shutil

    from models.home import Home
    from models.registry import Registry
    from tests.botkit import TOKEN, running_bot
    from tests.telegram_fake import FakeTelegram
    from train_bench import make_photos
    from training.recipe import Recipe
    from training.importer import import_dataset
    from training.progress import Progress
    from training.train import train

    template = Home(work / "template").ensure()
    if not Registry(template.models).current():
        make_photos(work / "raw", classes, per_class)
        import_dataset(work / "raw", template.base, presize=460)
        serving = Recipe(arch="efficientnet_lite0", presize=256, epochs=0, freeze_epochs=1, bs=32, workers=0)
        train(template.base, serving, Registry(template.models), Progress("quiet"), report=False)
    results = []
    for name, flags in recipes.items():
        root = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(template.root, root)
        home = Home(root)
        fake = await FakeTelegram(TOKEN).start()
        try:
            async with running_bot(home, fake, KIMCHI_TRAIN_ARGS=f"{flags} --workers 0",
                                   KIMCHI_RETRAIN_MIN_PER_CLASS="5", KIMCHI_RETRAIN_TIMEOUT_MIN="120"):
                started, counts, decision = await correct_then_retrain(fake, (1280, 960), timeout=7200)
        finally:
            await fake.stop()
        scores = [json.loads(p.read_text()) for p in sorted(home.runs.glob("*/compare.json"))]
        row = {"recipe": name, "flags": flags, "to_counts_s": round(counts.at - started, 1),
               "to_decision_s": round(decision.at - started, 1), "decision": decision.params["text"].splitlines()[0],
               "compare": scores[-1] if scores else None}
        print(json.dumps(row, ensure_ascii=False), flush=True)
        results.append(row)
    return results


def trainer_mode(work: Path, classes: int, per_class: int, extra: list[str]) -> dict:
    from models.home import Home, holdout_key
    from models.promotion import decide
    from models.protocol import DoneEvent, EpochEvent, ScoredEvent, StartEvent, parse
    from models.registry import Registry
    from models.trainset import build_training_set, collect_items
    from train_bench import make_photos
    from training.importer import import_dataset

    home = Home(work / "home").ensure()
    raw = work / "raw"
    timings: dict[str, float] = {}
    if not raw.exists():
        t = time.perf_counter()
        make_photos(raw, classes, per_class)
        timings["make_photos_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    import_dataset(raw, home.base, presize=460)
    timings["import_presize_s"] = round(time.perf_counter() - t, 1)

    started = time.perf_counter()
    tset = build_training_set(home.runs / "run-bench", collect_items(home.base, []), {}, 10, holdout_key(home))
    timings["training_set_s"] = round(time.perf_counter() - started, 1)
    cmd = [sys.executable, "-m", "training.cli", "--home", str(home.root), "train", str(tset.train_dir),
           "--progress", "json", "--holdout", str(tset.holdout_file), "--report-dir", str(tset.run_dir),
           "--cache", str(home.cache), "--no-pretrained", *extra]
    events, first_epoch, spawned, first_event = [], None, time.perf_counter(), None
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("{"):
            event = parse(line)
            events.append(event)
            first_event = first_event or time.perf_counter()
            if isinstance(event, EpochEvent):
                if first_epoch is None:
                    first_epoch = time.perf_counter()
                print(f"  epoch {event.epoch}/{event.total} valid_loss {event.valid_loss or float('nan'):.3f} "
                      f"at {event.elapsed:.1f} s", flush=True)
    process.wait()
    if process.returncode != 0:
        raise SystemExit(f"trainer failed with {process.returncode}")
    scored = next(e for e in events if isinstance(e, ScoredEvent))
    done = next(e for e in events if isinstance(e, DoneEvent))
    start_event = next(e for e in events if isinstance(e, StartEvent))
    registry = Registry(home.models)
    decision = decide(scored.candidate, scored.current)
    if decision.promote:
        registry.promote(done.version, reason="bench")
    total = time.perf_counter() - started
    return {"mode": "trainer", "images": classes * per_class, "n_train": start_event.n_train,
            "n_valid": start_event.n_valid, "holdout": scored.n, "device": start_event.device,
            "mixed_precision": start_event.mixed_precision, **timings,
            "trainer_startup_s": round(first_event - spawned, 1), "train_time_s": done.train_time_s,
            "to_promoted_s": round(total, 1), "promoted": decision.promote, "current": registry.current(),
            "holdout_accuracy": scored.candidate.accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["bot", "recipes", "trainer"], default="bot")
    parser.add_argument("--recipe", action="append", metavar="NAME=FLAGS",
                        help="recipes mode: a recipe to time instead of the default three (repeatable)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("extra", nargs="*", help="extra kimchi-train train arguments (after --)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kimchi-retrain-bench-"))
    if args.mode == "bot":
        result = asyncio.run(bot_mode(work))
    elif args.mode == "recipes":
        chosen = dict(r.split("=", 1) for r in args.recipe) if args.recipe else RECIPES
        result = {"mode": "recipes", "images": args.classes * args.per_class,
                  "runs": asyncio.run(recipes_mode(work, args.classes, args.per_class, chosen))}
    else:
        result = trainer_mode(work, args.classes, args.per_class, args.extra)
    result["machine"] = machine()
    print(json.dumps(result, ensure_ascii=False, indent=1))
    report(result, args.out)


if __name__ == "__main__":
    main()
