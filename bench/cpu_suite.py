"""Every CPU figure of issue 13 §2 in one run, the engine on torch and on ONNX Runtime side by side with
fastai's learn.predict loop and get_preds(test_dl): resnet18 at the recipe's 460/224, 1280x960 JPEGs.

    python bench/cpu_suite.py                  # about 10 minutes on 2 busy cores
    python bench/cpu_suite.py --quick          # a smoke run: fewer rounds and images
    python bench/cpu_suite.py --thread-grid    # decode threads x ONNX Runtime threads (EngineConfig's defaults)

In each round every path runs once, in turn, so that the host's drift hits all alike; figures are
medians over rounds, and ratios are taken within a round. `kimchi-train predict` and a script that
load_learner()s learner.pkl and loops learn.predict run as whole processes, start-up included.
The load average is printed too: on a shared host, it says what the figures were measured under.

The open-set check (issue 21) runs in both engines, as the bot runs it: the version gets a knn check of the
size a version trained on the 11 classes carries (bench/openset_bench.full_size_check), and a third engine,
ONNX Runtime with the check off, runs beside them in every round; its row gives the check's cost as engine
time per photo, on over off, within each round.
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
from common import (ROOT, loadavg, machine, photos, report, trained_model, whole_process,  # noqa: E402
                    write_cycled, write_photos)
from engine_bench import bench_get_preds, concurrent_throughput, stream_throughput  # noqa: E402

RUNTIMES = ("torch", "onnx")
NO_CHECK = "onnx_nocheck"  # the onnx engine with the open-set check off (EngineConfig(openset=False))
TARGETS = {"throughput": 30.0, "vs_learn_predict": 3.0, "single_p50_ratio": 0.5, "cli_ratio": 3.0,
           "top1": 0.99, "max_dp": 0.02, "openset_cost": 1.05}

LEARN_PREDICT_SCRIPT = """
import sys, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
from fastai.learner import load_learner
learn = load_learner(sys.argv[1], cpu=True)
with learn.no_bar():
    for path in sorted(Path(sys.argv[2]).glob("*.jpg")):
        label, index, probs = learn.predict(path)
        print(f"{path}: {label} {float(probs[index]):.1%}")
"""


def engine(registry, version: str, runtime: str, **overrides):
    from models.engine import Classifier, EngineConfig

    config = dict(device="cpu", cpu_runtime=runtime, max_batch=32, max_wait_ms=2.0, queue_limit=100_000)
    config.update(overrides)
    return Classifier(registry, version, EngineConfig(**config))


async def single_latencies(classifier, blobs: list[bytes]) -> list[float]:
    """One photo at a time through the bot's path (classify: queue, worker, micro-batch of one)."""
    times = []
    for data in blobs:
        start = time.perf_counter()
        await classifier.classify(data)
        times.append(time.perf_counter() - start)
    return times


def learn_predict_round(learn, paths: list[Path]) -> tuple[list[float], dict[Path, list[float]]]:
    times, probs = [], {}
    with learn.no_bar():
        for path in paths:
            start = time.perf_counter()
            _, _, p = learn.predict(path)
            times.append(time.perf_counter() - start)
            probs[path] = p.tolist()
    return times, probs


def one_round(learn, engines: dict, paths: list[Path], blobs: list[bytes], picks: list[int], total: int) -> dict:
    """Each path once: learn.predict, then per runtime single images, get_preds, throughput, stream."""
    row: dict = {}
    lp_times, lp_probs = learn_predict_round(learn, [paths[i] for i in picks])
    row["learn_predict"] = {"img_s": len(lp_times) / sum(lp_times), "p50_ms": 1000 * statistics.median(lp_times)}
    for name, classifier in engines.items():
        times = asyncio.run(single_latencies(classifier, [blobs[i] for i in picks]))
        row[f"{name}_single_p50_ms"] = 1000 * statistics.median(times)
    row["get_preds"] = bench_get_preds(learn, paths[:32], bs=32, workers=min(4, os.cpu_count() or 1))["img_s"]
    for name, classifier in engines.items():
        row[f"{name}_throughput"] = asyncio.run(concurrent_throughput(classifier, blobs, 32, total))["img_s"]
        row[f"{name}_stream"] = stream_throughput(classifier, paths, 32)["img_s"]
    row["_probs"] = lp_probs
    return row


