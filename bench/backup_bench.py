"""The time of a backup and of a restore of a home with 10,000 labels, and of /forget's erase of a user
with 500 labels in it.

    python bench/backup_bench.py [--labels 10000] [--runs 3]

The home is built directly: the bot's schema, one prediction and one label row per photo, and each photo as the
bot stores it (a bounded JPEG, 613x460 at quality 90, about 60-120 KB; a handful of distinct pictures cycled),
plus one model version copied in when `--model-from HOME` names a trained home. Then `kimchi-train backup` and
`kimchi-train restore` run as whole processes, start-up included, `--runs` times each; medians are printed.
The erase is `bot.personal.PersonalData.forget` on a restored copy, in-process (the transaction, and the
files after it; the Telegram round trip of /forget's tap is not in it). Target (people's data issue): the
closing note gives these figures.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, report  # noqa: E402

from bot.photos import bounded_jpeg  # noqa: E402
from models.home import Home, holdout_key  # noqa: E402
from models.schema import MIGRATIONS  # noqa: E402
from tests.imagegen import draw, encode  # noqa: E402


def build_home(root: Path, labels: int, model_from: Path | None) -> Home:
    home = Home(root).ensure()
    holdout_key(home)
    pictures = [bounded_jpeg(encode(draw(i % 11, (1280, 960), seed=i), "JPEG", quality=87)) for i in range(16)]
    con = sqlite3.connect(home.database)
    for number, script in enumerate(MIGRATIONS, 1):
        con.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    predictions, corrections = [], []
    for i in range(labels):
        data = pictures[i % len(pictures)] + i.to_bytes(4, "big")  # distinct bytes, still a JPEG to a reader
        sha = hashlib.sha256(data).hexdigest()
        label = ("깍두기", "배추김치", "총각김치")[i % 3]
        path = home.corrections / label / f"{sha}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        at = "2026-12-01T00:00:00.000Z"
        who = 1 if i < 500 else 1000 + i % 500  # user 1 has 500 labels: the one /forget erases
        predictions.append((i + 1, who, who, i + 1, f"f{i}", f"u{i}", sha, "배추김치", 0.9, at))
        corrections.append((i + 1, who, who, f"u{i}", sha, "배추김치", label, str(path),
                            "accepted", len(data), at, at))
    con.executemany("INSERT INTO predictions (id, chat_id, user_id, message_id, file_id, file_unique_id, sha256,"
                    " label, confidence, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)", predictions)
    con.executemany("INSERT INTO corrections (prediction_id, user_id, chat_id, file_unique_id, sha256,"
                    " predicted_label, corrected_label, path, status, bytes, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", corrections)
    con.commit()
    con.close()
    if model_from is not None:
        shutil.copytree(Path(model_from) / "models", home.models, dirs_exist_ok=True)
    return home


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


async def forget_one(home: Home) -> float:
    from bot.personal import PersonalData
    from bot.store import Store

    store = await Store.open(home.database, home.corrections)
    try:
        start = time.perf_counter()
        erased = await PersonalData(store.db, store.photos).forget(1)
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    assert erased.labels == 500, erased
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model-from", type=Path, help="a trained KIMCHI_HOME whose models/ to include")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kimchi-backup-bench-"))
    try:
        home = build_home(work / "home", args.labels, args.model_from)
        size = sum(p.stat().st_size for p in home.root.rglob("*") if p.is_file())
        cli = [sys.executable, "-m", "training.cli"]
        backups, restores = [], []
        for run in range(args.runs):
            archive = work / f"b{run}.tar"
            backups.append(timed([*cli, "--home", str(home.root), "backup", str(archive)]))
            restores.append(timed([*cli, "--home", str(work / f"restored{run}"), "restore", str(archive)]))
        erase = asyncio.run(forget_one(Home(work / "restored0")))
        results = {"labels": args.labels, "forget_500_labels_s": round(erase, 3), "home_mb": round(size / 1e6, 1),
                   "archive_mb": round((work / "b0.tar").stat().st_size / 1e6, 1),
                   "backup_s": round(statistics.median(backups), 2), "restore_s": round(statistics.median(restores), 2),
                   "backup_runs": [round(t, 2) for t in backups], "restore_runs": [round(t, 2) for t in restores]}
        print(results)
        report(results, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
