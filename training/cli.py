"""`kimchi-train`: import data, train the recipe, evaluate, predict and manage model versions.

A thin layer: each subcommand parses its flags and calls one function. Bad input ends in one sentence on
stderr and a non-zero exit; tracebacks go to KIMCHI_HOME/logs/kimchi-train.log.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from models.errors import KimchiError
from models.home import Home, private_umask
from models.logs import setup_logging
from models.protocol import ErrorEvent, Stage, StageEvent
from models.recipe_flags import add_recipe_args
from models.registry import Registry
from models.types import CPU_RUNTIMES

log = logging.getLogger("training.cli")


# ---------------------------------------------------------------------------------------------
# shared flags

def recipe_from_args(args: argparse.Namespace):
    from training.recipe import Recipe

    values = {name: getattr(args, name) for name in Recipe.field_names() if getattr(args, name, None) is not None}
    return Recipe.from_preset(getattr(args, "preset", "blog"), **values)


def registry_for(args: argparse.Namespace, home: Home) -> Registry:
    return Registry(Path(args.models_dir).expanduser() if getattr(args, "models_dir", None) else home.models)


# ---------------------------------------------------------------------------------------------
# commands

def cmd_import(args: argparse.Namespace, home: Home) -> int:
    from training.importer import import_dataset

    home.ensure()
    dest = Path(args.dest).expanduser() if args.dest else home.base
    summary = import_dataset(Path(args.src).expanduser(), dest, per_class=args.per_class, crop=args.crop,
                             presize=args.presize, allow_new_classes=args.allow_new_classes, workers=args.workers,
                             negatives=args.negatives, negatives_per_dish=args.negatives_per_dish)
    for line in summary.lines():
        print(line)
    if summary.total_added == 0 and not sum(summary.duplicates.values()):
        raise KimchiError(f"No image in {args.src} could be imported.")
    return 0


def cmd_train(args: argparse.Namespace, home: Home) -> int:
    from training.datafolder import count_classes

    home.ensure()
    recipe = recipe_from_args(args)
    recipe.validate()
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else home.base
    count_classes(data_dir)  # a wrong folder fails here, before fastai is imported
    if args.cache:
        from training.datafolder import presize_large

        presize_large(data_dir, recipe.presize, Path(args.cache).expanduser())
    from training import distributed

    if args.gpus > 1 and not distributed.launched():  # this process starts the N that train, and waits
        distributed.check_gpus(args.gpus, recipe.device)
        return distributed.launch(args.argv, args.gpus)
    from training.progress import Progress
    from training.train import train

    registry = registry_for(args, home)
    progress = Progress(args.progress if distributed.is_main() else "quiet")  # rank 0 alone reports
    baseline = registry.current()  # the model serving before this run, for --holdout
    try:
        if args.holdout:  # a wrong KIMCHI_CPU_RUNTIME is said before the training, not after it
            from models.engine import cpu_runtime_from_env

            cpu_runtime_from_env()
        outcome = train(data_dir, recipe, registry, progress)
        if outcome is None:  # a launched process other than rank 0: its share is done, rank 0 publishes
            return 0
        if args.holdout:
            from training.compare import compare_on_holdout

            progress.emit(StageEvent(stage=Stage.SCORING))
            progress.emit(compare_on_holdout(registry, outcome.version, baseline, Path(args.holdout),
                                             Path(args.report_dir) if args.report_dir else outcome.path / "report",
                                             device=recipe.device))
    except KimchiError as err:
        progress.emit(ErrorEvent(message=str(err)))
        raise
    if args.progress != "json":
        m = outcome.meta.metrics
        print(f"kept epoch {outcome.meta.kept_epoch} of {recipe.total_epochs}: accuracy {m['accuracy']:.3f}, "
              f"macro F1 {m['f1_macro']:.3f}; {outcome.version} "
              f"({'current' if registry.current() == outcome.version else 'not current: kimchi-train promote ' + outcome.version})")
    print(outcome.path)
    return 0


def cmd_evaluate(args: argparse.Namespace, home: Home) -> int:
    from training.evaluate import evaluate_version

    registry = registry_for(args, home)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else home.base
    negatives = _collect([args.negatives]) if args.negatives else []
    if args.negatives and not negatives:
        raise KimchiError(f"No images found in {args.negatives}.")
    folder, metrics = evaluate_version(registry, args.version, data_dir, out=Path(args.out) if args.out else None,
                                       tta=args.tta, test=args.test, pictures=not args.no_pictures, bs=args.bs,
                                       negatives=negatives)
    print(f"accuracy {metrics['accuracy']:.4f}  error_rate {metrics['error_rate']:.4f}  "
          f"macro precision {metrics['precision_macro']:.4f}  recall {metrics['recall_macro']:.4f}  "
          f"F1 {metrics['f1_macro']:.4f}  (n={metrics['n']})")
    if "tta" in metrics:
        t = metrics["tta"]
        print(f"with TTA: accuracy {t['accuracy']:.4f}  error_rate {t['error_rate']:.4f}  F1 {t['f1_macro']:.4f}")
    for line in metrics.get("openset_lines", []):
        print(line)
    print(folder)
    return 0


def cmd_calibrate(args: argparse.Namespace, home: Home) -> int:
    from training.calibrate import calibrate_version, write_histogram

    registry = registry_for(args, home)
    negatives = _collect([args.negatives]) if args.negatives else []
    name, calibration = calibrate_version(registry, args.version, Path(args.data).expanduser() if args.data else None,
                                          method=args.method, keep=args.keep, k=args.k, device=args.device,
                                          negatives=negatives)
    for line in calibration.lines():
        print(line)
    png = write_histogram(calibration, registry.path(name) / "report", title=f"{name}, valid split")
    print(f"{registry.path(name) / 'openset.safetensors'} written; histogram {png}")
    if registry.current() == name:
        print("The bot uses it from its next start (or the next model it loads).")
    return 0


def _collect(paths: Sequence[str]) -> list[Path]:
    from models.datafiles import image_files

    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files.extend(image_files(path))
        else:
            files.append(path)  # named explicitly: a missing or bad file gets its own error line
    return files


def cmd_predict(args: argparse.Namespace, home: Home) -> int:
    from models.engine import Classifier, EngineConfig, cpu_runtime_from_env

    files = _collect(args.paths)
    if not files:
        raise KimchiError(f"No images found in {' '.join(args.paths)}.")
    config = EngineConfig(device=args.device, max_batch=args.batch_size, top_k=args.top,
                          cpu_runtime=args.cpu_runtime or cpu_runtime_from_env())
    classifier = Classifier(registry_for(args, home), args.model, config)
    started = time.perf_counter()
    ok = errors = 0
    try:
        loaders: list[Callable[[], bytes]] = [(lambda p=p: p.read_bytes()) for p in files]
        for path, result in zip(files, classifier.classify_stream(loaders)):
            if result.ok:
                ok += 1
                if args.json:
                    print(json.dumps(prediction_json(path, result), ensure_ascii=False))
                else:
                    print(prediction_line(path, result))
            else:
                errors += 1
                if args.json:
                    print(json.dumps({"file": str(path), "error": result.message, "reason": result.reason}, ensure_ascii=False))
                else:
                    print(f"{path}: error: {result.message}")
            sys.stdout.flush()
    finally:
        classifier.close()
    elapsed = time.perf_counter() - started
    print(f"classified {ok} images in {elapsed:.2f} s: {ok / elapsed if elapsed else 0:.1f} img/s "
          f"(model {classifier.version}, device {classifier.device}, {classifier.runtime}, batch {args.batch_size}); "
          f"{errors} errors",
          file=sys.stderr)
    return 0 if ok else 1


def prediction_json(path: Path, result) -> dict:
    """One line of `predict --json`. `label` is the answer (not_kimchi when the head or the open-set check says
    so), `confidence` its probability under the head (null when the check alone decided), `closest` the most
    probable kimchi, `openset` the score and threshold (null for a version without the check)."""
    confidence = dict(result.top).get(result.answer)
    closest = result.closest
    return {"file": str(path), "label": result.answer, "kimchi": not result.not_kimchi,
            "confidence": None if confidence is None else round(confidence, 6),
            "closest": None if closest is None else [closest[0], round(closest[1], 6)],
            "openset": None if result.openset is None else {"score": round(result.openset, 6),
                                                            "threshold": round(result.threshold, 6)},
            "top": [[l, round(p, 6)] for l, p in result.top], "model": result.version}


def prediction_line(path: Path, result) -> str:
    top = ", ".join(f"{l} {p:.1%}" for l, p in result.top)
    if not result.not_kimchi:
        return f"{path}: {result.label} {result.confidence:.1%}  (top: {top})"
    why = []
    if result.label == "not_kimchi":
        why.append(f"not_kimchi {result.confidence:.1%}")
    if result.far:
        why.append(f"open-set score {result.openset:.3f} > {result.threshold:.3f}")
    closest = result.closest
    near = f"; closest kimchi {closest[0]} {closest[1]:.1%}" if closest else ""
    return f"{path}: not_kimchi ({', '.join(why)}{near})  (top: {top})"


def cmd_models(args: argparse.Namespace, home: Home) -> int:
    registry = registry_for(args, home)
    infos = registry.list()
    if not infos:
        print(f"No model versions in {registry.root} yet; train one with: kimchi-train train")
        return 0
    print(f"{'':2}{'version':8} {'arch':18} {'accuracy':>8} {'macroF1':>8} {'epoch':>5} {'images':>7}  created")
    for info in infos:
        mark = "* " if info.current else "  "
        if info.meta is None:
            print(f"{mark}{info.name:8} damaged: {info.problem}")
            continue
        m = info.meta.metrics
        acc = f"{m['accuracy']:.3f}" if isinstance(m.get("accuracy"), (int, float)) else "-"
        f1 = f"{m['f1_macro']:.3f}" if isinstance(m.get("f1_macro"), (int, float)) else "-"
        n = sum((info.meta.dataset.get("counts") or {}).values()) or "-"
        print(f"{mark}{info.name:8} {info.meta.arch:18} {acc:>8} {f1:>8} {str(info.meta.kept_epoch or '-'):>5} "
              f"{str(n):>7}  {info.meta.created_at}")
    print("* = current")
    return 0


def cmd_promote(args: argparse.Namespace, home: Home) -> int:
    registry = registry_for(args, home)
    version = registry.resolve(args.version)
    previous = registry.promote(version, reason="kimchi-train promote", by=os.environ.get("USER"))
    print(f"{version} is now current (was {previous or 'none'}).")
    return 0


def cmd_rollback(args: argparse.Namespace, home: Home) -> int:
    registry = registry_for(args, home)
    before = registry.current()
    version = registry.rollback(by=os.environ.get("USER"))
    print(f"{version} is now current (was {before}).")
    return 0


def cmd_export_dataset(args: argparse.Namespace, home: Home) -> int:
    from training.export import export_dataset

    statuses = ("accepted", "pending", "rejected") if args.status == ["all"] else tuple(args.status or ["accepted"])
    where, counts = export_dataset(home, Path(args.out).expanduser(), statuses, args.holdout_pct, args.zip)
    print(", ".join(f"{split}: {n}" for split, n in sorted(counts.items())))
    print(where)
    return 0


def cmd_backup(args: argparse.Namespace, home: Home) -> int:
    from models.backup import backup

    result = backup(home, Path(args.out), all_versions=args.all_versions)
    print(f"{result.labels} labels, {result.files} files ({result.bytes / 1e6:.1f} MB), models: "
          f"{', '.join(result.versions) or 'none'}; {result.seconds:.1f} s")
    print(result.path)
    return 0


def cmd_restore(args: argparse.Namespace, home: Home) -> int:
    from models.backup import restore

    result = restore(Path(args.archive), home)
    print(f"restored {result.labels} labels, {result.files} files into {result.home} in {result.seconds:.1f} s; "
          f"start the bot with KIMCHI_HOME={result.home} (kimchi-bot --check first)")
    return 0


def cmd_import_model(args: argparse.Namespace, home: Home) -> int:
    from training.convert import import_fastai_export

    pkl = Path(args.file).expanduser()
    if not pkl.is_file():
        raise KimchiError(f"{pkl} does not exist.")
    if not args.trust_pickle:
        raise KimchiError(f"{pkl.name} was not loaded: a .pkl file is a pickle, and loading a pickle runs whatever "
                          f"code its author put in it, as you; if you trust where it came from, run this again "
                          f"with --trust-pickle.")
    home.ensure()
    kept = "the pickle is kept as learner.pkl beside it" if args.keep_pickle else "the pickle is not kept"
    print(f"warning: loading {pkl.name}, a pickle, runs the code in it; this happens in a separate process whose "
          f"environment holds no token or KIMCHI_ setting. The result is stored in the safe format "
          f"(safetensors + meta.json); {kept}.", file=sys.stderr)
    version, path = import_fastai_export(pkl, registry_for(args, home), keep_pickle=args.keep_pickle)
    print(f"imported as {version}")
    print(path)
    return 0


def cmd_export_onnx(args: argparse.Namespace, home: Home) -> int:
    from models.onnx_export import ONNX, export_onnx

    registry = registry_for(args, home)
    names = registry.versions() if args.all else [registry.resolve(args.version)]
    for name in names:
        result = export_onnx(registry.path(name))
        if not result.written:
            raise KimchiError(f"{registry.path(name) / ONNX} could not be written; see the log.")
        print(f"{name}: {ONNX} written in {result.seconds:.1f} s; max |dp| vs torch {result.max_dp:.1e} "
              f"on {result.images} {result.source}")
    return 0


def cmd_lr_find(args: argparse.Namespace, home: Home) -> int:
    from training.lrfind import run_lr_find

    recipe = recipe_from_args(args)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else home.base
    out = Path(args.out).expanduser() if args.out else home.root / "lr_find.png"
    suggestions = run_lr_find(data_dir, recipe, out)
    for name, value in suggestions.items():
        print(f"{name:8} {value:.2e}")
    print(out)
    return 0


def cmd_experiments(args: argparse.Namespace, home: Home) -> int:
    from training.experiments import run_grid

    home.ensure()
    out = run_grid(Path(args.config).expanduser(), home, out=Path(args.out).expanduser() if args.out else None,
                   force=args.force, only=args.only, source=Path(args.source).expanduser() if args.source else None,
                   tta=args.tta)
    print(out / "results.md")
    return 0


def cmd_audit(args: argparse.Namespace, home: Home) -> int:
    from training.audit import audited_event, read_items, run_audit
    from training.progress import Progress

    out = Path(args.out).expanduser() if args.out else home.root / "audit"
    if args.items:
        shas, data = read_items(Path(args.items).expanduser())
    else:
        shas, data = None, Path(args.data_dir).expanduser() if args.data_dir else home.base
    progress = Progress(args.progress)
    try:
        result = run_audit(data, registry_for(args, home), args.model, out, folds=args.folds, device=args.device)
    except KimchiError as err:
        progress.emit(ErrorEvent(message=str(err)))
        raise
    if progress.json:
        progress.emit(audited_event(result, shas))
    else:
        print(result.summary())
    return 0


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimchi-train", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--home", help="KIMCHI_HOME (default: $KIMCHI_HOME or ~/.kimchi)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("import", help="import a folder-per-class dataset or AI Hub's kfood folders")
    p.add_argument("src")
    p.add_argument("--per-class", type=int, metavar="N", help="keep the first N images of each class (sorted)")
    p.add_argument("--crop", action="store_true", help="crop to the boxes in crop_area.properties")
    p.add_argument("--presize", type=int, default=460, metavar="PX",
                   help="store with the shorter side at PX (default 460; 0 keeps the size)")
    p.add_argument("--allow-new-classes", action="store_true", help="also import folders that are not kimchi classes")
    p.add_argument("--negatives", type=int, metavar="N",
                   help="also import about N photos of the other dishes (every folder that is no kimchi, e.g. the rest "
                        "of AI Hub's kfood/) into not_kimchi, the same number from each dish")
    p.add_argument("--negatives-per-dish", type=int, default=50, metavar="N",
                   help="at most N negatives from any one dish (50)")
    p.add_argument("--dest", help="target folder (default KIMCHI_HOME/data/base)")
    p.add_argument("--workers", type=int, help="decoder processes (default: one per CPU)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("train", help="train the recipe and publish a new model version", allow_abbrev=False)
    p.add_argument("data_dir", nargs="?", help="folder per class (default KIMCHI_HOME/data/base)")
    add_recipe_args(p)
    p.add_argument("--models-dir", help="registry folder (default KIMCHI_HOME/models)")
    p.add_argument("--progress", choices=["auto", "bar", "plain", "json", "quiet"], default="auto",
                   help="auto (default): bars at a terminal, plain lines otherwise; json: the trainer protocol")
    p.add_argument("--holdout", metavar="FILE", help="JSON lines {path, label, source}: score the new version and "
                   "the current one on them (used by /retrain)")
    p.add_argument("--report-dir", help="where --holdout writes compare.json and its confusion matrix")
    p.add_argument("--cache", metavar="DIR", help="first replace images larger than --presize in DATA_DIR by "
                   "presized copies kept in DIR (by content hash; used by /retrain for users' full-size photos)")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="train in N processes, one per GPU, under `accelerate launch` (with --device cpu: N CPU "
                        "processes); rank 0 writes the version")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="report and pictures for a version on a data folder")
    p.add_argument("version", nargs="?", default="current")
    p.add_argument("data_dir", nargs="?")
    p.add_argument("--out", help="folder for the report (default: the version's report/)")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation (learn.tta)")
    p.add_argument("--test", action="store_true", help="use every image, not the validation split")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--negatives", metavar="DIR",
                   help="photos that are no kimchi: the share the open-set check catches, in the report")
    p.add_argument("--bs", type=int)
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="make or remake VERSION's open-set check (\"not kimchi\") on its own "
                                         "validation images; versions published before the check need this once")
    p.add_argument("version", nargs="?", default="current")
    p.add_argument("--data", metavar="DIR", help="the folder the version was trained on (default: the one it records)")
    p.add_argument("--method", choices=["knn", "mahalanobis"], default="knn", help="the score (knn)")
    p.add_argument("--keep", type=float, default=0.95, metavar="SHARE",
                   help="share of validation kimchi answered as kimchi (0.95)")
    p.add_argument("--k", type=int, default=5, help="knn: the k-th nearest training image (5)")
    p.add_argument("--negatives", metavar="DIR", help="photos that are no kimchi: report the share caught")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("predict", help="classify image files or folders (recursively)")
    p.add_argument("paths", nargs="+", metavar="FILES_OR_DIRS")
    p.add_argument("--model", default="current", metavar="VERSION")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.add_argument("--top", type=int, default=3, metavar="K")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cpu-runtime", choices=CPU_RUNTIMES,
                   help="what runs the model on the CPU (default: KIMCHI_CPU_RUNTIME, else auto: model.onnx "
                        "on ONNX Runtime when it can be had, else torch)")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list model versions; * marks the current one")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("promote", help="make VERSION current (atomic)")
    p.add_argument("version")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="return to the version that was current before")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("export-dataset", help="the bot's dataset as an ImageFolder tree with metadata.csv")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--status", action="append", choices=["accepted", "pending", "rejected", "all"],
                   help="labels with this status (repeatable; default accepted)")
    p.add_argument("--holdout-pct", type=float, default=10.0,
                   help="for images no retrain has placed yet: the bot's KIMCHI_HOLDOUT_PCT (10)")
    p.add_argument("--zip", action="store_true", help="also pack OUT into OUT.zip")
    p.set_defaults(func=cmd_export_dataset)

    p = sub.add_parser("backup", help="one archive of the database (consistent while the bot runs), users' photos, "
                                      "the serving model and the holdout key")
    p.add_argument("out", nargs="?", default=".", help="a folder (a dated .tar in it) or a file name (default: .)")
    p.add_argument("--all-versions", action="store_true", help="every model version, not only the serving one")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="a backup into an empty KIMCHI_HOME (--home DIR), every file checked")
    p.add_argument("archive")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("import-model", help="convert a fastai learn.export() .pkl to the safe format")
    p.add_argument("file")
    p.add_argument("--trust-pickle", action="store_true",
                   help="required: loading a pickle runs the code in it (done in a process without the token "
                        "or any KIMCHI_ setting in its environment)")
    p.add_argument("--keep-pickle", action="store_true",
                   help="also keep the file as the version's learner.pkl (default: only safetensors + meta.json)")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_import_model)

    p = sub.add_parser("export-onnx", help="write VERSION's model.onnx for the CPU runtime, checked against torch")
    p.add_argument("version", nargs="?", default="current")
    p.add_argument("--all", action="store_true", help="every version")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("lr-find", help="fastai's lr_find: suggested learning rates and the plot")
    p.add_argument("data_dir", nargs="?")
    add_recipe_args(p)
    p.add_argument("--out", help="PNG path (default KIMCHI_HOME/lr_find.png)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("experiments", help="run a grid of named recipes from a TOML file")
    p.add_argument("config")
    p.add_argument("--out", help="results folder (default KIMCHI_HOME/experiments/<config name>)")
    p.add_argument("--force", action="store_true", help="re-run finished runs too")
    p.add_argument("--only", action="append", metavar="RUN", help="run only this run (repeatable)")
    p.add_argument("--source", help="AI Hub folders to import for the grid (overrides [defaults] source)")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation accuracy")
    p.set_defaults(func=cmd_experiments)

    p = sub.add_parser("audit", help="find suspect labels, outliers and near-duplicates (cleanlab on the model's embeddings)")
    p.add_argument("data_dir", nargs="?", help="folder per class (default KIMCHI_HOME/data/base)")
    p.add_argument("--model", default="current", metavar="VERSION", help="the version whose body embeds the images")
    p.add_argument("--out", help="folder for audit.csv and suspects.png (default KIMCHI_HOME/audit)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="folds of the out-of-fold logistic regression (5)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--items", metavar="FILE", help="audit the images listed in FILE (JSON lines {path, label, sha256}, "
                   "and users: [ids] for a user's label) instead of a folder (used by /retrain)")
    p.add_argument("--progress", choices=["auto", "json", "quiet"], default="auto",
                   help="json: one `audited` protocol event with flags and near-duplicate groups by sha256")
    p.add_argument("--models-dir")
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    umask = private_umask()  # KIMCHI_HOME and all in it owner-only, whatever umask we were started with
    try:
        return _main(argv)
    finally:
        os.umask(umask)  # for callers that run main() in-process (tests)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --gpus N` runs it again under accelerate
    home = Home.from_env(args.home)
    # a restore needs its home empty: it logs to the console only
    log_file = None if args.command == "restore" else home.logs / "kimchi-train.log"
    setup_logging(log_file, logging.DEBUG if args.verbose else logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        return args.func(args, home)
    except KimchiError as err:
        log.info("failed: %s", err)
        print(f"kimchi-train {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kimchi-train {args.command}: interrupted; nothing half-written was published.", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one sentence here, the traceback in the log
        log.exception("unexpected failure in %s", args.command)
        print(f"kimchi-train {args.command}: unexpected error ({err.__class__.__name__}: {err}); "
              f"the traceback is in {home.logs / 'kimchi-train.log'}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
