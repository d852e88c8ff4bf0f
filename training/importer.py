"""`kimchi-train import`: a folder-per-class image tree (or AI Hub's kfood layout) into KIMCHI_HOME/data/base.

Every file is opened and fully decoded; what cannot be is skipped and counted, never fatal. Images are
stored upright, 8-bit RGB, optionally cropped to AI Hub's food box and presized so that training does
not decode 1280-pixel JPEGs every epoch. A manifest line per image records where it came from.

A negatives folder (not_kimchi, 김치아님, 기타, other) is imported as the not_kimchi class. With `--negatives N`
the other dishes of the tree (AI Hub's kfood/<category>/<dish>/ beside kfood/김치/) become negatives too: about
N photos, the same number from each dish (at most `--negatives-per-dish`), picked in a fixed seeded order so
that running the import again adds nothing. A kimchi that is none of the classes (동치미) is never a negative.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import logging
import os
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from models.atomic import atomic_write, fsync_dir
from models.datafiles import IMAGE_SUFFIXES, MANIFEST, file_sha256, jpeg_bytes, presized, read_manifest
from models.device import usable_cpus
from models.errors import ImageRejected, KimchiError, NotAClass, UnknownLabel
from models.labels import CLASSES, NOT_KIMCHI, folder_label, is_known, match, nfc
from models.preprocess import ImageLimits, decode_rgb
from models.clock import stamp

log = logging.getLogger(__name__)

CROP_FILE = "crop_area.properties"
KIMCHI_CATEGORY = "김치"  # AI Hub's kfood/김치/: every folder inside holds kimchi, never negatives
# The seed of the negatives' sample: which photos of each dish are taken, the same on every run. Changing it
# changes the sample, and a later import would add a second one beside the first.
NEGATIVES_SEED = "kimchi-negatives-1"
# Import is for trusted datasets; allow larger files than the bot accepts from strangers.
IMPORT_LIMITS = ImageLimits(max_pixels=120_000_000)


# ---------------------------------------------------------------------------------------------
# crop_area.properties

@dataclass
class CropTable:
    """Boxes from one class folder's crop_area.properties, keyed by lower-case image stem."""

    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    bad_keys: set[str] = field(default_factory=set)  # images whose line was unusable
    problems: list[str] = field(default_factory=list)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp949"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


_KEY = re.compile(r"^[\w.\-]+$")


def parse_crop_file(path: Path) -> CropTable:
    """Parse `Img_XXX_YYYY=x,y,w,h` lines, tolerating the mess real files contain.

    A line that is not exactly four numbers is reported (and its image, if the key is readable, is
    kept uncropped); keys match image names case-insensitively, with or without an extension.
    """
    table = CropTable()
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        text = line.strip()
        if not text or text.startswith(("#", "!")):
            continue
        where = f"{path}:{number}"
        if "=" not in text:
            table.problems.append(f"{where}: no '=' in {text[:60]!r}")
            continue
        key, _, value = text.partition("=")
        key = key.strip()
        stem = Path(key).stem if Path(key).suffix.lower() in IMAGE_SUFFIXES else key
        if not stem or not _KEY.match(stem):
            table.problems.append(f"{where}: unreadable image name {key[:60]!r}")
            continue
        stem = stem.lower()
        parts = [p.strip() for p in value.split(",")]
        try:
            if len(parts) != 4 or any(p == "" for p in parts):
                raise ValueError(f"expected x,y,w,h, got {value.strip()[:60]!r}")
            x, y, w, h = (float(p) for p in parts)
            if w <= 0 or h <= 0:
                raise ValueError(f"width and height must be positive in {value.strip()!r}")
        except ValueError as err:
            table.problems.append(f"{where}: {err}; {key} stays uncropped")
            table.bad_keys.add(stem)
            table.boxes.pop(stem, None)
            continue
        if stem in table.boxes:
            table.problems.append(f"{where}: second entry for {key}; using this one")
        table.boxes[stem] = (x, y, w, h)
        table.bad_keys.discard(stem)
    return table


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """x,y,w,h clipped to the image, as a PIL box; None when nothing usable is left."""
    x, y, w, h = box
    left, top = max(0, int(round(x))), max(0, int(round(y)))
    right, bottom = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if right - left < 8 or bottom - top < 8:
        return None
    return left, top, right, bottom


# ---------------------------------------------------------------------------------------------
# finding classes

@dataclass
class ClassFolder:
    name: str  # NFC
    path: Path
    files: list[Path]


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name != CROP_FILE


