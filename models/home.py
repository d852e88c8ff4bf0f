"""KIMCHI_HOME: the one folder that holds all runtime state, and the names of things inside it."""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from models.errors import KimchiError

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("~/.kimchi")
PRIVATE_UMASK = 0o077  # what the bot and the trainer create is theirs alone: folders 0700, files 0600


def private_umask() -> int:
    """Make every file and folder this process (and every child it starts) creates owner-only.

    Called first thing by `kimchi-bot` and `kimchi-train`: it covers what no single open() sees, such as
    SQLite's database file (and its -wal/-shm, which SQLite gives the database's mode), the corrections
    folder and photos, log files, the registry, and anything a library writes. Returns the old umask.
    """
    return os.umask(PRIVATE_UMASK)


@dataclass(frozen=True)
class Home:
    """Paths under KIMCHI_HOME. Creating it is explicit (`ensure`), never a side effect of reading."""

    root: Path

    @classmethod
    def from_env(cls, value: str | None = None) -> "Home":
        """KIMCHI_HOME from `value`, else the environment, else ~/.kimchi."""
        raw = value if value is not None else os.environ.get("KIMCHI_HOME")
        return cls(Path(raw or DEFAULT_HOME).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def base(self) -> Path:
        """Imported dataset, one folder per class, with manifest.jsonl."""
        return self.data / "base"

    @property
    def corrections(self) -> Path:
        """Users' corrected photos, one folder per class: itself a dataset."""
        return self.data / "corrections"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def runs(self) -> Path:
        """Per-retrain working folders (linked training sets, holdout lists, logs)."""
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def database(self) -> Path:
        return self.root / "kimchi.sqlite3"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> "Home":
        """Create the folder tree, KIMCHI_HOME itself owner-only (0700) whatever the umask, and tighten an
        existing one that is not: then nothing under it is reachable by other users, even files an older
        version left readable. A sentence, not a traceback, when that is impossible."""
        try:
            for path in (self.root, self.data, self.models, self.logs):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._private()
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise KimchiError(f"KIMCHI_HOME={self.root} cannot be used: {err.strerror or err}.") from err
        return self

    def _private(self) -> None:
        mode = stat.S_IMODE(self.root.stat().st_mode)
        if mode & 0o077 == 0:
            return
        try:
            os.chmod(self.root, mode & 0o700)
        except PermissionError:  # someone else's folder that we may write into: usable, but say so
            log.warning("KIMCHI_HOME=%s has mode %o and is not ours to change; other users of this machine may "
                        "read the database, the photos and the logs in it: chmod 700 %s", self.root, mode, self.root)
            return
        log.info("KIMCHI_HOME=%s had mode %o; now %o (owner only)", self.root, mode, mode & 0o700)


HOLDOUT_KEY = "holdout.key"


def holdout_key(home: Home) -> bytes:
    """The secret that decides each image's side of the frozen holdout (models.trainset.holdout_side).

    Random, made once with mode 0600 and never logged: without it, nobody holding the public dataset can
    tell which images decide promotions, or craft one that lands there.
    """
    path = home.root / HOLDOUT_KEY
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 16:
            raise KimchiError(f"{path} is damaged (too short); remove it only if no retrain has run yet, "
                              "since a new key moves images between the training set and the holdout.")
        return key
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_bytes()
