"""The trainer's start-up: `kimchi-train --help`, the time from spawning `kimchi-train train --progress json`
to its first protocol line, and a whole `kimchi-train predict` of one photo (ONNX Runtime serving a published
efficientnet_lite0), for this tree and (with --ref) an earlier commit, in the same run.

    python bench/startup_bench.py --ref 320afe7 [--runs 5]

The earlier commit is checked out into a temporary git worktree; both trees run with the same Python and
packages. Medians of `--runs` runs, interleaved so that a noisy host hurts both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, photos, report, write_photos  # noqa: E402
from tests.imagegen import make_dataset  # noqa: E402


def timed(cmd: list[str], cwd: Path, first_line: bool = False) -> float:
    env = {**os.environ, "PYTHONPATH": str(cwd), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if first_line:
        for line in process.stdout:
            if line.startswith("{"):
                elapsed = time.perf_counter() - started
                process.kill()
                process.wait()
                return elapsed
        raise SystemExit(f"no protocol line from {' '.join(cmd)}")
    process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {process.returncode}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="an earlier commit to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kimchi-startup-"))
    data = work / "data"
    make_dataset(data, classes=2, per_class=8, size=(96, 72))
    trees = {"this tree": ROOT}
    if args.ref:
        old = work / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.ref], cwd=ROOT, check=True,
                       capture_output=True)
        trees[args.ref] = old
    # The old trees may spell the progress flag differently; both take --progress json.
    train = ["train", str(data), "--arch", "efficientnet_lite0", "--size", "32", "--presize", "48", "--epochs", "0",
             "--freeze-epochs", "1", "--bs", "8", "--workers", "0", "--device", "cpu", "--progress", "json"]
    samples: dict[str, dict[str, list[float]]] = {name: {"help_s": [], "first_event_s": [], "predict_one_s": []}
                                                  for name in trees}
    served = ["--home", str(work / "home-served")]  # one published version, read by every tree
    timed([sys.executable, "-m", "training.cli", *served, *train], ROOT)
    one = write_photos(work / "one", photos(1))[0]
    try:
        for _ in range(args.runs):
            for name, tree in trees.items():
                home = ["--home", str(work / f"home-{abs(hash(name))}")]
                samples[name]["help_s"].append(timed([sys.executable, "-m", "training.cli", "--help"], tree))
                samples[name]["first_event_s"].append(
                    timed([sys.executable, "-m", "training.cli", *home, *train], tree, first_line=True))
                samples[name]["predict_one_s"].append(
                    timed([sys.executable, "-m", "training.cli", *served, "predict", str(one)], tree))
    finally:
        if args.ref:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "old")], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    results = {"machine": machine(), "runs": args.runs,
               "median": {name: {k: round(statistics.median(v), 2) for k, v in s.items()} for name, s in samples.items()}}
    print(json.dumps(results, ensure_ascii=False, indent=1))
    report(results, args.out)


if __name__ == "__main__":
    main()