def parity(engines: dict, reference: dict, vocab: list[str], extra: list[tuple[bytes, list[float]]]) -> dict:
    """Top-1 agreement and max |Δp| of each runtime against learn.predict, and of onnx against torch."""
    import numpy as np

    blobs = [p.read_bytes() for p in reference] + [data for data, _ in extra]
    ref = np.array(list(reference.values()) + [p for _, p in extra])
    out, probs = {}, {}
    for name, classifier in engines.items():
        results = classifier.classify_batch(blobs)
        probs[name] = np.array([[dict(r.top)[label] for label in vocab] for r in results])
        delta = np.abs(probs[name] - ref)
        out[name] = {"images": len(blobs), "top1": float((probs[name].argmax(1) == ref.argmax(1)).mean()),
                     "max_dp": float(delta.max()), "median_dp": float(np.median(delta.max(1)))}
    if {"torch", "onnx"} <= probs.keys():
        out["onnx_vs_torch_max_dp"] = float(np.abs(probs["onnx"] - probs["torch"]).max())
        out["onnx_vs_torch_top1"] = float((probs["onnx"].argmax(1) == probs["torch"].argmax(1)).mean())
    out["reference_mean_top1_prob"] = float(ref.max(1).mean())
    return out


def varied_reference(learn, n: int) -> list[tuple[bytes, list[float]]]:
    """learn.predict on varied images (sizes, aspect ratios, EXIF, formats), as the parity bench does."""
    from fastai.vision.core import PILImage

    from models.preprocess import decode_rgb
    from tests.imagegen import varied_images

    out = []
    with learn.no_bar():
        for data in varied_images(n):
            out.append((data, learn.predict(PILImage(decode_rgb(data)))[2].tolist()))
    return out


def cli_versus_script(home: Path, pkl: Path, folder: Path, rounds: int) -> dict:
    """`kimchi-train predict FOLDER` against `python -c <load_learner + learn.predict loop>`, whole processes,
    alternating (ABBA) so that neither always runs on the warmer or quieter host."""
    # The entry point pip wrote beside this interpreter, not the first on PATH: a pyenv shim there adds
    # ~1 s of bash to every start, which the script's `python -c` does not pay.
    cli = Path(sys.executable).with_name("kimchi-train")
    cli_cmd = ([str(cli)] if cli.is_file() else [sys.executable, "-m", "training.cli"]) + ["--home", str(home), "predict", str(folder)]
    script_cmd = [sys.executable, "-c", LEARN_PREDICT_SCRIPT, str(pkl), str(folder)]
    n = len(list(folder.glob("*.jpg")))
    times: dict[str, list[float]] = {"cli": [], "script": []}
    for r in range(rounds):
        order = [("cli", cli_cmd), ("script", script_cmd)]
        for name, cmd in (order if r % 2 == 0 else order[::-1]):
            seconds, stdout = whole_process(cmd, env={"PYTHONPATH": str(ROOT)})
            lines = [line for line in stdout.splitlines() if line.strip()]
            if len(lines) != n:
                raise RuntimeError(f"{name} printed {len(lines)} lines for {n} images")
            times[name].append(seconds)
            print(f"  {name}: {n} images in {seconds:.1f} s ({n / seconds:.1f} img/s, whole process)", flush=True)
    cli_s, script_s = statistics.median(times["cli"]), statistics.median(times["script"])
    return {"images": n, "cli_s": cli_s, "script_s": script_s, "ratio": script_s / cli_s, "runs": times}


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] if not isinstance(r[key], dict) else r[key]["img_s"] for r in rows)


