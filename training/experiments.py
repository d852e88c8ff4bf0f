"""`kimchi-train experiments CONFIG.toml`: the blog's experiment table as a reproducible grid.

    [defaults]                      # shared by every run: the same data, split and seed
    source = "~/data/kfood/김치"     # AI Hub folders (needed for crop = true), or: data = "<folder per class>"
    per_class = 500
    seed = 42
    valid_pct = 0.2

    [[run]]
    name = "resnet50-heavy-aug"
    arch = "resnet50"
    flip_vert = true
    max_rotate = 20
    fine_tune = { epochs = 3, freeze_epochs = 1, base_lr = 1e-4, pct_start = 0.3 }
    fit_one_cycle = { cycles = 2, lr_max = 1e-4 }

Each run's result is cached under its config hash: running the file again re-runs only runs whose
config changed, and an interrupted grid resumes where it stopped. Output: results.md and results.csv
(one row per run, the best named), and each run's report folder.

The open-set check ("not kimchi", models/openset.py) is compared as rows too (experiments/openset.toml):

    [defaults]
    data = "~/.kimchi/data/base"   # a not_kimchi folder in it holds the negatives
    unseen = "~/data/unseen"       # photos no run trains or calibrates on (see below)
    openset = ["head", "softmax", "energy", "knn", "mahalanobis"]
    keep = 0.95

    [[run]]
    name = "with-negatives"

    [[run]]
    name = "kimchi-only"
    negatives = false              # the same data without its negatives folders

A run that names `openset` methods gets one row per method in results.md and openset.csv: whether the
version learnt negatives, the share of unseen dishes it calls not kimchi, the share of kimchi it still
answers as kimchi, and the right kind among those (OPENSET_COLUMNS). Every score is calibrated like the
published check, on the version's validation kimchi to keep a share `keep`, and "not kimchi" is the head's
not_kimchi class or the score over its threshold, either one. `unseen`'s kimchi class folders measure the
kimchi kept; every other image below it (a not_kimchi folder, or a folder per dish) is a dish never seen in
training. Without `unseen`, both are measured on the validation split, which the threshold was calibrated on
(the row says so). The version is published with the first distance check (knn, mahalanobis) of the list.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.atomic import atomic_write
from models.errors import KimchiError
from models.home import Home
from models.clock import stamp
from models.registry import Registry
from training.recipe import Recipe

log = logging.getLogger(__name__)

# TOML key -> Recipe field; nested tables as the blog writes them.
RUN_KEYS = {"arch", "presize", "size", "min_scale", "flip_vert", "max_rotate", "max_zoom", "max_lighting", "max_warp",
            "normalize", "epochs", "freeze_epochs", "base_lr", "pct_start", "cycles", "lr_max", "mixed_precision",
            "crop", "bs", "pretrained", "early_stop", "channels_last", "keep"}
NESTED = {"fine_tune": {"epochs", "freeze_epochs", "base_lr", "pct_start"}, "fit_one_cycle": {"cycles", "lr_max"}}
GRID_KEYS = {"source", "data", "per_class", "seed", "valid_pct", "workers", "device", "unseen"}
# Run keys that are not the recipe's: the open-set methods compared, and whether the data's negatives train.
EXTRA_KEYS = {"openset", "negatives"}
RESULT_COLUMNS = ["name", "arch", "accuracy", "error_rate", "recall_macro", "precision_macro", "f1_macro",
                  "kept_epoch", "train_time_s", "img_s", "tta_accuracy"]
# The open-set methods a run can compare (models/openset.py; larger scores are farther from kimchi):
#   head        the classifier alone: its not_kimchi class (nothing without negatives);
#   softmax     1 - the largest softmax probability of a kimchi class (Hendrycks & Gimpel 2017);
#   energy      -logsumexp of the kimchi classes' logits (Liu et al. 2020);
#   knn         the k-th nearest training kimchi's cosine distance (models.openset);
#   mahalanobis the nearest class mean's Mahalanobis distance (models.openset).
OPENSET_METHODS = ("head", "softmax", "energy", "knn", "mahalanobis")
OPENSET_COLUMNS = ["run", "method", "negatives", "unseen_flagged", "kimchi_kept", "right_kind", "threshold",
                   "n_unseen", "n_kimchi", "measured_on"]


@dataclass
class RunSpec:
    name: str
    recipe: Recipe
    crop: bool
    settings: dict[str, Any] = field(default_factory=dict)
    openset: tuple[str, ...] = ()  # open-set methods compared as rows (OPENSET_METHODS)
    negatives: bool = True  # False: trained on the data without its negatives folders


@dataclass
class Grid:
    path: Path
    source: Path | None
    data: Path | None
    per_class: int | None
    runs: list[RunSpec]
    unseen: Path | None = None  # photos nobody trains on, for the open-set rows


def _fail(where: str, message: str) -> KimchiError:
    return KimchiError(f"{where}: {message}")


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _flatten(name: str, table: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if key == "name":
            continue
        if key in NESTED:
            if not isinstance(value, dict):
                raise _fail(f"run '{name}'", f"{key} must be a table such as {{ epochs = 5 }}")
            for inner, inner_value in value.items():
                if inner not in NESTED[key]:
                    raise _fail(f"run '{name}'", f"unknown key '{key}.{inner}'{_suggest(inner, NESTED[key])}")
                flat[inner] = inner_value
        elif key in RUN_KEYS or key in EXTRA_KEYS:
            flat[key] = value
        elif key in GRID_KEYS:
            raise _fail(f"run '{name}'", f"'{key}' belongs in [defaults]: every run shares the data, split and seed")
        else:
            raise _fail(f"run '{name}'", f"unknown key '{key}'{_suggest(key, RUN_KEYS | EXTRA_KEYS | set(NESTED))}")
    return flat


def _openset_methods(name: str, value: Any) -> tuple[str, ...]:
    """`openset = "knn"` or a list of OPENSET_METHODS, each once."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _fail(f"run '{name}'", f"openset must be a list of methods such as {list(OPENSET_METHODS[1:3])}, "
                                     f"not {value!r}")
    for method in values:
        if method not in OPENSET_METHODS:
            raise _fail(f"run '{name}'", f"unknown open-set method '{method}'{_suggest(method, set(OPENSET_METHODS))}; "
                                         f"use {', '.join(OPENSET_METHODS)}")
    if len(set(values)) != len(values):
        raise _fail(f"run '{name}'", "openset names a method twice")
    return tuple(values)


