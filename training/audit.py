"""`kimchi-train audit`: which labels look wrong, which images are outliers or near-duplicates.

One embedding pass over the images with a model version's body (models.embed), then:

* out-of-fold predicted probabilities from K-fold logistic regression on the embeddings (sklearn's
  cross_val_predict): every image is scored by a classifier that never saw its label;
* cleanlab's confident learning on them: `cleanlab.filter.find_label_issues` flags labels,
  `cleanlab.rank.get_label_quality_scores` ranks them;
* cleanlab's near-duplicate and outlier checks: the issue managers that `Datalab.find_issues` runs,
  on one shared k-NN graph of the embeddings;
* on users' labels (the items /retrain lists, each with the accounts behind it): the open-set check
  (models/openset.py) on the same embeddings, `not_kimchi` for a kimchi label on a photo it calls none of the
  version's kimchi, and `flood` for a near-duplicate group of many users' photos from few accounts.

Writes `audit.csv` (file,label,suggested,quality,issue; worst first) and `suspects.png` (the worst 24,
given and suggested label). The caller gets per-file flags to act on; the audit itself changes nothing.
"""
from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from models.datafiles import file_sha256, image_files, label_of
from models.embed import DEFAULT_DUPLICATE_THRESHOLD, embed, near_duplicate_groups
from models.errors import ArtifactError, KimchiError
from models.labels import CLASS_NAMES, is_kimchi, nfc
from models.openset import DEFAULT_KEEP, DEFAULT_METHOD, OpenSet, fit
from models.protocol import AuditedEvent
from models.registry import Registry

log = logging.getLogger(__name__)

AUDIT_CSV = "audit.csv"
SUSPECTS_PNG = "suspects.png"
PICTURE_COUNT = 24
# Neighbours in the k-NN graph the near-duplicate and outlier checks share (Datalab's default k).
NEIGHBOURS = 10
# Dimensions the logistic regression reads (a PCA of the embeddings).
PCA_COMPONENTS = 128

LABEL, OUTLIER, NEAR_DUPLICATE = "label", "outlier", "near_duplicate"
# Issues of users' labels only (base images have no accounts behind them):
NOT_KIMCHI_ISSUE = "not_kimchi"  # a kimchi label on a photo the open-set check calls none of the version's kimchi
FLOOD = "flood"  # one of many near-identical users' photos labelled by few accounts

# A flood: a near-duplicate group (models.embed's threshold) holding at least FLOOD_MIN_PHOTOS users' photos
# whose labels come from at most FLOOD_MAX_ACCOUNTS accounts. One person re-sending the same dish is a
# handful; someone weighting the training set sends the same picture again and again. A picture that many
# people label on their own (a popular photo) has many accounts behind it and is left to the other checks.
# An account unknown to the store (an old row without user id) counts as one account.
FLOOD_MIN_PHOTOS = 5
FLOOD_MAX_ACCOUNTS = 2

# A version without a stored open-set check gets one fitted here from the base (trusted) kimchi in the audit:
# the bank from two thirds of each class, the threshold from the other third at DEFAULT_KEEP (the conformal
# quantile, as `kimchi-train calibrate` does). Below FIT_MIN_IMAGES base kimchi there is no check.
FIT_CALIBRATION_EVERY = 3
FIT_MIN_IMAGES = 12

Items = Union[Path, str, Sequence[tuple[Union[Path, str], str]]]


class Listed(list):
    """(path, label) items as /retrain lists them, and who stands behind users' labels: `users` maps the path
    of each user's photo to the accounts that gave its label (base images are not in it)."""

    def __init__(self, items: Sequence[tuple[Path, str]] = (), users: dict[Path, tuple[str, ...]] | None = None):
        super().__init__(items)
        self.users: dict[Path, tuple[str, ...]] = dict(users or {})


