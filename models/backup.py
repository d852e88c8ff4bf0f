"""A backup of what the bot has learnt from people, taken while it runs, and a restore that proves itself.

One archive (an uncompressed tar: the photos are JPEGs already) holds:
- `kimchi.sqlite3`, copied through SQLite's online backup API, so it is one consistent moment of the
  database even while the bot writes;
- `data/corrections/`, the users' labelled photos;
- `models/`: the serving version and the `current` pointer (or every version, `all_versions`);
- `holdout.key`, without which the frozen holdout would move;
- `manifest.json` last: the sha256 and size of every other member, and the home it came from.

Never in it: the token and the webhook secret (they live in the environment or `.env`, never in KIMCHI_HOME),
the logs, the retrain folders, caches, and the base images (re-imported from AI Hub's archive).

A restore refuses a home that is not empty, checks every member against the manifest before anything is put
in place, refuses a damaged archive in one sentence, rewrites the database's photo paths to the new home, and
leaves a home from which `kimchi-bot --check` passes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from models.atomic import fsync_dir
from models.clock import stamp
from models.errors import KimchiError
from models.home import HOLDOUT_KEY, Home
from models.registry import CURRENT, Registry

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE = "kimchi.sqlite3"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    files: int
    bytes: int
    seconds: float
    labels: int
    versions: tuple[str, ...]


@dataclass(frozen=True)
class RestoreResult:
    home: Path
    files: int
    seconds: float
    labels: int


def _copy_database(source: Path, target: Path) -> int:
    """SQLite's online backup of `source` into `target`; the number of label rows in the copy."""
    src = sqlite3.connect(source, timeout=30)  # read-write: a read-only handle cannot read a WAL file safely
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # pages copied under SQLite's own locking: the bot goes on writing meanwhile
        tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return dst.execute("SELECT COUNT(*) FROM corrections").fetchone()[0] if "corrections" in tables else 0
    finally:
        dst.close()
        src.close()


def _members(home: Home, registry: Registry, all_versions: bool) -> tuple[list[tuple[str, Path]], tuple[str, ...]]:
    """(name in the archive, file) for everything but the database and the manifest."""
    files: list[tuple[str, Path]] = []
    if home.corrections.is_dir():
        for path in sorted(home.corrections.rglob("*")):
            rel = path.relative_to(home.root)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                files.append((rel.as_posix(), path))
    versions = tuple(registry.versions()) if all_versions else tuple(v for v in [registry.current()] if v)
    for version in versions:
        for path in sorted(registry.path(version).rglob("*")):
            if path.is_file():
                files.append((path.relative_to(home.root).as_posix(), path))
    key = home.root / HOLDOUT_KEY
    if key.is_file():
        files.append((HOLDOUT_KEY, key))
    return files, versions


def backup(home: Home, out: Path, all_versions: bool = False) -> BackupResult:
    """Write one archive of `home` to `out` (a folder: a dated file in it; or a file name)."""
    started = time.perf_counter()
    if not home.database.is_file():
        raise KimchiError(f"There is nothing to back up: {home.database} does not exist (the bot has not run "
                          f"with KIMCHI_HOME={home.root}).")
    out = Path(out).expanduser()
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"kimchi-backup-{stamp().replace(':', '').replace('-', '')[:15]}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    registry = Registry(home.models)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=out.parent) as tmp:
        db_copy = Path(tmp) / DATABASE
        labels = _copy_database(home.database, db_copy)
        files, versions = _members(home, registry, all_versions)
        pointer = None
        if versions:  # the pointer names only the versions the archive holds
            current = registry.current()
            stack = [v for v in json.loads((home.models / CURRENT).read_text(encoding="utf-8")).get("stack", [])
                     if v in versions]
            pointer = json.dumps({"version": current, "stack": stack or [current], "at": stamp()}).encode()
        manifest = {"format": FORMAT, "created_at": stamp(), "home": str(home.root), "labels": labels,
                    "versions": list(versions), "files": {}}
        partial = out.with_name(f".{out.name}.partial")
        total = 0
        with tarfile.open(partial, "w") as tar:
            for name, path in [(DATABASE, db_copy), *files]:
                try:
                    data = path.read_bytes()  # the bytes hashed are the bytes archived, whatever happens to the file
                except FileNotFoundError:  # a photo moved to another label's folder since the listing
                    continue
                _add_bytes(tar, name, data)
                manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                total += len(data)
            if pointer is not None:
                name = f"models/{CURRENT}"
                _add_bytes(tar, name, pointer)
                manifest["files"][name] = {"sha256": hashlib.sha256(pointer).hexdigest(), "size": len(pointer)}
            _add_bytes(tar, MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1).encode())
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, out)
        fsync_dir(out.parent)
    return BackupResult(out, len(manifest["files"]), total, time.perf_counter() - started, labels, versions)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _safe(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def restore(archive: Path, home: Home) -> RestoreResult:
    """Put the archive's home at `home`, which must not exist or be empty; KimchiError with one sentence when
    the home is in use or the archive is damaged."""
    started = time.perf_counter()
    archive = Path(archive).expanduser()
    root = home.root
    if root.exists() and any(root.iterdir()):
        raise KimchiError(f"{root} is not empty: restore into a new folder (--home DIR), or move this one away "
                          f"first; nothing was changed.")
    damaged = f"{archive} is not a complete kimchi backup"
    try:
        tar = tarfile.open(archive, "r:")
    except (OSError, tarfile.TarError) as err:
        raise KimchiError(f"{damaged} ({err.__class__.__name__}); nothing was restored.") from err
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.restoring-", dir=root.parent))
    try:
        with tar:
            try:
                manifest = json.loads(tar.extractfile(MANIFEST).read())
                expected = manifest["files"]
            except (KeyError, AttributeError, ValueError, TypeError, tarfile.TarError) as err:
                raise KimchiError(f"{damaged}: its manifest is missing or unreadable; nothing was restored.") from err
            if manifest.get("format") != FORMAT:
                raise KimchiError(f"{archive} is a backup of format {manifest.get('format')}, which this version "
                                  f"cannot restore; nothing was restored.")
            seen: set[str] = set()
            for member in tar:
                if member.name == MANIFEST:
                    continue
                if not member.isfile() or not _safe(member.name) or member.name not in expected:
                    raise KimchiError(f"{damaged}: it holds {member.name!r}, which its manifest does not list; "
                                      f"nothing was restored.")
                target = staging / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        dst.write(block)
                if digest.hexdigest() != expected[member.name]["sha256"]:
                    raise KimchiError(f"{damaged}: {member.name} does not match its checksum (the file is damaged); "
                                      f"nothing was restored.")
                seen.add(member.name)
        missing = sorted(set(expected) - seen)
        if missing:
            raise KimchiError(f"{damaged}: {len(missing)} file(s) are missing, e.g. {missing[0]}; nothing was "
                              f"restored.")
        labels = _repoint(staging / DATABASE, manifest.get("home", ""), root)
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    Home(root).ensure()
    return RestoreResult(root, len(expected), time.perf_counter() - started, labels)


def _repoint(database: Path, old_root: str, new_root: Path) -> int:
    """The database names its photos by absolute path: move them from the old home to the new one."""
    con = sqlite3.connect(database)
    try:
        if old_root and old_root != str(new_root):
            con.execute("UPDATE corrections SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
                        (str(new_root), len(old_root) + 1, len(old_root), old_root))
            con.commit()
        return con.execute("SELECT COUNT(*) FROM corrections").fetchone()[0]
    finally:
        con.close()
