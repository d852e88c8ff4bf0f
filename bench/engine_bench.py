"""Engine benchmark: fastai's learn.predict loop and get_preds(test_dl) against the batched engine, on the
same 1280x960 JPEGs with the same trained model, in one run.

    python bench/engine_bench.py                      # this machine's CPU
    python bench/engine_bench.py --device cuda        # a GPU
    python bench/engine_bench.py --rss 10000          # memory after 1,000 and 10,000 classifications

Prints a table and writes JSON (--out). Figures are medians; ratios compare paths within this run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, photos, report, rss_mb, trained_model, write_photos  # noqa: E402


def _summary(times: list[float]) -> dict:
    return {"n": len(times), "img_s": len(times) / sum(times), "p50_ms": 1000 * statistics.median(times),
            "p99_ms": 1000 * percentile(times, 0.99)}


def interleaved_single(learn, classifier, paths: list[Path], blobs: list[bytes], n: int, rounds: int = 4):
    """learn.predict and the engine's single-image latency in alternating rounds, so that the machine's
    drift hits both alike. learn.predict reads the file, as its users call it; the engine gets bytes,
    as the bot does (a file read is ~0.1 ms of either)."""
    lp, eng = [], []

    async def engine_round(start: int) -> None:
        for i in range(start, start + n // rounds):
            t0 = time.perf_counter()
            await classifier.classify(blobs[i % len(blobs)])
            eng.append(time.perf_counter() - t0)

    with learn.no_bar():
        learn.predict(paths[0])
        asyncio.run(engine_round(0))
        eng.clear()
        for r in range(rounds):
            for i in range(r * n // rounds, (r + 1) * n // rounds):
                t0 = time.perf_counter()
                learn.predict(paths[i % len(paths)])
                lp.append(time.perf_counter() - t0)
            asyncio.run(engine_round(r * n // rounds))
    return _summary(lp), _summary(eng)


def bench_get_preds(learn, paths: list[Path], bs: int, workers: int) -> dict:
    dl = learn.dls.test_dl(paths, bs=bs, num_workers=workers)
    with learn.no_bar():
        learn.get_preds(dl=learn.dls.test_dl(paths[:bs], bs=bs, num_workers=0))  # warm-up
        start = time.perf_counter()
        learn.get_preds(dl=dl)
        elapsed = time.perf_counter() - start
    return {"n": len(paths), "bs": bs, "workers": workers, "img_s": len(paths) / elapsed}


async def concurrent_throughput(classifier, blobs: list[bytes], concurrency: int, total: int) -> dict:
    counter = iter(range(total))
    latencies: list[float] = []

    async def user() -> None:
        for i in counter:
            start = time.perf_counter()
            await classifier.classify(blobs[i % len(blobs)])
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    sizes = [s for s, _ in classifier.batches[-200:]]
    return {"concurrency": concurrency, "n": total, "img_s": total / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 0.99),
            "mean_batch": statistics.mean(sizes) if sizes else None}


def stream_throughput(classifier, paths: list[Path], batch: int) -> dict:
    loaders = [(lambda p=p: p.read_bytes()) for p in paths]
    list(classifier.classify_stream(loaders[:batch], batch_size=batch))  # warm-up
    start = time.perf_counter()
    n = sum(1 for r in classifier.classify_stream(loaders, batch_size=batch) if r.ok)
    return {"batch": batch, "n": n, "img_s": n / (time.perf_counter() - start)}


async def rss_run(classifier, blobs: list[bytes], total: int, concurrency: int = 8) -> dict:
    marks = {}
    done = 0
    counter = iter(range(total))

    async def user() -> None:
        nonlocal done
        for i in counter:
            await classifier.classify(blobs[i % len(blobs)])
            done += 1
            if done in (1000, total):
                marks[done] = rss_mb()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    first, last = marks.get(1000), marks.get(total)
    return {"rss_after_1000_mb": first, f"rss_after_{total}_mb": last,
            "growth_pct": 100 * (last - first) / first if first and last else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs (cycled)")
    parser.add_argument("--predict-n", type=int, default=40, help="learn.predict calls")
    parser.add_argument("--total", type=int, default=0, help="images per throughput run (default: by device)")
    parser.add_argument("--max-batch", type=int, default=0)
    parser.add_argument("--home", help="reuse a trained home (default: a temp folder)")
    parser.add_argument("--rss", type=int, default=0, help="only the memory run, with this many classifications")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from fastai.learner import load_learner

    from models.engine import Classifier, EngineConfig

    cuda = args.device == "cuda"
    home = Path(args.home or tempfile.mkdtemp(prefix="kimchi-bench-"))
    registry, version = trained_model(home, device=args.device)
    blobs = photos(args.images)
    paths = write_photos(home / "photos", blobs)
    total = args.total or (20_000 if cuda else 240)
    max_batch = args.max_batch or (256 if cuda else 32)
    results: dict = {"machine": machine(), "device": args.device, "model": version, "image": "1280x960 JPEG q87"}

    def engine(**overrides) -> Classifier:
        config = dict(device=args.device, max_batch=max_batch, max_wait_ms=2.0, queue_limit=100_000)
        config.update(overrides)
        return Classifier(registry, version, EngineConfig(**config))

    if args.rss:
        classifier = engine()
        results["rss"] = asyncio.run(rss_run(classifier, blobs, args.rss))
        classifier.close()
        print(results["rss"])
        report(results, args.out)
        return

    learn = load_learner(registry.path(version) / "learner.pkl", cpu=not cuda)
    classifier = engine(max_wait_ms=0.5)
    results["learn_predict"], results["engine_single"] = interleaved_single(learn, classifier, paths, blobs,
                                                                            args.predict_n)
    classifier.close()
    print("learn.predict loop", results["learn_predict"], flush=True)
    print("engine single image", results["engine_single"], flush=True)
    results["get_preds"] = bench_get_preds(learn, paths * (4 if cuda else 1), bs=64, workers=min(16, os.cpu_count() or 1))
    print("get_preds(test_dl)", results["get_preds"], flush=True)
    del learn

    classifier = engine()
    results["engine_concurrency"] = []
    for concurrency in (1, 8, 64):
        n = total if concurrency > 1 else min(total, args.predict_n * 2)
        row = asyncio.run(concurrent_throughput(classifier, blobs, concurrency, n))
        results["engine_concurrency"].append(row)
        print("engine concurrency", row, flush=True)
    classifier.close()

    classifier = engine()
    results["engine_stream"] = stream_throughput(classifier, paths * max(1, total // len(paths)), max_batch)
    print("engine stream (CLI path)", results["engine_stream"], flush=True)
    classifier.close()

    lp = results["learn_predict"]
    best = max(r["img_s"] for r in results["engine_concurrency"])
    results["ratios"] = {
        "engine_best_throughput_vs_learn_predict": best / lp["img_s"],
        "engine_single_p50_vs_learn_predict_p50": results["engine_single"]["p50_ms"] / lp["p50_ms"],
        "engine_best_throughput_vs_get_preds": best / results["get_preds"]["img_s"],
    }
    print("ratios", results["ratios"])
    report(results, args.out)


if __name__ == "__main__":
    main()