@dataclass(frozen=True)
class AuditRow:
    """One image's verdict. `quality` is cleanlab's label quality (0 = surely wrong, 1 = surely right)."""

    file: Path
    label: str
    suggested: str  # the out-of-fold classifier's most likely class
    quality: float
    issues: tuple[str, ...]  # of LABEL, OUTLIER, NEAR_DUPLICATE, NOT_KIMCHI_ISSUE, FLOOD
    group: int  # near-duplicate group at models.embed's measured threshold, for holdout sides
    openset: float | None = None  # the open-set score (larger is farther), when there was a check

    @property
    def label_issue(self) -> bool:
        return LABEL in self.issues


@dataclass
class AuditResult:
    """Every audited image, worst first, and what the audit wrote."""

    rows: list[AuditRow]
    version: str
    classes: list[str]
    folds: int
    out_dir: Path | None
    unreadable: dict[Path, str] = field(default_factory=dict)  # file -> why it could not be embedded
    oof_accuracy: float = float("nan")
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, "embed" first
    embed_runtime: str = ""  # what ran the model's body: onnx or torch
    openset: str = ""  # the check users' labels were judged by: "stored", "fitted", or "" (none)
    openset_note: str = ""  # that check in a few words, for the summary

    @property
    def embed_s(self) -> float:
        return self.timings.get("embed", 0.0)

    @property
    def rest_s(self) -> float:
        return sum(v for k, v in self.timings.items() if k != "embed")

    @property
    def csv_path(self) -> Path | None:
        return self.out_dir / AUDIT_CSV if self.out_dir else None

    @property
    def picture_path(self) -> Path | None:
        path = self.out_dir / SUSPECTS_PNG if self.out_dir else None
        return path if path and path.is_file() else None

    def flags(self) -> dict[Path, tuple[str, ...]]:
        """The files with any issue, and which; what the retrain acts on (it keys on LABEL)."""
        return {row.file: row.issues for row in self.rows if row.issues}

    def count(self, issue: str) -> int:
        return sum(issue in row.issues for row in self.rows)

    def summary(self) -> str:
        """One line for a terminal or an admin's message."""
        worst = next((r for r in self.rows if r.label_issue), None)
        tail = f"; worst: {worst.file.name} ({worst.label} → {worst.suggested}, quality {worst.quality:.2f})" if worst else ""
        where = f"; {AUDIT_CSV} in {self.out_dir}" if self.out_dir else ""
        return (f"audited {len(self.rows)} images of {len(self.classes)} classes with {self.version} "
                f"({self.folds}-fold out-of-fold accuracy {self.oof_accuracy:.3f}): {self.count(LABEL)} label issues, "
                f"{self.count(OUTLIER)} outliers, {self.count(NEAR_DUPLICATE)} near-duplicates, "
                f"{self.count(NOT_KIMCHI_ISSUE)} users' labels on photos that are not kimchi, "
                f"{self.count(FLOOD)} users' photos in floods, {len(self.unreadable)} unreadable{tail}"
                f"{'; ' + self.openset_note if self.openset_note else ''}{where}")


# ---------------------------------------------------------------------------------------------
# input

def collect_items(data: Items) -> list[tuple[Path, str]]:
    """(path, label) pairs from a folder-per-class tree, or from an explicit list (labels NFC)."""
    if isinstance(data, (str, Path)):
        folder = Path(data).expanduser()
        if not folder.is_dir():
            raise KimchiError(f"{folder} is not a folder of class folders.")
        return [(path, label_of(path)) for path in image_files(folder)]
    return [(Path(path), nfc(str(label))) for path, label in data]


def _class_order(labels: Sequence[str]) -> list[str]:
    """The labels present, the 11 kimchi first in their canonical order, any others after, sorted."""
    present = set(labels)
    return [c for c in CLASS_NAMES if c in present] + sorted(present - set(CLASS_NAMES))


