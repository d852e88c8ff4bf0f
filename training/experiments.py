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
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
            "crop", "bs", "pretrained", "early_stop", "channels_last"}
NESTED = {"fine_tune": {"epochs", "freeze_epochs", "base_lr", "pct_start"}, "fit_one_cycle": {"cycles", "lr_max"}}
GRID_KEYS = {"source", "data", "per_class", "seed", "valid_pct", "workers", "device"}
RESULT_COLUMNS = ["name", "arch", "accuracy", "error_rate", "recall_macro", "precision_macro", "f1_macro",
                  "kept_epoch", "train_time_s", "img_s", "tta_accuracy"]


@dataclass
class RunSpec:
    name: str
    recipe: Recipe
    crop: bool
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Grid:
    path: Path
    source: Path | None
    data: Path | None
    per_class: int | None
    runs: list[RunSpec]


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
        elif key in RUN_KEYS:
            flat[key] = value
        elif key in GRID_KEYS:
            raise _fail(f"run '{name}'", f"'{key}' belongs in [defaults]: every run shares the data, split and seed")
        else:
            raise _fail(f"run '{name}'", f"unknown key '{key}'{_suggest(key, RUN_KEYS | set(NESTED))}")
    return flat


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
        if crop and source is None:
            raise _fail(f"run '{name}'", "crop = true needs `source` (AI Hub folders with crop_area.properties) in [defaults]")
        _check_types(name, values)
        recipe = Recipe(**{"seed": grid_values.get("seed", 42), "valid_pct": grid_values.get("valid_pct", 0.2),
                           "workers": grid_values.get("workers"), "device": grid_values.get("device", "auto"), **values})
        try:
            recipe.validate()
        except KimchiError as err:
            raise _fail(f"run '{name}'", str(err)) from err
        runs.append(RunSpec(name, recipe, crop, {**values, "crop": crop}))
    return Grid(Path(path), source, data, grid_values.get("per_class"), runs)


def data_for(grid: Grid, run: RunSpec, home: Home) -> Path:
    """The folder a run trains on: `data`, or `source` imported (cropped or not) once into the cache."""
    if grid.source is None:
        return grid.data or home.base
    from training.importer import import_dataset

    presize = max(r.recipe.presize for r in grid.runs)
    key = hashlib.sha256(f"{grid.source.resolve()}|{run.crop}|{presize}|{grid.per_class}".encode()).hexdigest()[:12]
    folder = home.cache / "experiments" / f"{'crop' if run.crop else 'full'}-{key}"
    done = folder / ".imported"
    if not done.is_file():
        summary = import_dataset(grid.source, folder, per_class=grid.per_class, crop=run.crop, presize=presize)
        log.info("imported %s for %s: %s", grid.source, run.name, summary.lines()[-1])
        done.write_text(stamp())
    return folder


def config_hash(run: RunSpec, data: Path) -> str:
    from training.datafolder import fingerprint

    payload = json.dumps({"recipe": asdict(run.recipe), "crop": run.crop, "data": fingerprint(data)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_one(run: RunSpec, data: Path, folder: Path, registry: Registry, tta: bool) -> dict[str, Any]:
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
    return {"row": row, "version": outcome.version, "model": str(outcome.path), "epochs": meta.epochs}


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
    # Every run's data is ready (imported, checked) before the first one trains.
    datas = {run.name: data_for(grid, run, home) for run in grid.runs}
    from training.datafolder import count_classes

    for run in grid.runs:
        count_classes(datas[run.name])
    for run in grid.runs:
        folder = out / "runs" / run.name
        record_path = folder / "run.json"
        data = datas[run.name]
        digest = config_hash(run, data)
        previous = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
        if previous and previous.get("config_hash") == digest and not force:
            log.info("experiment %s: unchanged, reusing its result", run.name)
            print(f"{run.name}: unchanged (config {digest}), skipped")
            rows.append(previous["row"])
            continue
        if only and run.name not in only:
            if previous:
                rows.append(previous["row"])
            continue
        print(f"{run.name}: training ({run.recipe.arch}, config {digest})…", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        result = run_one(run, data, folder, registry, tta)
        record = {"name": run.name, "config_hash": digest, "settings": run.settings, "recipe": asdict(run.recipe),
                  "data": str(data), "finished_at": stamp(), **result}
        atomic_write(record_path, json.dumps(record, ensure_ascii=False, indent=2, default=str).encode("utf-8"))
        rows.append(result["row"])
        print(f"{run.name}: accuracy {result['row']['accuracy']:.4f}, kept epoch {result['row']['kept_epoch']}", flush=True)
    write_results(out, rows)
    return out


def best_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best run by macro-F1, then accuracy: the classes are balanced, but a run that ignores one is not best."""
    scored = [r for r in rows if isinstance(r.get("f1_macro"), (int, float))]
    return max(scored, key=lambda r: (r["f1_macro"], r["accuracy"])) if scored else None


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
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
    (out / "results.md").write_text("# Experiments\n\n" + "\n".join(lines) + "\n" + summary +
                                    "\nFigures are on each run's validation split (same data, split and seed for all).\n",
                                    encoding="utf-8")