def find_class_folders(src: Path) -> list[ClassFolder]:
    """Folders that directly hold files, each a class named by the folder (NFC).

    Works for a plain folder-per-class tree and for AI Hub's kfood/<category>/<class>/ layout. Two
    folders whose names differ only in Unicode form (macOS NFD) are one class.
    """
    if not src.exists():
        raise KimchiError(f"{src} does not exist.")
    if not src.is_dir():
        raise KimchiError(f"{src} is not a folder; import takes a folder with one subfolder per class.")
    classes: dict[str, ClassFolder] = {}
    for folder, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = sorted((Path(folder) / f for f in filenames if _is_candidate(Path(folder) / f)), key=lambda p: p.name)
        if not files or Path(folder) == src:
            continue
        name = nfc(Path(folder).name)
        if name in classes:
            classes[name].files = sorted(classes[name].files + files, key=lambda p: p.name)
        else:
            classes[name] = ClassFolder(name, Path(folder), files)
    return sorted(classes.values(), key=lambda c: c.name)


# ---------------------------------------------------------------------------------------------
# one image, in a worker process

@dataclass
class _Job:
    source: str
    sha256: str
    label: str
    dest: str
    crop: tuple[float, float, float, float] | None
    presize: int


def _process(job: _Job) -> dict:
    """Decode, orient, crop, presize and store one image. Returns a manifest row or a skip reason."""
    try:
        # Full decodes, no JPEG draft: the stored pixels stay what the engine will see at inference.
        img = decode_rgb(Path(job.source).read_bytes(), IMPORT_LIMITS)
        crop_used = None
        note = None
        if job.crop is not None:
            box = clip_box(job.crop, img.width, img.height)
            if box is None:
                note = "crop box lies outside the image; kept uncropped"
            else:
                img = img.crop(box)
                crop_used = list(box)
                x, y, w, h = job.crop
                if crop_used != [round(x), round(y), round(x + w), round(y + h)]:
                    note = "crop box clipped to the image"
        img = presized(img, job.presize)
        dest = Path(job.dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, jpeg_bytes(img))
        return {"ok": True, "size": list(img.size), "crop": crop_used, "note": note}
    except ImageRejected as err:
        return {"ok": False, "reason": err.reason, "detail": err.detail}
    except OSError as err:
        return {"ok": False, "reason": "unreadable", "detail": str(err)}


# ---------------------------------------------------------------------------------------------
# negatives: the other dishes of the tree

def _names_kimchi(folder: ClassFolder, src: Path) -> str | None:
    """The kimchi a folder that is not a class stands for, or None for another dish.

    A folder inside a 김치 category (AI Hub's kfood/김치/), one named like a kimchi that is none of the classes
    (동치미, 섞박지 …; models.labels.NOT_CLASSES) or one named by a class's other name (오이김치) holds kimchi:
    never negatives, whatever it is called."""
    try:
        inside = Path(folder.path).relative_to(src).parts[:-1]
    except ValueError:
        inside = ()
    if any(nfc(part) == KIMCHI_CATEGORY for part in inside):
        return KIMCHI_CATEGORY
    try:
        found = match(folder.name)
    except NotAClass as err:
        return err.name
    except UnknownLabel as err:
        # a near miss of a class's name (깍뚜기) is a misspelt kimchi, and a name holding the class's name with
        # something added (배추김치_2) is that class's: kimchi either way, never negatives
        if err.suggestion:
            return err.suggestion
        key = nfc(folder.name).casefold()
        return next((c.name for c in CLASSES if c.name in key), None)
    return None if found.name == NOT_KIMCHI else found.name


def _rank(*parts: str) -> str:
    """A fixed pseudo-random order: the same on every run and machine, unlike hash() or random."""
    return hashlib.sha256("\0".join((NEGATIVES_SEED, *parts)).encode("utf-8")).hexdigest()


