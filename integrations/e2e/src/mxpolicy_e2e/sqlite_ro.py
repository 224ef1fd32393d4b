"""Read-only looks into a homeserver's SQLite database (never writes, never locks it for
long): ``file:PATH?mode=ro``."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(path)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)


def kv_has_key(path: Path, table: str, key: bytes) -> bool:
    """Whether a key-value tree (Conduit: a table with columns ``key`` and ``value``) has a
    row with this key."""
    if not table.replace("_", "").isalnum():
        raise ValueError(f"not a table name: {table!r}")
    with closing(connect_ro(path)) as db:
        row = db.execute(f'SELECT 1 FROM "{table}" WHERE "key" = ? LIMIT 1', (key,)).fetchone()
    return row is not None


def kv_count_containing(path: Path, table: str, column: str, needle: bytes) -> int:
    """How many rows of a key-value tree hold `needle` in their ``key`` or ``value``."""
    if not table.replace("_", "").isalnum():
        raise ValueError(f"not a table name: {table!r}")
    if column not in ("key", "value"):
        raise ValueError(f"not a column of a tree: {column!r}")
    with closing(connect_ro(path)) as db:
        row = db.execute(f'SELECT count(*) FROM "{table}" WHERE instr("{column}", ?) > 0',
                         (needle,)).fetchone()
    return int(row[0])
