"""One daemon per state dir (a file lock), and per PostgreSQL database (an advisory lock)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.errors import LockedError
from daemon.store.db import utcnow

# pg_try_advisory_lock key: "ragloop" as an int, so other applications' keys are unlikely to collide.
PG_LOCK_KEY = int.from_bytes(b"ragloop", "big")


class InstanceLock:
    """Held for the daemon's lifetime; released by the kernel and the server if the process dies."""

    def __init__(self, state_dir: Path, engine: Engine):
        self.path = state_dir / "ragloop.lock"
        self.engine = engine
        self._fh = None
        self._pg = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockedError(f"another ragloop daemon holds {self.path}: {holder}; stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow().isoformat()}))
        fh.flush()
        self._fh = fh
        if self.engine.dialect.name == "postgresql":
            self._acquire_pg()

    def _acquire_pg(self) -> None:
        conn = self.engine.connect()
        if not conn.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}):
            holder = conn.scalar(sa.text(
                "SELECT coalesce(a.client_addr::text, 'local') || ' pid ' || a.pid FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.objid = :o LIMIT 1"),
                {"o": PG_LOCK_KEY & 0xFFFFFFFF})
            conn.close()
            self.release()
            raise LockedError(f"another ragloop daemon uses this PostgreSQL database (advisory lock held by "
                              f"{holder or 'another session'}); one daemon per database")
        conn.commit()
        self._pg = conn

    def release(self) -> None:
        if self._pg is not None:
            try:
                self._pg.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                self._pg.close()
            except sa.exc.SQLAlchemyError:
                pass
            self._pg = None
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