def summary(rows: list[dict]) -> dict:
    lp = [r["learn_predict"] for r in rows]
    out = {"learn_predict_img_s": statistics.median(x["img_s"] for x in lp),
           "learn_predict_p50_ms": statistics.median(x["p50_ms"] for x in lp),
           "get_preds_img_s": median_of(rows, "get_preds")}
    for name in RUNTIMES:
        if f"{name}_throughput" not in rows[0]:
            continue
        out[name] = {
            "throughput_img_s": median_of(rows, f"{name}_throughput"),
            "stream_img_s": median_of(rows, f"{name}_stream"),
            "single_p50_ms": median_of(rows, f"{name}_single_p50_ms"),
            "vs_learn_predict": statistics.median(
                max(r[f"{name}_throughput"], r[f"{name}_stream"]) / r["learn_predict"]["img_s"] for r in rows),
            "vs_get_preds": statistics.median(
                max(r[f"{name}_throughput"], r[f"{name}_stream"]) / r["get_preds"] for r in rows),
            "single_p50_ratio": statistics.median(
                r[f"{name}_single_p50_ms"] / r["learn_predict"]["p50_ms"] for r in rows),
        }
    if f"{NO_CHECK}_throughput" in rows[0]:  # engine time per photo, check on over off, within each round
        out["openset_cost"] = {
            "throughput_ratio": statistics.median(r[f"{NO_CHECK}_throughput"] / r["onnx_throughput"] for r in rows),
            "stream_ratio": statistics.median(r[f"{NO_CHECK}_stream"] / r["onnx_stream"] for r in rows),
            "single_p50_ratio": statistics.median(r["onnx_single_p50_ms"] / r[f"{NO_CHECK}_single_p50_ms"] for r in rows),
        }
    return out


