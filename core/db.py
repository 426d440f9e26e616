"""The workspace database (workbench.db): jobs, datasets, adapters. The only state that is not a file.

SQLite in WAL mode, so readers never block the writer; writes go through `transaction()`
(BEGIN IMMEDIATE) and retry while another process holds the lock.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from core.errors import WorkbenchError
from core.workspace import home

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,          -- run id, also the run folder name
    name        TEXT NOT NULL DEFAULT '',
    run_dir     TEXT NOT NULL,
    model       TEXT NOT NULL DEFAULT '',
    method      TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL,             -- queued starting running completed failed stopped
    position    REAL,                      -- order in the queue while queued
    devices     TEXT NOT NULL DEFAULT 'cpu',
    resume      INTEGER NOT NULL DEFAULT 0,
    pid         INTEGER,
    request_key TEXT UNIQUE,               -- one Start press creates one job, however often it arrives
    error       TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS datasets (
    name        TEXT PRIMARY KEY,
    format      TEXT,
    rows        INTEGER,
    tokens      INTEGER,
    files       TEXT NOT NULL DEFAULT '[]', -- JSON list of file names inside datasets/<name>/
    columns     TEXT NOT NULL DEFAULT '{}', -- JSON column mapping
    source      TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS adapters (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    path        TEXT NOT NULL,             -- the adapter folder (or full model folder)
    base_model  TEXT NOT NULL DEFAULT '',
    method      TEXT NOT NULL DEFAULT '',
    source      TEXT NOT NULL DEFAULT '',  -- trained | imported | mixed
    run_id      TEXT,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key         TEXT PRIMARY KEY,          -- home: the workspace folder the paths above were written in
    value       TEXT NOT NULL
);
"""

# Columns that hold a path, written absolute; those inside the workspace follow it when it moves.
PATH_COLUMNS = (("jobs", "run_dir"), ("adapters", "path"))

BUSY_TIMEOUT_S = 30.0


class DatabaseBusy(WorkbenchError, sqlite3.OperationalError):
    """Another process kept the workspace database locked for longer than BUSY_TIMEOUT_S.
    Also an sqlite3.OperationalError, so code that handles database errors keeps handling it."""

    def __init__(self):
        super().__init__(f"the workspace database ({db_path()}) stayed locked by another process for more than "
                         f"{BUSY_TIMEOUT_S:g} s; nothing was changed", hint="try again in a moment")


def _is_busy(e: sqlite3.OperationalError) -> bool:
    return "locked" in str(e) or "busy" in str(e)


def db_path() -> Path:
    return home() / "workbench.db"


def unreadable(e: sqlite3.DatabaseError) -> str:
    """What to do about a database that cannot be used (the command line and the app say it alike):
    one that cannot be opened (permissions, a full disk) is left to the user; a damaged one is moved aside."""
    if isinstance(e, sqlite3.OperationalError):
        return f"the workspace database {db_path()} cannot be opened ({e})"
    return (f"the workspace database {db_path()} cannot be read ({e}); move it aside and the workbench starts "
            f"a new one (the run folders on disk are listed again)")


_initialised: set[str] = set()
_init_lock = threading.Lock()


def connect() -> sqlite3.Connection:
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=%d" % int(BUSY_TIMEOUT_S * 1000))
    with _init_lock:
        if str(path) not in _initialised:
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            _retry_locked(lambda: conn.executescript(SCHEMA))
            _follow_home(conn)
            _initialised.add(str(path))
    return conn


def _follow_home(conn: sqlite3.Connection) -> None:
    """A workspace moved or copied elsewhere (another folder, a Docker volume seen from the host):
    the paths written inside its old place are moved to its new one, so that no run reads as
    deleted and no adapter is listed twice. Paths outside the workspace are left as they are; so is
    everything when the old place is still this folder by another name (a symlink, '..')."""
    here = str(home())
    row = conn.execute("SELECT value FROM settings WHERE key = 'home'").fetchone()
    old = row["value"] if row else None
    if old == here or old and _same_folder(old, here):
        return
    with transaction(conn):
        if old:
            for table, column in PATH_COLUMNS:
                conn.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                             f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                             (here, len(old) + 1, old, len(old) + 1, old + "/"))
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('home', ?)", (here,))


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _retry_locked(fn, attempts: int = 100):
    """Switching to WAL and creating tables need a lock SQLite does not wait for on its own."""
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
            if attempt == attempts - 1:
                raise DatabaseBusy() from e
            time.sleep(min(0.02 * (attempt + 1), 0.5))


def _begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retried while another process holds the write lock, for BUSY_TIMEOUT_S in all:
    past that, DatabaseBusy, so a caller such as the UI shows a message instead of hanging."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    attempt = 0
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy() from e
        attempt += 1
        time.sleep(min(0.05 * attempt, 1.0, max(0.0, deadline - time.monotonic())))


@contextmanager
def transaction(conn: sqlite3.Connection | None = None):
    """BEGIN IMMEDIATE ... COMMIT, waiting while the database is locked by another process."""
    own = conn is None
    conn = conn or connect()
    try:
        _begin(conn)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        if own:
            conn.close()


def query(sql: str, params=()) -> list[dict]:
    conn = connect()
    try:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()
