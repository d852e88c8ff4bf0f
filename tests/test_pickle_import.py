"""`kimchi-train import-model` and a pickle's code: only with --trust-pickle, in a process without the token;
and the files the bot and the trainer leave in KIMCHI_HOME: owner-only, whatever umask they started with."""
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

from models.artifact import LEARNER, read_meta
from models.home import Home
from models.registry import Registry
from tests.botkit import ROOT, TOKEN, bot_env, buttons, one_sentence, rows, stop_bot
from tests.imagegen import photo_bytes
from tests.telegram_fake import user
from training.cli import main

SECRET = "hunter2-not-for-pickles"
IMPORT_MODEL = "kimchi-train import-model: "  # how its one sentence starts


class ReadsTheEnvironment:
    """A pickle whose loading writes the environment it finds into a file (any code could run here)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __reduce__(self):
        return exec, (f"import json, os; open({str(self.out)!r}, 'w').write(json.dumps(dict(os.environ)))",)


def evil_pickle(tmp_path: Path) -> tuple[Path, Path]:
    seen = tmp_path / "seen.json"
    path = tmp_path / "identifying_Kimchi_model.pkl"
    path.write_bytes(pickle.dumps(ReadsTheEnvironment(seen)))
    return path, seen


def loose_modes(root: Path) -> list[str]:
    """Everything under `root` (itself included) that its group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if not path.is_symlink() and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def umask_022() -> None:
    os.umask(0o022)


def test_the_pickle_runs_without_the_token_or_any_kimchi_setting(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("KIMCHI_ADMIN_IDS", "424242")
    monkeypatch.setenv("SOME_SERVICE_PASSWORD", SECRET)
    pkl, seen = evil_pickle(tmp_path)
    rc = main(["import-model", str(pkl), "--trust-pickle"])
    err = capsys.readouterr().err
    assert seen.is_file()  # its code did run: in the separate process
    environ = json.loads(seen.read_text())
    assert "PATH" in environ and not [k for k in environ if k.startswith(("TELEGRAM_", "KIMCHI_"))], sorted(environ)
    assert not [k for k, v in environ.items() if TOKEN in v or SECRET in v or "424242" in v]
    assert rc == 1 and pkl.name in one_sentence(err, IMPORT_MODEL)  # not a learner: refused in one sentence
    assert "runs the code in it" in err and err.index("runs the code") < err.index("kimchi-train import-model:")
    assert Registry(home.models).versions() == [] and not list(home.models.glob(".staging-*"))


def test_without_trust_pickle_nothing_is_loaded(home, tmp_path, capsys):
    pkl, seen = evil_pickle(tmp_path)
    assert main(["import-model", str(pkl)]) == 1
    sentence = one_sentence(capsys.readouterr().err, IMPORT_MODEL)
    assert "runs whatever code" in sentence and "--trust-pickle" in sentence and sentence.count(". ") == 0
    assert not seen.exists()
    assert Registry(home.models).versions() == []


def test_the_trainer_leaves_nothing_readable_by_others_under_umask_022(trained, tmp_path, monkeypatch):
    """`kimchi-train import-model` into a new KIMCHI_HOME, started with umask 022 (the home, its log, the
    registry, a version); with --keep-pickle the pickle is kept byte for byte (without it: test_train)."""
    fresh = tmp_path / "home"
    monkeypatch.setenv("KIMCHI_HOME", str(fresh))
    pkl = trained.registry.path(trained.version) / LEARNER
    before = os.umask(0o022)  # what a shell usually gives; main() must not depend on it
    try:
        rc = main(["import-model", str(pkl), "--trust-pickle", "--keep-pickle"])
        assert os.umask(0o022) == 0o022  # main() gives back the umask it found, for in-process callers
    finally:
        os.umask(before)
    assert rc == 0
    version = Registry(fresh / "models").path("v1")
    assert (version / LEARNER).read_bytes() == pkl.read_bytes()
    assert read_meta(version).vocab == read_meta(trained.registry.path(trained.version)).vocab
    assert (fresh / "logs" / "kimchi-train.log").is_file() and (fresh / "models" / "current").is_file()
    assert loose_modes(fresh) == []


def test_log_files_started_by_rotation_are_owner_only_too(tmp_path):
    """Under umask 022, an old log left 0644 and the files rotation starts: all 0600."""
    import logging

    from models.logs import PrivateRotatingFileHandler

    old = tmp_path / "kimchi-bot.log"
    old.write_text("left readable by an older version\n")
    old.chmod(0o644)
    before = os.umask(0o022)
    try:
        handler = PrivateRotatingFileHandler(old, maxBytes=200, backupCount=2, encoding="utf-8")
        for i in range(20):
            handler.emit(logging.makeLogRecord({"msg": f"line {i} " + "x" * 40}))
        handler.close()
    finally:
        os.umask(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kimchi-bot.log", "kimchi-bot.log.1", "kimchi-bot.log.2"]
    assert [p for p in tmp_path.iterdir() if stat.S_IMODE(p.stat().st_mode) != 0o600] == []


async def test_the_bot_leaves_nothing_readable_by_others_under_umask_022(fake, tmp_path):
    """The real `python -m bot.app` started with umask 022 in a KIMCHI_HOME an older version left 0755:
    the folder, the SQLite file with its -wal and -shm, the log, a user's photo are all owner-only."""
    root = tmp_path / "home"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    home = Home(root)
    env = {**os.environ, **bot_env(home, fake), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "bot.out", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "bot.app"], cwd=tmp_path, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, preexec_fn=umask_022)
    try:
        gina = user(1108, "ko")
        sent = await fake.send_photo(gina, photo_bytes(4, 12))
        answer = await fake.reply_to(sent, timeout=60)
        choice = next(b for row in buttons(answer) for b in row if b["text"] == "깍두기")
        await fake.tap(gina, answer.result, choice["callback_data"])
        await fake.wait_for(lambda c: c.method == "editMessageText")
        running = loose_modes(root)
        names = {p.name for p in root.rglob("*")}
    finally:
        code = await stop_bot(process)
    assert code == 0, (tmp_path / "bot.out").read_text()[-3000:]
    assert {"kimchi.sqlite3", "kimchi.sqlite3-wal", "kimchi.sqlite3-shm", "kimchi-bot.log"} <= names
    assert len(rows(home, "SELECT path FROM corrections")) == 1 and list(home.corrections.rglob("*.jpg"))
    assert running == [] and loose_modes(root) == []