def print_table(s: dict, par: dict, cli: dict | None) -> None:
    def mark(ok: bool) -> str:
        return "yes" if ok else "NO"

    t = TARGETS
    print("\n| measure | torch engine | onnx engine | target | met (onnx) |")
    print("|---|---|---|---|---|")
    o, tr = s.get("onnx", {}), s.get("torch", {})
    best = lambda d: max(d.get("throughput_img_s", 0), d.get("stream_img_s", 0))  # noqa: E731
    print(f"| engine throughput, end to end (bot path / CLI stream) | {tr.get('throughput_img_s', 0):.1f} / "
          f"{tr.get('stream_img_s', 0):.1f} img/s | {o.get('throughput_img_s', 0):.1f} / {o.get('stream_img_s', 0):.1f} "
          f"img/s | ≥ {t['throughput']:.0f} img/s | {mark(best(o) >= t['throughput'])} |")
    print(f"| throughput vs learn.predict loop ({s['learn_predict_img_s']:.1f} img/s) | {tr.get('vs_learn_predict', 0):.2f}× "
          f"| {o.get('vs_learn_predict', 0):.2f}× | ≥ {t['vs_learn_predict']:.0f}× | {mark(o.get('vs_learn_predict', 0) >= t['vs_learn_predict'])} |")
    print(f"| throughput vs get_preds ({s['get_preds_img_s']:.1f} img/s) | {tr.get('vs_get_preds', 0):.2f}× "
          f"| {o.get('vs_get_preds', 0):.2f}× | — | |")
    print(f"| single-image p50 (learn.predict {s['learn_predict_p50_ms']:.0f} ms) | {tr.get('single_p50_ms', 0):.0f} ms = "
          f"{tr.get('single_p50_ratio', 0):.2f}× | {o.get('single_p50_ms', 0):.0f} ms = {o.get('single_p50_ratio', 0):.2f}× "
          f"| ≤ {t['single_p50_ratio']}× | {mark(o.get('single_p50_ratio', 9) <= t['single_p50_ratio'])} |")
    if cli:
        print(f"| `kimchi-train predict` {cli['images']} images vs learn.predict script, whole processes | — | "
              f"{cli['cli_s']:.1f} s vs {cli['script_s']:.1f} s = {cli['ratio']:.2f}× | ≥ {t['cli_ratio']:.0f}× "
              f"| {mark(cli['ratio'] >= t['cli_ratio'])} |")
    if "openset_cost" in s:
        c = s["openset_cost"]
        worst = max(c["throughput_ratio"], c["stream_ratio"], c["single_p50_ratio"])
        print(f"| open-set check on vs off (knn, full bank): engine time per photo, bot path / CLI stream / single "
              f"p50 | — | {c['throughput_ratio']:.3f}× / {c['stream_ratio']:.3f}× / {c['single_p50_ratio']:.3f}× "
              f"| ≤ {t['openset_cost']:.2f}× | {mark(worst <= t['openset_cost'])} |")
    po, pt = par.get("onnx", {}), par.get("torch", {})
    print(f"| parity vs learn.predict ({po.get('images', 0)} images): top-1, max \\|Δp\\| | {pt.get('top1', 0):.1%}, "
          f"{pt.get('max_dp', 0):.1e} | {po.get('top1', 0):.1%}, {po.get('max_dp', 0):.1e} | ≥ 99%, ≤ 0.02 | "
          f"{mark(po.get('top1', 0) >= t['top1'] and po.get('max_dp', 1) <= t['max_dp'])} |")
    if "onnx_vs_torch_max_dp" in par:
        print(f"| onnx vs torch engine: top-1, max \\|Δp\\| | — | {par['onnx_vs_torch_top1']:.1%}, "
              f"{par['onnx_vs_torch_max_dp']:.1e} | export check ≤ 1e-4 | |")


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_grid(registry, version: str, blobs: list[bytes], rounds: int, total: int) -> None:
    """Throughput and single p50 of the onnx engine for each (decode threads, ORT threads), interleaved."""
    from models.device import usable_cpus
    from models.engine import EngineConfig, thread_plan

    cpus = usable_cpus()
    choices = sorted({1, max(1, cpus // 2), cpus, cpus + 1})
    grid = [(d, t) for d in choices for t in choices if t <= cpus]
    print(f"default plan on this machine ({cpus} CPUs): decode, ORT = {thread_plan(EngineConfig())}")
    engines = {k: engine(registry, version, "onnx", decode_threads=k[0], runtime_threads=k[1]) for k in grid}
    engines["torch"] = engine(registry, version, "torch")
    rows: dict = {k: [] for k in engines}
    for r in range(rounds):
        for k, classifier in engines.items():
            cpu = cpu_seconds()
            thr = asyncio.run(concurrent_throughput(classifier, blobs, 32, total))["img_s"]
            cpu_ms = 1000 * (cpu_seconds() - cpu) / total  # CPU per image: what contention cannot hide
            p50 = 1000 * statistics.median(asyncio.run(single_latencies(classifier, blobs[:8])))
            rows[k].append((thr, p50, cpu_ms))
            print(f"round {r} {k}: {thr:.1f} img/s, {cpu_ms:.0f} ms CPU/img, single p50 {p50:.0f} ms "
                  f"(load {loadavg()})", flush=True)
    print("\n| decode threads, ORT threads | throughput | CPU per image | single p50 |\n|---|---|---|---|")
    for k, values in rows.items():
        print(f"| {k} | {statistics.median(v[0] for v in values):.1f} img/s | {statistics.median(v[2] for v in values):.0f} ms "
              f"| {statistics.median(v[1] for v in values):.0f} ms |")
    for classifier in engines.values():
        classifier.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="reuse a trained home (default: a temp folder)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=16, help="learn.predict and single-image calls per round")
    parser.add_argument("--total", type=int, default=96, help="images per throughput measurement")
    parser.add_argument("--varied", type=int, default=48, help="extra varied images for parity")
    parser.add_argument("--cli-images", type=int, default=904)
    parser.add_argument("--cli-rounds", type=int, default=1, help="whole-process runs of each, alternating")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 8, 48 per throughput, 96 CLI images")
    parser.add_argument("--thread-grid", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_round, args.total, args.varied, args.cli_images, args.cli_rounds = 2, 8, 48, 12, 96, 1

    import onnxruntime
    from fastai.learner import load_learner

    from models.onnx_export import ONNX, export_onnx

    started = time.perf_counter()
    home = Path(args.home or tempfile.mkdtemp(prefix="kimchi-cpu-suite-"))
    registry, version = trained_model(home)
    folder = registry.path(version)
    results: dict = {"machine": {**machine(), "onnxruntime": onnxruntime.__version__}, "model": version,
                     "image": "1280x960 JPEG q87", "arch": "resnet18 460/224", "load_at_start": loadavg()}
    print(f"machine {results['machine']}; load average {results['load_at_start']}; home {home}", flush=True)
    if not (folder / ONNX).is_file():  # a home trained before publishing wrote model.onnx
        export = export_onnx(folder)
        print(f"exported {ONNX} in {export.seconds:.1f} s, max |dp| {export.max_dp:.1e}", flush=True)
    blobs = photos(max(64, args.per_round * args.rounds))
    paths = write_photos(home / "photos", blobs)

    if args.thread_grid:
        thread_grid(registry, version, blobs[:64], args.rounds, args.total)
        return

    from openset_bench import full_size_check

    full_size_check(folder, "knn").save(folder)  # the check a version trained on the 11 classes carries
    engines = {name: engine(registry, version, name) for name in RUNTIMES}
    engines[NO_CHECK] = engine(registry, version, "onnx", openset=False)
    for name, classifier in engines.items():
        assert classifier.runtime == name.split("_")[0], (name, classifier.runtime)
    learn = load_learner(folder / "learner.pkl", cpu=True)
    learn_predict_round(learn, paths[:2])  # first calls pay one-off set-up costs on every path
    for classifier in engines.values():
        asyncio.run(single_latencies(classifier, blobs[:2]))
    rows, reference = [], {}
    for r in range(args.rounds):
        picks = list(range(r * args.per_round, (r + 1) * args.per_round))
        row = one_round(learn, engines, paths, blobs, picks, args.total)
        reference.update(row.pop("_probs"))
        rows.append(row)
        print(f"round {r}: " + ", ".join(f"{k} {v['img_s'] if isinstance(v, dict) else v:.1f}" for k, v in row.items())
              + f"  (load {loadavg()})", flush=True)
    results["rounds"] = rows
    results["summary"] = summary(rows)
    extra = varied_reference(learn, args.varied) if args.varied else []
    full = {name: engine(registry, version, name, top_k=100) for name in RUNTIMES}  # every class's probability
    results["parity"] = parity(full, reference, [str(v) for v in learn.dls.vocab], extra)
    for classifier in full.values():
        classifier.close()
    print("parity", results["parity"], flush=True)
    del learn
    for classifier in engines.values():
        classifier.close()

    results["cli"] = None
    if args.cli_images:
        cli_folder = home / f"cli{args.cli_images}"
        if not cli_folder.is_dir():
            write_cycled(cli_folder, blobs, args.cli_images)
        print(f"whole processes on {args.cli_images} images ({len(blobs)} distinct photos, cycled):", flush=True)
        results["cli"] = cli_versus_script(home, folder / "learner.pkl", cli_folder, args.cli_rounds)
    results["load_at_end"] = loadavg()
    results["seconds"] = time.perf_counter() - started
    print(f"\nresnet18 460/224, 1280x960 JPEGs, {os.cpu_count()} CPUs; load average {results['load_at_start']} at "
          f"start, {results['load_at_end']} at end; {results['seconds'] / 60:.1f} min")
    print_table(results["summary"], results["parity"], results["cli"])
    report(results, args.out)


if __name__ == "__main__":
    main()