def _check_types(name: str, values: dict[str, Any]) -> None:
    defaults = Recipe()
    for key, value in values.items():
        default = getattr(defaults, key, None)
        if isinstance(default, bool) or key == "crop":
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int) or key == "early_stop":
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "whole number"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "string"
        else:
            ok, kind = True, ""
        if not ok:
            raise _fail(f"run '{name}'", f"{key} must be a {kind}, not {value!r}")


def load_grid(path: Path, home: Home, source: Path | None = None) -> Grid:
    """Parse and check the whole file before any training starts; KimchiError names the run and key."""
    try:
        config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KimchiError(f"{path} does not exist.") from None
    except tomllib.TOMLDecodeError as err:
        raise KimchiError(f"{path} is not valid TOML: {err}.") from err
    unknown_top = set(config) - {"defaults", "run"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise _fail(str(path), f"unknown table '{key}'{_suggest(key, {'defaults', 'run'})}; use [defaults] and [[run]]")
    defaults = dict(config.get("defaults", {}))
    grid_values = {k: defaults.pop(k) for k in list(defaults) if k in GRID_KEYS}
    base = _flatten("defaults", defaults)
    runs_config = config.get("run", [])
    if not isinstance(runs_config, list) or not runs_config:
        raise _fail(str(path), "no runs; add at least one [[run]] with a name")
    source = source or (Path(grid_values["source"]).expanduser() if "source" in grid_values else None)
    data = Path(grid_values["data"]).expanduser() if "data" in grid_values else None
    runs, names = [], set()
    for i, table in enumerate(runs_config, 1):
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(f"{path}, run {i}", "every [[run]] needs a name")
        if name in names:
            raise _fail(f"run '{name}'", "the name is used twice")
        names.add(name)
        values = {**base, **_flatten(name, table)}
        crop = bool(values.pop("crop", False))
        requested = values.pop("openset", [])
        methods = () if requested == "off" else _openset_methods(name, requested)
        if requested == "off" or methods:
            # "off": no rows and no check. Methods: the version gets the first distance check that run_one
            # measures, rather than a second calibration by train().
            values["openset"] = "off"
        negatives = values.pop("negatives", True)
        if not isinstance(negatives, bool):
            raise _fail(f"run '{name}'", f"negatives must be true or false, not {negatives!r}")
        if crop and source is None:
            raise _fail(f"run '{name}'", "crop = true needs `source` (AI Hub folders with crop_area.properties) in [defaults]")
        _check_types(name, values)
        recipe = Recipe(**{"seed": grid_values.get("seed", 42), "valid_pct": grid_values.get("valid_pct", 0.2),
                           "workers": grid_values.get("workers"), "device": grid_values.get("device", "auto"), **values})
        try:
            recipe.validate()
        except KimchiError as err:
            raise _fail(f"run '{name}'", str(err)) from err
        settings = {**values, "crop": crop}
        if methods:
            settings.update(openset=list(methods), negatives=negatives)
        runs.append(RunSpec(name, recipe, crop, settings, methods, negatives))
    unseen = Path(grid_values["unseen"]).expanduser() if "unseen" in grid_values else None
    return Grid(Path(path), source, data, grid_values.get("per_class"), runs, unseen)


def data_for(grid: Grid, run: RunSpec, home: Home) -> Path:
    """The folder a run trains on: `data`, or `source` imported (cropped or not) once into the cache."""
    if grid.source is None:
        data = grid.data or home.base
        return data if run.negatives else kimchi_only(data, home)
    from training.importer import import_dataset

    presize = max(r.recipe.presize for r in grid.runs)
    key = hashlib.sha256(f"{grid.source.resolve()}|{run.crop}|{presize}|{grid.per_class}".encode()).hexdigest()[:12]
    folder = home.cache / "experiments" / f"{'crop' if run.crop else 'full'}-{key}"
    done = folder / ".imported"
    if not done.is_file():
        summary = import_dataset(grid.source, folder, per_class=grid.per_class, crop=run.crop, presize=presize)
        log.info("imported %s for %s: %s", grid.source, run.name, summary.lines()[-1])
        done.write_text(stamp())
    return folder if run.negatives else kimchi_only(folder, home)


def kimchi_only(data: Path, home: Home) -> Path:
    """`data` without its negatives folders (not_kimchi, 김치아님 …): `data` itself when it has none, else a
    folder of links in the cache, made once per state of `data`."""
    from models.datafiles import image_files, label_of
    from models.labels import NOT_KIMCHI
    from models.trainset import link_into
    from training.datafolder import fingerprint

    images = image_files(data)
    if all(label_of(p) != NOT_KIMCHI for p in images):
        return data
    key = hashlib.sha256(f"{Path(data).resolve()}|{fingerprint(data)}".encode()).hexdigest()[:12]
    folder = home.cache / "experiments" / f"kimchi-only-{key}"
    done = folder / ".linked"
    if not done.is_file():
        for path in images:
            if label_of(path) != NOT_KIMCHI:
                target = folder / path.relative_to(data)
                if not target.exists():
                    link_into(target, path)
        done.write_text(stamp())
    return folder


def config_hash(run: RunSpec, data: Path, unseen: Path | None = None) -> str:
    from training.datafolder import fingerprint

    config = {"recipe": asdict(run.recipe), "crop": run.crop, "data": fingerprint(data)}
    if run.openset:
        config["openset"] = {"methods": list(run.openset), "unseen": fingerprint(unseen) if unseen else None}
    payload = json.dumps(config, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_one(run: RunSpec, data: Path, folder: Path, registry: Registry, tta: bool,
            unseen: Path | None = None) -> dict[str, Any]:
    from training.evaluate import evaluate_learner
    from training.pictures import write_pictures
    from training.progress import Progress
    from training.train import train

    started = time.monotonic()
    outcome = train(data, run.recipe, registry, Progress("quiet"), report=False)
    learn = outcome.learn
    result = evaluate_learner(learn, learn.dls.valid, tta=tta)
    metrics = result.write(folder / "report", title=run.name)
    write_pictures(learn, learn.dls.valid, folder / "report")
    meta = outcome.meta
    epochs_trained = len(meta.epochs)
    train_time = meta.train_time_s or (time.monotonic() - started)
    row = {"name": run.name, "arch": run.recipe.arch, "accuracy": metrics["accuracy"],
           "error_rate": metrics["error_rate"], "recall_macro": metrics["recall_macro"],
           "precision_macro": metrics["precision_macro"], "f1_macro": metrics["f1_macro"],
           "kept_epoch": meta.kept_epoch, "train_time_s": round(train_time, 1),
           "img_s": round(meta.dataset["n_train"] * epochs_trained / train_time, 1) if train_time else None,
           "tta_accuracy": metrics.get("tta", {}).get("accuracy")}
    result = {"row": row, "version": outcome.version, "model": str(outcome.path), "epochs": meta.epochs}
    if run.openset:
        from models.datafiles import image_files

        measured = measure_openset(outcome.path, list(learn.dls.train_ds.items), list(learn.dls.valid_ds.items),
                                   image_files(unseen) if unseen else [], methods=run.openset,
                                   device=str(learn.dls.device))
        rows, checks = openset_rows(measured, run.openset, keep=run.recipe.keep, run=run.name)
        if checks:  # the version keeps the first distance check, as `kimchi-train train` would have made it
            next(iter(checks.values())).save(outcome.path)
        result["openset"] = rows
    return result


# -- the open-set rows ---------------------------------------------------------------------------------


@dataclass
class OpenSetMeasures:
    """One version's answers, measured once for every method: its training kimchi (the distance checks'
    bank), its validation images (calibration) and the unseen photos, each with the head's logits."""

    vocab: list[str]
    valid: Any  # training.calibrate.Measured
    unseen: Any
    bank: Any | None
    logits: dict[str, np.ndarray]
    left_out: int = 0  # unseen kimchi of a class the version does not know


def head_logits(folder: Path, pooled: np.ndarray) -> np.ndarray:
    """The head's logits from the pooled features the engine answers (Output.BOTH): the rest of the head
    (models/archs.py: head[2:] after the concat pool and Flatten) applied to them, in float32. The engine
    itself gives probabilities, whose logs differ from the logits by a per-image constant: fine for the
    softmax, not for the energy."""
    import torch

    from models.artifact import load_artifact

    if len(pooled) == 0:
        return np.zeros((0, 0), np.float32)
    model, _ = load_artifact(Path(folder))
    with torch.inference_mode():
        return model[1][2:](torch.from_numpy(np.ascontiguousarray(pooled, np.float32))).float().numpy()


def unseen_label(path: Path) -> str:
    """A kimchi class for an image in a kimchi class folder of `unseen`, else not_kimchi (a dish never seen)."""
    from models.datafiles import label_of
    from models.labels import NOT_KIMCHI, is_kimchi

    label = label_of(path)
    return label if is_kimchi(label) else NOT_KIMCHI


def measure_openset(folder: Path, train_items: list[Path], valid_items: list[Path], unseen_items: list[Path],
                    methods: tuple[str, ...] = OPENSET_METHODS, device: str = "cpu") -> OpenSetMeasures:
    """Run the version in `folder` once over what the rows need, through the engine's own runner."""
    from models.datafiles import label_of
    from models.labels import NOT_KIMCHI
    from training.calibrate import kimchi_bank, measure, runner_for

    runner = runner_for(Path(folder), device)
    vocab = list(runner.meta.vocab)
    valid_items = [Path(p) for p in valid_items if label_of(p) in vocab]
    labelled = [(Path(p), unseen_label(p)) for p in unseen_items]
    known = [(p, label) for p, label in labelled if label in vocab or label == NOT_KIMCHI]
    valid = measure(runner, valid_items, [label_of(p) for p in valid_items])
    unseen = measure(runner, [p for p, _ in known], [label for _, label in known])
    bank = None
    if {"knn", "mahalanobis"} & set(methods):
        bank = kimchi_bank(runner, train_items)
    if len(labelled) > len(known):
        log.warning("%d unseen photos are of kimchi classes %s does not know; left out of the open-set rows",
                    len(labelled) - len(known), Path(folder).name)
    logits = {}
    if "energy" in methods:
        logits = {"valid": head_logits(folder, valid.pooled), "unseen": head_logits(folder, unseen.pooled)}
    return OpenSetMeasures(vocab, valid, unseen, bank, logits, len(labelled) - len(known))


def openset_rows(measured: OpenSetMeasures, methods: tuple[str, ...], keep: float = 0.95, k: int | None = None,
                 run: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per method (OPENSET_COLUMNS), and the fitted distance checks by method (calibrated)."""
    import torch

    from models.labels import NOT_KIMCHI
    from models.openset import DEFAULT_K, conformal_threshold, fit
    from training.calibrate import verdicts

    vocab = measured.vocab
    kimchi_columns = [i for i, label in enumerate(vocab) if label != NOT_KIMCHI]
    sets = {"valid": measured.valid, "unseen": measured.unseen}
    checks: dict[str, Any] = {}

    def scores(method: str, name: str) -> np.ndarray:
        m = sets[name]
        if method == "head" or not len(m.labels):
            return np.zeros(len(m.labels), np.float32)
        if method == "softmax":
            return 1.0 - m.probs[:, kimchi_columns].max(1)
        if method == "energy":
            z = measured.logits[name][:, kimchi_columns].astype(np.float64)
            top = z.max(1)
            return -(top + np.log(np.exp(z - top[:, None]).sum(1)))
        return checks[method].scores(torch.from_numpy(m.pooled)).numpy()

    negatives = "yes" if NOT_KIMCHI in vocab else "no"
    rows = []
    for method in methods:
        if method in ("knn", "mahalanobis"):
            checks[method] = fit(method, measured.bank.pooled, measured.bank.labels, k=k or DEFAULT_K)
        valid_scores = scores(method, "valid")
        calibration = valid_scores[np.asarray(measured.valid.labels) != NOT_KIMCHI]
        threshold = math.inf if method == "head" else conformal_threshold(calibration, keep)
        if method in checks:
            checks[method] = checks[method].calibrated(calibration, keep)
            checks[method].info.update(calibrated_on=int(len(calibration)), source="experiments")
        valid = verdicts(sets["valid"], vocab, valid_scores, threshold).figures()
        unseen = verdicts(sets["unseen"], vocab, scores(method, "unseen"), threshold).figures()
        kimchi = unseen if unseen["n_kimchi"] else valid
        dishes = unseen if unseen["n_negatives"] else valid
        where = ("unseen" if kimchi is unseen else "valid", "unseen" if dishes is unseen else "valid")
        rows.append({"run": run, "method": method, "negatives": negatives, "unseen_flagged": dishes["caught"],
                     "kimchi_kept": kimchi["kept"], "right_kind": kimchi["right_kind"],
                     "threshold": None if method == "head" else float(threshold),
                     "n_unseen": dishes["n_negatives"], "n_kimchi": kimchi["n_kimchi"],
                     "measured_on": where[0] if where[0] == where[1] else f"kimchi {where[0]}, dishes {where[1]}"})
    return rows, checks


def run_grid(config: Path, home: Home, out: Path | None = None, force: bool = False, only: list[str] | None = None,
             source: Path | None = None, tta: bool = False) -> Path:
    """Run (or resume) the grid; returns the output folder holding results.md and results.csv."""
    grid = load_grid(config, home, source)
    if only:
        missing = set(only) - {r.name for r in grid.runs}
        if missing:
            raise KimchiError(f"--only names runs the file does not have: {', '.join(sorted(missing))}.")
    out = out or home.root / "experiments" / Path(config).stem
    registry = Registry(out / "models")
    rows: list[dict[str, Any]] = []
    if grid.unseen is not None and not grid.unseen.is_dir():
        raise KimchiError(f"{grid.path}: unseen = '{grid.unseen}' is not a folder; it holds the photos no run "
                          f"trains on (kimchi class folders, and folders of other dishes).")
    # Every run's data is ready (imported, checked) before the first one trains.
    datas = {run.name: data_for(grid, run, home) for run in grid.runs}
    openset: list[dict[str, Any]] = []
    from training.datafolder import count_classes

    for run in grid.runs:
        count_classes(datas[run.name])
    for run in grid.runs:
        folder = out / "runs" / run.name
        record_path = folder / "run.json"
        data = datas[run.name]
        digest = config_hash(run, data, grid.unseen)
        previous = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
        if previous and previous.get("config_hash") == digest and not force:
            log.info("experiment %s: unchanged, reusing its result", run.name)
            print(f"{run.name}: unchanged (config {digest}), skipped")
            rows.append(previous["row"])
            openset.extend(previous.get("openset", []))
            continue
        if only and run.name not in only:
            if previous:
                rows.append(previous["row"])
                openset.extend(previous.get("openset", []))
            continue
        print(f"{run.name}: training ({run.recipe.arch}, config {digest})…", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        result = run_one(run, data, folder, registry, tta, grid.unseen)
        record = {"name": run.name, "config_hash": digest, "settings": run.settings, "recipe": asdict(run.recipe),
                  "data": str(data), "finished_at": stamp(), **result}
        atomic_write(record_path, json.dumps(record, ensure_ascii=False, indent=2, default=str).encode("utf-8"))
        rows.append(result["row"])
        openset.extend(result.get("openset", []))
        print(f"{run.name}: accuracy {result['row']['accuracy']:.4f}, kept epoch {result['row']['kept_epoch']}", flush=True)
        for row in result.get("openset", []):
            print(f"{run.name}: open-set {row['method']}: unseen flagged {_share(row['unseen_flagged'])}, "
                  f"kimchi kept {_share(row['kimchi_kept'])}, right kind {_share(row['right_kind'])}", flush=True)
    write_results(out, rows, openset)
    return out


def _share(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def best_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best run by macro-F1, then accuracy: the classes are balanced, but a run that ignores one is not best."""
    scored = [r for r in rows if isinstance(r.get("f1_macro"), (int, float))]
    return max(scored, key=lambda r: (r["f1_macro"], r["accuracy"])) if scored else None


def openset_table(rows: list[dict[str, Any]]) -> list[str]:
    """The open-set rows as the issue's table: setting, unseen flagged, kimchi kept, right kind."""
    lines = ["| run | method | negatives | unseen dishes flagged | kimchi kept | right kind | threshold | measured on |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        threshold = "-" if row.get("threshold") is None else f"{row['threshold']:.4f}"
        lines.append(f"| {row['run']} | {row['method']} | {row['negatives']} | "
                     f"{_share(row['unseen_flagged'])} (n={row['n_unseen']}) | "
                     f"{_share(row['kimchi_kept'])} (n={row['n_kimchi']}) | {_share(row['right_kind'])} | "
                     f"{threshold} | {row['measured_on']} |")
    return lines


def write_results(out: Path, rows: list[dict[str, Any]], openset: list[dict[str, Any]] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in RESULT_COLUMNS})
    best = best_of(rows)

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if key in ("train_time_s", "img_s") else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(RESULT_COLUMNS) + " |", "|" + "---|" * len(RESULT_COLUMNS)]
    for row in rows:
        mark = " **(best)**" if best is not None and row["name"] == best["name"] else ""
        lines.append("| " + " | ".join(cell(k, row.get(k)) + (mark if k == "name" else "") for k in RESULT_COLUMNS) + " |")
    summary = (f"\nBest run: **{best['name']}** (macro-F1 {best['f1_macro']:.4f}, accuracy {best['accuracy']:.4f}).\n"
               if best else "\nNo finished runs.\n")
    text = ("# Experiments\n\n" + "\n".join(lines) + "\n" + summary +
            "\nFigures are on each run's validation split (same data, split and seed for all).\n")
    if openset:
        with open(out / "openset.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=OPENSET_COLUMNS)
            writer.writeheader()
            for row in openset:
                writer.writerow({k: row.get(k) for k in OPENSET_COLUMNS})
        text += ("\n## Not kimchi: the open-set methods\n\n" + "\n".join(openset_table(openset)) + "\n" +
                 "\nEach score is calibrated on the run's validation kimchi to keep the recipe's `keep`; \"not kimchi\" "
                 "is the head's not_kimchi class or the score over its threshold. Unseen dishes flagged: their share "
                 "called not kimchi; kimchi kept: the share of kimchi still answered as kimchi; right kind: the "
                 "right class among those. \"measured on\" says whether the kimchi (then the dishes) were the "
                 "`unseen` photos or the validation split.\n")
    (out / "results.md").write_text(text, encoding="utf-8")
