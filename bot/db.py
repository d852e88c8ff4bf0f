"""The bot's SQLite file and its one door for writes.

One aiosqlite connection (WAL, a busy timeout, synchronous=NORMAL), migrated at open (models.schema). Reads
go through `one` and `all` at any time. Every write is

    async with db.write(durable=...) as tx:
        await tx.execute(...)

which takes the one lock and begins with BEGIN IMMEDIATE, commits when the block ends and rolls back when
anything in it raises, so a writer that fails half-way leaves nothing behind for the next writer to commit.
`durable=True` makes that one transaction synchronous=FULL (a power cut cannot lose it): for what a reply
tells the user is saved. The connection runs without the sqlite3 module's implicit transactions, so a
transaction is exactly the `write` block.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, NamedTuple

import aiosqlite

from models.errors import KimchiError
from models.schema import MIGRATIONS

log = logging.getLogger(__name__)

SYNCHRONOUS = "NORMAL"  # outside a durable write: a crash of the bot loses nothing, a power cut the last few


class Changed(NamedTuple):
    """What one statement of a write did."""

    rowcount: int
    lastrowid: int | None


class Transaction:
    """A write in progress (`Database.write`): its statements, and what runs once it is committed."""

    def __init__(self, con: aiosqlite.Connection) -> None:
        self._con = con
        self.committed: list[Callable[[], Awaitable[Any]]] = []

    async def execute(self, sql: str, args: Iterable[Any] = ()) -> Changed:
        async with self._con.execute(sql, tuple(args)) as cur:
            return Changed(cur.rowcount, cur.lastrowid)

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> int:
        async with self._con.executemany(sql, [tuple(r) for r in rows]) as cur:
            return cur.rowcount

    def after_commit(self, then: Callable[[], Awaitable[Any]]) -> None:
        """Run `then` once the transaction is committed, still holding the write lock (never after a
        rollback): for a file that may go only when no committed row names it any more."""
        self.committed.append(then)


class Database:
    """KIMCHI_HOME/kimchi.sqlite3 through one connection: reads at any time, one write at a time."""

    def __init__(self, con: aiosqlite.Connection, path: Path) -> None:
        self.con, self.path = con, path
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task | None = None

    @classmethod
    async def open(cls, path: Path) -> "Database":
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = await aiosqlite.connect(path, timeout=10, isolation_level=None)
        except Exception as err:  # sqlite3.OperationalError and friends: the operator needs one sentence
            raise KimchiError(f"The database {path} cannot be opened: {err}.") from err
        con.row_factory = aiosqlite.Row
        db = cls(con, path)
        for pragma in ("journal_mode=WAL", "busy_timeout=5000", "foreign_keys=ON", f"synchronous={SYNCHRONOUS}"):
            await db._run(f"PRAGMA {pragma}")
        await db._migrate()
        return db

    async def _run(self, sql: str) -> None:
        async with self.con.execute(sql):
            pass

    async def _migrate(self) -> None:
        version = await self.schema_version()
        for number, script in enumerate(MIGRATIONS[version:], version + 1):
            log.info("applying database migration %d", number)
            try:
                await self.con.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
            except BaseException:
                if self.con.in_transaction:
                    await self._run("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        return (await self.one("PRAGMA user_version"))[0]

    async def close(self) -> None:
        await self.con.close()

    # -- reads ----------------------------------------------------------------------------------
    async def one(self, sql: str, args: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self.con.execute(sql, tuple(args)) as cur:
            return await cur.fetchone()

    async def all(self, sql: str, args: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.con.execute(sql, tuple(args)) as cur:
            return list(await cur.fetchall())

    # -- the one way to write -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def write(self, durable: bool = False) -> AsyncIterator[Transaction]:
        """One transaction under the one lock: committed when the block ends, rolled back when it raises."""
        if self._writer is not None and self._writer is asyncio.current_task():
            raise RuntimeError("a write inside a write would wait for itself forever")
        async with self._lock:
            self._writer = asyncio.current_task()
            try:
                if durable:  # may not change inside a transaction: set before BEGIN, restored after the end
                    await self._run("PRAGMA synchronous=FULL")
                tx = Transaction(self.con)
                await self._run("BEGIN IMMEDIATE")
                try:
                    yield tx
                    await self._run("COMMIT")
                except BaseException:
                    if self.con.in_transaction:
                        await self._run("ROLLBACK")
                    raise
                for then in tx.committed:
                    await then()
            finally:
                self._writer = None
                if durable:
                    await self._run(f"PRAGMA synchronous={SYNCHRONOUS}")
