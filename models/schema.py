"""The bot's SQLite schema, as numbered migrations applied in order at start (PRAGMA user_version).

It lives in models/ because the bot writes this file and the trainer reads it (models.corpus, for
`kimchi-train export-dataset`): one definition for both. Append only; never edit an applied migration.
"""
from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: predictions and corrections
    """
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        user_id INTEGER,
        message_id INTEGER NOT NULL,
        reply_message_id INTEGER,
        file_id TEXT NOT NULL,
        file_unique_id TEXT,
        sha256 TEXT NOT NULL,
        label TEXT,
        confidence REAL,
        top_json TEXT,
        model_version TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX predictions_by_message ON predictions(chat_id, message_id);
    CREATE INDEX predictions_by_reply ON predictions(chat_id, reply_message_id);
    CREATE INDEX predictions_by_user ON predictions(chat_id, user_id, created_at);
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        prediction_id INTEGER NOT NULL UNIQUE REFERENCES predictions(id),
        user_id INTEGER,
        chat_id INTEGER NOT NULL,
        message_id INTEGER,
        file_unique_id TEXT,
        sha256 TEXT NOT NULL,
        predicted_label TEXT,
        confidence REAL,
        corrected_label TEXT NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 0,
        model_version TEXT,
        path TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX corrections_by_sha ON corrections(sha256);
    """,
    # 2: retraining history, and each image's side of the frozen holdout, decided once
    """
    CREATE TABLE retrain_runs (
        id INTEGER PRIMARY KEY,
        started_by INTEGER,
        chat_id INTEGER,
        status TEXT NOT NULL,
        pid INTEGER,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        duration_s REAL,
        counts_json TEXT,
        candidate TEXT,
        baseline TEXT,
        metrics_json TEXT,
        decision TEXT,
        reason TEXT,
        log_tail TEXT
    );
    CREATE TABLE splits (
        sha256 TEXT PRIMARY KEY,
        split TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
        source TEXT NOT NULL,
        decided_at TEXT NOT NULL
    );
    """,
    # 3: a correction whose file vanished (a crash, a hand-deleted file) is flagged, not trained on
    """
    ALTER TABLE corrections ADD COLUMN missing_file INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: trusted corrections. Each label has a status decided by the policy (earlier rows were all used:
    # accepted); where it came from; who decided it. Users an admin trusted or blocked.
    """
    ALTER TABLE corrections ADD COLUMN status TEXT NOT NULL DEFAULT 'accepted'
        CHECK (status IN ('pending', 'accepted', 'rejected'));
    ALTER TABLE corrections ADD COLUMN source TEXT NOT NULL DEFAULT 'correction';
    ALTER TABLE corrections ADD COLUMN decided_by INTEGER;
    ALTER TABLE corrections ADD COLUMN decided_at TEXT;
    ALTER TABLE corrections ADD COLUMN audit_flag TEXT;
    CREATE INDEX corrections_by_status ON corrections(status, id);
    CREATE INDEX corrections_by_user ON corrections(user_id);
    CREATE INDEX corrections_by_file ON corrections(file_unique_id);
    CREATE TABLE users (
        user_id INTEGER PRIMARY KEY,
        trusted INTEGER NOT NULL DEFAULT 0,
        blocked INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    """,
    # 5: hardening. A label remembers the Telegram update it came from (an older one never replaces a newer
    # one), what decided its status (only admin decisions and independent agreement earn trust), and the
    # size of its stored file (per-user quota). A user's first sighting: agreement counts only seasoned users.
    """
    ALTER TABLE corrections ADD COLUMN update_seq INTEGER;
    ALTER TABLE corrections ADD COLUMN basis TEXT;
    ALTER TABLE corrections ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE corrections SET basis='admin' WHERE decided_by IS NOT NULL;
    UPDATE corrections SET status='rejected', basis='block'
        WHERE status != 'rejected' AND user_id IN (SELECT user_id FROM users WHERE blocked=1);
    ALTER TABLE users ADD COLUMN first_seen TEXT;
    INSERT OR IGNORE INTO users (user_id, updated_at)
        SELECT DISTINCT user_id, MIN(created_at) FROM predictions WHERE user_id IS NOT NULL GROUP BY user_id;
    UPDATE users SET first_seen = (SELECT MIN(created_at) FROM predictions p WHERE p.user_id = users.user_id);
    UPDATE users SET first_seen = updated_at WHERE first_seen IS NULL;
    CREATE INDEX corrections_by_sha_label ON corrections(sha256, corrected_label, status);
    """,
    # 6: a retrain whose candidate was not promoted is 'kept' (the serving model stays); 'rejected' is a
    # label's status only
    """
    UPDATE retrain_runs SET status='kept' WHERE status='rejected';
    """,
    # 7: people's data. /forget and the retention purge find a user's rows and old rows by index; an erasure
    # is counted (when, how much), never who asked.
    """
    CREATE INDEX predictions_of_user ON predictions(user_id);
    CREATE INDEX predictions_by_age ON predictions(created_at);
    CREATE INDEX corrections_by_age ON corrections(status, created_at);
    CREATE TABLE erasures (
        id INTEGER PRIMARY KEY,
        erased_at TEXT NOT NULL,
        predictions INTEGER NOT NULL,
        labels INTEGER NOT NULL
    );
    """,
    # 8: the review desk shows who gave a label by name: the labeller's Telegram name as they last sent it
    # (personal data: in /mydata, gone with /forget)
    """
    ALTER TABLE users ADD COLUMN name TEXT;
    """,
]