def _check_counts(labels: Sequence[str], folds: int, where: str) -> list[str]:
    if folds < 2:
        raise KimchiError(f"--folds must be at least 2, not {folds}.")
    if not labels:
        raise KimchiError(f"There are no images to audit in {where}.")
    classes = _class_order(labels)
    if len(classes) < 2:
        raise KimchiError(f"All {len(labels)} images in {where} have one label ({classes[0]}); the audit needs two classes or more.")
    if len(labels) < folds:
        raise KimchiError(f"The audit needs at least {folds} images for {folds} folds; {where} has {len(labels)}.")
    largest = max(labels.count(c) for c in classes)
    if largest < folds:
        raise KimchiError(f"No class in {where} has {folds} images; use --folds {max(2, largest)} or add images.")
    return classes


# ---------------------------------------------------------------------------------------------
# the steps

def out_of_fold_probs(vectors: np.ndarray, targets: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(n, K) predicted probabilities, each row from a logistic regression trained without that image."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    # PCA first: lbfgs on the raw 1,024-2,560 dimensions took 24 s for 200 images on 2 cores, on 128
    # components 1 s, with the same 20 of 20 flipped labels found. PCA sees no labels, so fitting it
    # once on all images leaks nothing into the out-of-fold scores.
    components = min(PCA_COMPONENTS, len(vectors) - 1, vectors.shape[1])
    # An exact SVD is quickest up to a few thousand rows; beyond, the randomized one (5,500 x 1,024: ~3 s).
    solver = "full" if len(vectors) <= 2000 else "randomized"
    reduced = PCA(components, svd_solver=solver, random_state=seed).fit_transform(vectors)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class smaller than K folds: sklearn warns, then copes
        warnings.simplefilter("ignore")
        return cross_val_predict(LogisticRegression(max_iter=2000), reduced, targets, cv=splitter,
                                 method="predict_proba")


class _Statistics:
    """What cleanlab's issue managers ask of their Datalab: the statistics it has cached (none).

    Datalab itself needs Hugging Face `datasets` and pyarrow only to hold the table; its issue managers
    are plain functions of the features and a k-NN graph, so they run here without it.
    """

    def get_info(self, name: str) -> dict:
        return {}


def neighbourhood_issues(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's near-duplicate and outlier flags (bool arrays), as Datalab.find_issues computes them."""
    from cleanlab.datalab.internal.issue_manager.duplicate import NearDuplicateIssueManager
    from cleanlab.datalab.internal.issue_manager.outlier import OutlierIssueManager
    from cleanlab.internal.neighbor.knn_graph import create_knn_graph_and_index

    n = len(vectors)
    k = min(NEIGHBOURS, n - 1)
    if k < 1:
        return np.zeros(n, bool), np.zeros(n, bool)
    graph, _ = create_knn_graph_and_index(vectors, n_neighbors=k, metric="cosine")
    duplicates = NearDuplicateIssueManager(_Statistics(), metric="cosine", k=k)
    duplicates.find_issues(features=vectors, knn_graph=graph)
    outliers = OutlierIssueManager(_Statistics(), metric="cosine", k=k)
    outliers.find_issues(features=vectors, knn_graph=graph)
    return (duplicates.issues["is_near_duplicate_issue"].to_numpy(bool),
            outliers.issues["is_outlier_issue"].to_numpy(bool))


def label_issues(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's (is_issue, quality) per image from out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: the audit also runs inside a retrain next to the bot; no process pool for a sub-second step.
    flagged = find_label_issues(targets, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(targets, probs, method="self_confidence")
    return np.asarray(flagged, bool), np.asarray(quality, float)


# ---------------------------------------------------------------------------------------------

def run_audit(data: Items, registry: Registry | Path | str, version: str | None = "current",
              out_dir: Path | str | None = None, folds: int = 5, device: str = "cpu",
              batch_size: int = 32, picture: bool = True,
              users: dict[Path, tuple[str, ...]] | None = None) -> AuditResult:
    """Audit the labels of a folder-per-class tree or of explicit (path, label) items.

    `users` (default: `data.users` when `data` is a `Listed`, as read_items gives it) names the users' photos
    among the items and the accounts behind each label: only those get the open-set and flood checks.
    Writes audit.csv (and suspects.png unless `picture` is False) into `out_dir` when it is given.
    KimchiError, one sentence, for no model, no images, one class, or fewer images than folds.
    """
    if users is None:
        users = getattr(data, "users", None)
    items = collect_items(data)
    where = str(data) if isinstance(data, (str, Path)) else "the list"
    _check_counts([label for _, label in items], folds, where)
    registry = registry if isinstance(registry, Registry) else Registry(Path(registry).expanduser())
    name = registry.resolve(version)

    clock = _Clock()
    embedded = embed(registry, name, [path for path, _ in items], device=device, batch_size=batch_size)
    clock.lap("embed")
    unreadable = {items[i][0]: err.message for i, err in embedded.errors.items()}
    for path, why in unreadable.items():
        log.warning("audit skips %s: %s", path, why)
    kept = [items[i] for i in embedded.index]
    classes = _check_counts([label for _, label in kept], folds, where)

    users = {Path(path): tuple(accounts) for path, accounts in (users or {}).items()}
    owners = [users.get(path) for path, _ in kept]
    # a folder, or a list without users' labels: nothing for the open-set check to judge
    check = openset_check(registry, name, kept, embedded.vectors, owners) if any(o is not None for o in owners) \
        else _Check(None, "", "")
    clock.lap("openset")
    result = _score(kept, embedded.vectors, classes, folds, name, clock, owners, check)
    result.unreadable, result.embed_runtime = unreadable, embedded.runtime
    if out_dir is not None:
        result.out_dir = Path(out_dir).expanduser()
        write_csv(result.rows, result.out_dir / AUDIT_CSV)
        clock.lap("csv")
        if picture:
            write_suspects(result.rows[:PICTURE_COUNT], result.out_dir / SUSPECTS_PNG)
            clock.lap("picture")
    result.timings = clock.laps
    log.info("%s (embedding %.1f s, the rest %.1f s)", result.summary(), result.embed_s, result.rest_s)
    return result


@dataclass(frozen=True)
class _Check:
    """The open-set check users' labels are judged by, the kimchi it knows, and how it came to be."""

    openset: OpenSet | None
    how: str  # "stored", "fitted", or "" (none)
    note: str
    known: frozenset[str] = frozenset()  # the classes behind the check: it cannot judge a label of another


def openset_check(registry: Registry, version: str, items: Sequence[tuple[Path, str]], vectors: np.ndarray,
                  owners: Sequence[tuple[str, ...] | None]) -> _Check:
    """The version's stored check, or one fitted now on the audit's base kimchi (`owners[i]` None).

    Stored: the version's own bank (or means) and threshold, read by the same pooled features the audit has
    embedded. Fitted, for a version published before the check existed: models.openset.fit (knn) on two thirds
    of each class's base kimchi, the conformal threshold at DEFAULT_KEEP on the other third, so that a new photo
    of those kimchi passes with that probability. No check (and no `not_kimchi` flag) when neither is possible.
    """
    import torch

    folder = registry.path(version)
    try:
        stored = OpenSet.load(folder)
    except ArtifactError as err:  # a damaged file: judge as for an old version, and say so in the log
        log.warning("%s; the audit fits a check of its own", err)
        stored = None
    if stored is not None:
        known = frozenset(c for c in registry.meta(version).vocab if is_kimchi(c))
        return _Check(stored, "stored", f"open-set check: {version}'s own ({stored.method}, threshold "
                                        f"{stored.threshold:.3f}, keeps {stored.keep:.0%} of kimchi)", known)
    by_class: dict[str, list[int]] = {}
    for i, ((_, label), owner) in enumerate(zip(items, owners)):
        if owner is None and is_kimchi(label):
            by_class.setdefault(label, []).append(i)
    total = sum(len(v) for v in by_class.values())
    if total < FIT_MIN_IMAGES:
        return _Check(None, "", f"no open-set check: {version} has none stored and the audit has {total} base "
                                f"kimchi to fit one (at least {FIT_MIN_IMAGES})")
    rng = np.random.default_rng(0)
    bank, calibration = [], []
    for label in sorted(by_class):
        shuffled = [by_class[label][j] for j in rng.permutation(len(by_class[label]))]
        held = set(shuffled[::FIT_CALIBRATION_EVERY]) if len(shuffled) > 1 else set()
        calibration += [i for i in shuffled if i in held]
        bank += [i for i in shuffled if i not in held]
    check = fit(DEFAULT_METHOD, vectors[bank], [items[i][1] for i in bank])
    held_scores = check.scores(torch.from_numpy(np.ascontiguousarray(vectors[calibration]))).numpy()
    check = check.calibrated(held_scores, DEFAULT_KEEP)
    return _Check(check, "fitted", f"open-set check fitted on {len(bank)} base kimchi, threshold "
                                   f"{check.threshold:.3f} keeps {DEFAULT_KEEP:.0%} of kimchi ({len(calibration)} held out)",
                  frozenset(by_class))


def floods(groups: Sequence[int], owners: Sequence[tuple[str, ...] | None]) -> set[int]:
    """Positions of users' photos in a flood: a near-duplicate group of at least FLOOD_MIN_PHOTOS users' photos
    whose labels come from at most FLOOD_MAX_ACCOUNTS accounts (an unknown account counts as one)."""
    members: dict[int, list[int]] = {}
    for i, (group, owner) in enumerate(zip(groups, owners)):
        if owner is not None:
            members.setdefault(group, []).append(i)
    found: set[int] = set()
    for positions in members.values():
        accounts = {account for i in positions for account in (owners[i] or ("?",))}
        if len(positions) >= FLOOD_MIN_PHOTOS and len(accounts) <= FLOOD_MAX_ACCOUNTS:
            found.update(positions)
    return found


class _Clock:
    """Seconds per named step, for the summary in the log and the benchmark."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def _score(items: list[tuple[Path, str]], vectors: np.ndarray, classes: list[str], folds: int,
           version: str, clock: _Clock, owners: Sequence[tuple[str, ...] | None] | None = None,
           check: _Check | None = None) -> AuditResult:
    import torch

    owners = list(owners) if owners is not None else [None] * len(items)
    index = {c: i for i, c in enumerate(classes)}
    targets = np.array([index[label] for _, label in items])
    probs = out_of_fold_probs(vectors, targets, folds)
    clock.lap("logistic_regression")
    flagged, quality = label_issues(targets, probs)
    clock.lap("label_issues")
    duplicate, outlier = neighbourhood_issues(vectors)
    clock.lap("duplicates_outliers")
    groups = near_duplicate_groups(vectors, DEFAULT_DUPLICATE_THRESHOLD)
    clock.lap("groups")
    scores: list[float | None] = [None] * len(items)
    far = np.zeros(len(items), bool)
    if check is not None and check.openset is not None:
        scores = check.openset.scores(torch.from_numpy(np.ascontiguousarray(vectors))).tolist()
        far = np.array([owner is not None and label in check.known and score > check.openset.threshold
                        for (_, label), owner, score in zip(items, owners, scores)], bool)
    flood = floods(groups, owners)
    clock.lap("users")
    suggested = probs.argmax(1)
    rows = []
    for i, (path, label) in enumerate(items):
        issues = tuple(name for name, hit in ((LABEL, flagged[i]), (OUTLIER, outlier[i]), (NEAR_DUPLICATE, duplicate[i]),
                                              (NOT_KIMCHI_ISSUE, far[i]), (FLOOD, i in flood)) if hit)
        rows.append(AuditRow(path, label, classes[suggested[i]], float(quality[i]), issues, groups[i], scores[i]))
    # Worst first: by label quality; ties (common at 0 and 1) keep label issues ahead, then file order.
    order = sorted(range(len(rows)), key=lambda i: (rows[i].quality, not rows[i].label_issue, i))
    return AuditResult([rows[i] for i in order], version, classes, folds, None,
                       oof_accuracy=float((suggested == targets).mean()),
                       openset=check.how if check else "", openset_note=check.note if check else "")


# ---------------------------------------------------------------------------------------------
# output

def write_csv(rows: Sequence[AuditRow], path: Path) -> None:
    """audit.csv: file,label,suggested,quality,issue (issues joined by ';'), worst first, UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "suggested", "quality", "issue"])
        for row in rows:
            writer.writerow([str(row.file), row.label, row.suggested, f"{row.quality:.6f}", ";".join(row.issues)])
    tmp.replace(path)


def write_suspects(rows: Sequence[AuditRow], path: Path, columns: int = 6) -> Path | None:
    """suspects.png: each image with its given label → the suggested one (Hangul via NanumGothic)."""
    if not rows:
        return None
    from training.fonts import use_korean_font

    use_korean_font()
    import matplotlib.pyplot as plt

    from models.preprocess import decode_rgb

    n_rows = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(n_rows, columns, figsize=(2.2 * columns, 2.5 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        try:
            img = decode_rgb(row.file.read_bytes())
            img.thumbnail((192, 192))
            ax.imshow(img)
        except Exception as err:  # a file deleted since the embedding pass must not lose the picture
            log.warning("suspects.png: cannot show %s (%s)", row.file, err)
        colour = "red" if row.label_issue else "black"
        ax.set_title(f"{row.label} → {row.suggested}\n{row.quality:.2f} {row.file.name[:18]}", fontsize=8, color=colour)
    fig.suptitle("주어진 라벨 → 제안 (given → suggested), label quality", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the retrain's side: items by sha256 in, one protocol event out

def read_items(path: Path) -> tuple[dict[Path, str], Listed]:
    """JSON lines {path, label, sha256[, users]} (what /retrain writes): the sha256 of each path, and the items.

    A line with `users` (the accounts that gave the label, possibly none known) is a user's label; the others
    are base images. The items carry them (`Listed.users`) into run_audit."""
    shas: dict[Path, str] = {}
    items = Listed()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise KimchiError(f"The item list {path} cannot be read ({err.strerror or err}).") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = (Path(row["path"]), str(row["label"]))
            shas[item[0]] = str(row["sha256"])
            if "users" in row:
                if not isinstance(row["users"], list):
                    raise TypeError("users must be a list")
                items.users[item[0]] = tuple(sorted({str(u) for u in row["users"]}))
        except (ValueError, KeyError, TypeError) as err:
            raise KimchiError(f"{path}:{number} is not a {{path, label, sha256}} line ({err}).") from err
        items.append(item)
    return shas, items


def audited_event(result: AuditResult, shas: dict[Path, str] | None = None) -> AuditedEvent:
    """The audit as the trainer protocol's `audited` event: issues and near-duplicate groups by sha256."""
    def sha(path: Path) -> str:
        return shas[path] if shas is not None and path in shas else file_sha256(path)

    groups: dict[int, list[str]] = {}
    for row in result.rows:
        groups.setdefault(row.group, []).append(sha(row.file))
    picture = result.picture_path
    return AuditedEvent(n=len(result.rows), flagged={sha(r.file): list(r.issues) for r in result.rows if r.issues},
                        groups=[sorted(g) for g in groups.values() if len(g) > 1],
                        suspects_png=str(picture) if picture else None, summary=result.summary(),
                        openset=result.openset)