def negative_quotas(available: dict[str, int], total: int, per_dish: int) -> dict[str, int]:
    """How many photos each dish gives to not_kimchi: `total` spread evenly over the dishes, at least one and at
    most `per_dish` from each; what a small dish cannot give goes to the others, within the cap. Where `total`
    does not divide evenly, the dishes that give one more follow a fixed seeded order (not the alphabet)."""
    order = sorted((d for d in available if available[d] > 0), key=lambda d: (_rank(d), d))
    room = {d: min(per_dish, available[d]) for d in order}
    quota = {d: 0 for d in available}
    for dish in order:
        quota[dish] = 1 if room[dish] else 0
    left = total - sum(quota.values())
    while left > 0:
        open_ = [d for d in order if quota[d] < room[d]]
        if not open_:
            break
        share = max(1, left // len(open_))
        for dish in open_:
            take = min(share, room[dish] - quota[dish], left)
            quota[dish] += take
            left -= take
            if not left:
                break
    return quota


def _sampled(folder: ClassFolder) -> ClassFolder:
    """The folder's files in the dish's fixed sampling order: its first N are its sample of N."""
    files = sorted(folder.files, key=lambda p: (_rank(folder.name, p.name), p.name))
    return ClassFolder(folder.name, folder.path, files)


# ---------------------------------------------------------------------------------------------

@dataclass
class ImportSummary:
    """What an import did, per class and in total."""

    added: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    skipped: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unknown_classes: list[str] = field(default_factory=list)
    named_kimchi: list[str] = field(default_factory=list)  # folders of kimchi that are no class: never negatives
    crop_problems: list[str] = field(default_factory=list)
    uncropped: Counter = field(default_factory=Counter)
    dest: Path | None = None
    negatives: int | None = None  # --negatives N, when asked
    dishes: Counter = field(default_factory=Counter)  # dish -> its negatives in not_kimchi (added or already there)
    negatives_added: int = 0

    @property
    def total_added(self) -> int:
        return sum(self.added.values())

    def lines(self) -> list[str]:
        out = []
        classes = sorted(set(self.added) | set(self.duplicates) | set(self.skipped))
        for name in classes:
            skipped = self.skipped.get(name, Counter())
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            line = f"{name}: {self.added[name]} added, {self.duplicates[name]} already there"
            if detail:
                line += f", skipped {sum(skipped.values())} ({detail})"
            if self.uncropped[name]:
                line += f", {self.uncropped[name]} left uncropped"
            out.append(line)
        total_skipped = sum(sum(c.values()) for c in self.skipped.values())
        out.append(f"total: {self.total_added} added, {sum(self.duplicates.values())} already there, "
                   f"{total_skipped} skipped, into {self.dest}")
        if self.negatives is not None:
            given = [d for d, n in self.dishes.items() if n]
            if given:
                out.append(f"negatives: {self.negatives_added} added into {NOT_KIMCHI} ({sum(self.dishes.values())} "
                           f"sampled of about {self.negatives} asked for) from {len(given)} dishes, "
                           f"at most {max(self.dishes.values())} each")
            else:
                out.append("negatives: none imported; no folder of another dish had a readable photo")
        if self.unknown_classes:
            out.append(f"{len(self.unknown_classes)} folders are no kimchi class, not imported (--negatives N learns "
                       f"about N of their photos as {NOT_KIMCHI}; --allow-new-classes keeps them as classes): "
                       + _names(self.unknown_classes))
        if self.named_kimchi:
            out.append("kimchi that are none of the classes, left out and never used as negatives: "
                       + _names(self.named_kimchi))
        if self.crop_problems:
            out.append(f"{len(self.crop_problems)} crop_area.properties lines could not be used (see the log)")
        return out


def _names(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _sha256(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _hashes(hasher: cf.Executor, files: list[Path], window: int = 128) -> Iterator[str | None]:
    """sha256 of each file in order, at most `window` ahead: a class cut short by --per-class (or a dish giving
    seven of its thousand photos) hashes what it reads, not the whole folder."""
    ahead: deque[cf.Future] = deque()
    it = iter(files)
    for path in itertools.islice(it, window):
        ahead.append(hasher.submit(_sha256, path))
    while ahead:
        sha = ahead.popleft().result()
        following = next(it, None)
        if following is not None:
            ahead.append(hasher.submit(_sha256, following))
        yield sha


def import_dataset(src: Path, dest: Path, per_class: int | None = None, crop: bool = False,
                   presize: int = 460, allow_new_classes: bool = False, workers: int | None = None,
                   negatives: int | None = None, negatives_per_dish: int = 50) -> ImportSummary:
    """Import `src` into `dest` (normally KIMCHI_HOME/data/base). Safe to run again: adds only new images.

    A negatives folder (not_kimchi, 김치아님, 기타, other) is the not_kimchi class. With `negatives`, every other
    folder that holds no kimchi is a dish, and about `negatives` of their photos (evenly across dishes, at most
    `negatives_per_dish` each, the same photos on every run) go into not_kimchi as well."""
    if negatives is not None and negatives < 1:
        raise KimchiError(f"--negatives must be at least 1, not {negatives}.")
    if negatives_per_dish < 1:
        raise KimchiError(f"--negatives-per-dish must be at least 1, not {negatives_per_dish}.")
    src = Path(src)
    summary = ImportSummary(dest=dest, negatives=negatives)
    folders = find_class_folders(src)
    if not folders:
        raise KimchiError(f"{src} holds no class folders with files in them; expected {src}/<class>/<image>.")
    kept: list[tuple[ClassFolder, str]] = []
    dishes: list[ClassFolder] = []
    for folder in folders:
        if is_known(folder.name):
            kept.append((folder, folder_label(folder.name)))
            continue
        kimchi = _names_kimchi(folder, src)
        if kimchi is not None:
            if allow_new_classes:
                kept.append((folder, folder.name))
            else:
                summary.named_kimchi.append(folder.name)
                log.info("%s holds kimchi (%s) that is none of the classes: left out, never a negative",
                         folder.path, kimchi)
        elif negatives:
            dishes.append(folder)
        elif allow_new_classes:
            kept.append((folder, folder.name))
        else:
            summary.unknown_classes.append(folder.name)
    if not kept and not dishes:
        listed = summary.unknown_classes + summary.named_kimchi
        raise KimchiError(f"None of the folders in {src} is a kimchi class ({', '.join(listed[:5])}…).")
    quotas = negative_quotas({d.name: len(d.files) for d in dishes}, negatives or 0, negatives_per_dish)
    if negatives and not dishes:
        log.warning("--negatives: %s holds no folder of another dish", src)
    dest.mkdir(parents=True, exist_ok=True)
    known = {row["sha256"]: row for row in read_manifest(dest)}
    workers = workers or usable_cpus()
    jobs = [(folder, label, per_class, None) for folder, label in kept]
    jobs += [(_sampled(dish), NOT_KIMCHI, quotas[dish.name], dish.name) for dish in dishes if quotas[dish.name]]
    with open(dest / MANIFEST, "a", encoding="utf-8") as manifest, \
            cf.ThreadPoolExecutor(max(2, workers)) as hasher, \
            cf.ProcessPoolExecutor(workers) as pool:
        for folder, label, limit, dish in jobs:
            table = parse_crop_file(folder.path / CROP_FILE) if crop and (folder.path / CROP_FILE).is_file() else None
            if crop and table is None:
                log.warning("%s has no %s; its images stay uncropped", folder.path, CROP_FILE)
            if table:
                for problem in table.problems:
                    log.warning("crop: %s", problem)
                summary.crop_problems.extend(table.problems)
            _import_class(folder, label, dest, limit, table if crop else None, presize, known, summary, manifest,
                          hasher, pool, dish)
        manifest.flush()
        os.fsync(manifest.fileno())
    fsync_dir(dest)
    return summary


def _import_class(folder: ClassFolder, name: str, dest: Path, per_class: int | None, table: CropTable | None,
                  presize: int, known: dict[str, dict], summary: ImportSummary, manifest, hasher: cf.Executor,
                  pool: cf.Executor, dish: str | None = None) -> None:
    """The first `per_class` readable images of `folder` (all when None) into dest/`name`/. A dish's images
    (`dish`, into not_kimchi) come in its sampling order, and their rows name the dish."""
    have = 0
    shas = _hashes(hasher, folder.files)
    pending: list[tuple[Path, str, tuple | None, cf.Future]] = []

    def drain(limit: int) -> None:
        nonlocal have
        while len(pending) > limit:
            path, sha, box, future = pending.pop(0)
            result = future.result()
            if not result["ok"]:
                summary.skipped[name][result["reason"]] += 1
                log.info("skipped %s: %s", path, result["detail"])
                continue
            if per_class is not None and have >= per_class:
                # Filled by earlier files while this one was in flight: drop it to keep "the first N".
                (dest / name / f"{sha}.jpg").unlink(missing_ok=True)
                continue
            have += 1
            summary.added[name] += 1
            if result["note"]:
                log.info("%s: %s", path, result["note"])
            row = {"path": f"{name}/{sha}.jpg", "class": name, "sha256": sha, "source": str(path),
                   "crop": result["crop"], "size": result["size"], "imported_at": stamp()}
            if dish is not None:
                row["dish"] = dish
                summary.dishes[dish] += 1
                summary.negatives_added += 1
            known[sha] = row
            manifest.write(json.dumps(row, ensure_ascii=False) + "\n")

    lookahead = 64
    for path, sha in zip(folder.files, shas):
        drain(lookahead)
        if per_class is not None and have + len(pending) >= per_class:
            drain(0)
            if have >= per_class:
                break
        if sha is None:
            summary.skipped[name]["unreadable"] += 1
            continue
        if sha in known:
            summary.duplicates[name] += 1
            have += 1
            if dish is not None:
                summary.dishes[dish] += 1
            if known[sha]["class"] != name:
                log.warning("%s is the same image as %s (%s); kept once, as %s",
                            path, known[sha]["source"], known[sha]["class"], known[sha]["class"])
            continue
        if any(p[1] == sha for p in pending):
            summary.duplicates[name] += 1
            continue
        box = None
        if table is not None:
            key = path.stem.lower()
            box = table.boxes.get(key)
            if box is None:
                summary.uncropped[name] += 1
                if key not in table.bad_keys:
                    log.info("crop: no entry for %s; kept uncropped", path.name)
        job = _Job(str(path), sha, name, str(dest / name / f"{sha}.jpg"), box, presize)
        pending.append((path, sha, box, pool.submit(_process, job)))
    drain(0)
