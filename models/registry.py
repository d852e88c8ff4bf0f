"""The model registry under KIMCHI_HOME/models: numbered versions and an atomic `current` pointer.

A version is written into a hidden staging folder and published by one rename, so a folder named
`vN` is always complete and a run killed half-way leaves only a hidden folder, cleaned up later.
`current` is one small JSON file (the serving version and the stack of earlier ones, for rollback),
replaced by temp-file-and-rename: a crash leaves the old pointer or the new one, never neither.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from models.artifact import META, WEIGHTS, ModelMeta, read_meta
from models.atomic import atomic_write, fsync_dir
from models.clock import stamp
from models.errors import ArtifactError, KimchiError, NoModel, UnknownVersion

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d+)$")
CURRENT = "current"
HISTORY = "promotions.jsonl"


@dataclass(frozen=True)
class VersionInfo:
    """One listed version: its name, folder, meta and whether it serves now."""

    name: str
    path: Path
    meta: ModelMeta | None
    current: bool
    problem: str | None = None


class Registry:
    """Versions of the model on disk; safe against concurrent writers through a lock file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Names of complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            m = _VERSION.match(entry.name)
            if m and (entry / META).is_file() and (entry / WEIGHTS).is_file():
                found.append((int(m.group(1)), entry.name))
        return [name for _, name in sorted(found)]

    def _pointer(self) -> dict:
        try:
            data = json.loads((self.root / CURRENT).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": None, "stack": []}
        except ValueError as err:
            raise ArtifactError(f"{self.root / CURRENT} is damaged ({err}); promote a version to repair it.") from err
        return {"version": data.get("version"), "stack": list(data.get("stack", []))}

    def current(self) -> str | None:
        """The serving version, or None in an empty registry."""
        version = self._pointer()["version"]
        if version is not None and version not in self.versions():
            log.error("current points at %s, which is not a complete version", version)
            return None
        return version

    def path(self, version: str) -> Path:
        return self.root / version

    def resolve(self, name: str | None = "current") -> str:
        """A version name for `name` ('current', None, 'vN' or 'N'); NoModel or UnknownVersion otherwise."""
        if name in (None, "", CURRENT):
            version = self.current()
            if version is None:
                raise NoModel()
            return version
        if name.isdigit():
            name = f"v{name}"
        if name not in self.versions():
            raise UnknownVersion(name, self.versions())
        return name

    def meta(self, version: str) -> ModelMeta:
        return read_meta(self.path(self.resolve(version)))

    def list(self) -> list[VersionInfo]:
        """Every complete version with its meta; a version whose meta cannot be read says why."""
        current = self.current()
        out = []
        for name in self.versions():
            try:
                out.append(VersionInfo(name, self.path(name), read_meta(self.path(name)), name == current))
            except ArtifactError as err:
                out.append(VersionInfo(name, self.path(name), None, name == current, str(err)))
        return out

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def staging(self) -> Path:
        """A new hidden folder to write a version into; invisible until `publish`."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def publish(self, staging: Path) -> str:
        """Give the staged folder the next version number; the first version becomes current."""
        staging = Path(staging)
        for required in (META, WEIGHTS):
            if not (staging / required).is_file():
                raise ArtifactError(f"{staging} lacks {required}; refusing to publish an incomplete version.")
        _fsync_tree(staging)
        with self._locked():
            taken = [int(_VERSION.match(p.name).group(1)) for p in self.root.iterdir() if _VERSION.match(p.name)]
            version = f"v{max(taken, default=0) + 1}"
            os.rename(staging, self.root / version)
            fsync_dir(self.root)
            if self._pointer()["version"] is None:
                self._set_pointer(version, [version], "first model")
        log.info("published %s", version)
        return version

    def promote(self, version: str, reason: str = "", by: str | None = None) -> str:
        """Make `version` current, atomically. Returns the version that served before (or None)."""
        with self._locked():
            version = self.resolve(version)
            pointer = self._pointer()
            previous = pointer["version"]
            if previous == version:
                return previous
            stack = [v for v in pointer["stack"] if v != version] + [version]
            self._set_pointer(version, stack, reason or "promote", by)
            return previous

    def rollback_target(self) -> str:
        """The version a rollback would return to; KimchiError when there is none."""
        return self._rollback_stack()[-2]

    def rollback(self, by: str | None = None) -> str:
        """Return to the version that served before the current one; returns it."""
        with self._locked():
            stack = self._rollback_stack()[:-1]
            self._set_pointer(stack[-1], stack, "rollback", by)
            return stack[-1]

    def _rollback_stack(self) -> list[str]:
        stack = [v for v in self._pointer()["stack"] if v in self.versions()]
        if len(stack) < 2:
            raise KimchiError("There is no earlier version to roll back to.")
        return stack

    def _set_pointer(self, version: str, stack: list[str], reason: str, by: str | None = None) -> None:
        atomic_write(self.root / CURRENT, json.dumps({"version": version, "stack": stack, "at": stamp()}).encode())
        entry = {"at": stamp(), "version": version, "reason": reason, "by": by}
        with open(self.root / HISTORY, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def cleanup_staging(self) -> list[str]:
        """Remove staging folders left by processes that no longer run; returns what was removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        for entry in self.root.iterdir():
            m = re.match(r"^\.staging-(\d+)-", entry.name)
            if m and entry.is_dir() and not _pid_alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for path in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        fsync_dir(path)
