"""KIMCHI_HOME: the one folder that holds all runtime state, and the names of things inside it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.errors import KimchiError

DEFAULT_HOME = Path("~/.kimchi")


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
        """Create the folder tree; a sentence, not a traceback, when that is impossible."""
        try:
            for path in (self.root, self.data, self.models, self.logs):
                path.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise KimchiError(f"KIMCHI_HOME={self.root} cannot be used: {err.strerror or err}.") from err
        return self
