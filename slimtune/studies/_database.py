"""The study database: one engine per URL, one session context manager, the schema
version check.

Example:
    >>> db = Database.open("sqlite:///slimtune.db")
    >>> with db.session() as session:
    ...     names = session.scalars(select(StudyRecord.study_name)).all()
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Float,
    Integer,
    LargeBinary,
    column,
    create_engine,
    func,
    inspect,
    select,
    table,
    text,
    update,
)
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from slimtune._defaults import DEFAULT_STORAGE, STORAGE_ENV  # re-exported here
from slimtune._urls import connect_url, mask_url, scrub  # mask_url re-exported here
from slimtune.studies._connections import FileIdentity, reconnecting
from slimtune.studies._errors import SchemaVersionError, StudyError
from slimtune.studies._schema import SCHEMA_VERSION, Base, SchemaVersion, utcnow

T = TypeVar("T")
logger = logging.getLogger(__name__)

SCHEMA_1_FLAG = ("measured by slimtune schema 1: validation accuracy of the torch model, not of the timed artifact; "
                 "test accuracy as the search saw it")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _migrate_1_to_2(conn: Connection) -> None:
    """Schema 1 -> 2: the objective moves from the test split to the validation split.

    Adds ``slimtune_candidates.test_accuracy`` and ``artifact_bytes``.  Schema 1 stored
    the timed artifact's *test* accuracy as ``accuracy`` (what the search optimized)
    and the torch model's validation accuracy as ``val_accuracy``; the test figure
    moves to ``test_accuracy`` and ``accuracy`` takes the validation one, so the
    frontier and ``select`` rank on validation as in schema 2.  Such rows carry a flag
    saying so.  ``artifact_bytes`` is the length of the stored artifact.  The study's
    baseline measurement is moved the same way.
    """
    conn.execute(text("ALTER TABLE slimtune_candidates ADD COLUMN test_accuracy FLOAT"))
    conn.execute(text("ALTER TABLE slimtune_candidates ADD COLUMN artifact_bytes BIGINT"))
    cands = table("slimtune_candidates", column("id", Integer), column("accuracy", Float), column("val_accuracy", Float),
                  column("test_accuracy", Float), column("artifact_bytes", BigInteger), column("measurement", JSON),
                  column("flags", JSON))
    weights = table("slimtune_weights", column("candidate_id", Integer), column("artifact", LargeBinary))
    studies = table("slimtune_studies", column("id", Integer), column("baseline", JSON))
    lengths = dict(conn.execute(select(weights.c.candidate_id, func.length(weights.c.artifact))).all())
    for row in conn.execute(select(cands)).mappings().all():
        values: dict[str, Any] = {"artifact_bytes": lengths.get(row["id"])}
        if row["accuracy"] is not None:
            m = dict(_json(row["measurement"]) or {})
            m["test_accuracy"], m["accuracy"] = row["accuracy"], row["val_accuracy"]
            flags = [*(_json(row["flags"]) or []), SCHEMA_1_FLAG]
            m["flags"] = flags
            values.update(test_accuracy=row["accuracy"], accuracy=row["val_accuracy"], measurement=m, flags=flags)
        conn.execute(update(cands).where(cands.c.id == row["id"]).values(**values))
    for row in conn.execute(select(studies)).mappings().all():
        baseline = dict(_json(row["baseline"]) or {})
        m = dict(baseline.get("measurement") or {})
        if "test_accuracy" not in m and "accuracy" in m:
            m["test_accuracy"] = m["accuracy"]
            m["accuracy"] = baseline.get("val_accuracy", m["accuracy"])
            baseline["measurement"] = m
            conn.execute(update(studies).where(studies.c.id == row["id"]).values(baseline=baseline))


#: ``{from_version: step(connection)}``: each step brings the schema one version up.
MIGRATIONS: dict[int, Callable] = {1: _migrate_1_to_2}


def _retrying(call: Callable[[], T], *, when: Callable[[Exception], bool], attempts: int, delay: float,
              jitter: float) -> T:
    """``call()``, again (after a growing, jittered pause) while it raises an error that
    ``when`` accepts, at most ``attempts`` times; other errors pass at once."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - `when` decides, the rest is re-raised
            if not when(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay * (attempt + 1) + random.random() * jitter)
    raise AssertionError("unreachable")  # pragma: no cover


def creating_concurrently(create: Callable[[], T], *, attempts: int = 6) -> T:
    """Run ``create`` (which creates tables when missing), retrying when another worker
    creates the same tables at the same moment: PostgreSQL then fails one of two
    concurrent ``CREATE TABLE`` with a unique violation, and the retry finds the tables.
    """
    return _retrying(create, when=lambda exc: isinstance(exc, (IntegrityError, ProgrammingError)),
                     attempts=attempts, delay=0.1, jitter=0.2)


def default_storage() -> str:
    """The storage used when none is given: ``$SLIMTUNE_STORAGE`` if set, else
    :data:`DEFAULT_STORAGE` (``sqlite:///slimtune.db`` in the working directory)."""
    return os.environ.get(STORAGE_ENV, "").strip() or DEFAULT_STORAGE


def resolve_storage(url: "str | None") -> str:
    """``url``, or :func:`default_storage` when it is ``None``."""
    return default_storage() if url is None else url


#: SQLite waits this long for another process's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60


def engine_options(url: "str | URL") -> dict:
    """``create_engine`` options for slimtune's and Optuna's engines: a long busy
    timeout on SQLite (several worker processes share one file), connection checks
    elsewhere."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def commit_without_fsync_in_wal(engine: "Engine") -> "Engine":
    """On SQLite in WAL mode, commit without waiting for the disk (``synchronous=NORMAL``,
    per connection): a study commits a few dozen times per trial, and a full fsync each
    time (``synchronous=FULL``, ~4 ms here) was a visible share of a short trial.  In WAL
    mode this keeps the database consistent whatever happens; a power cut (not a crash
    of the process) may lose the last commits, whose trials the next run then recovers.
    Other databases and rollback-journal SQLite files are left as they are."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _normal_sync_if_wal)
        engine.dispose()  # connections opened before now are reopened with it
    return engine


def _normal_sync_if_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode").fetchone()
        if mode and str(mode[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (or busy): worth a retry."""
    text = str(exc).lower()
    return isinstance(exc, OperationalError) and ("database is locked" in text or "database is busy" in text)


def retry_locked(write: Callable[[], T], *, attempts: int = 5) -> T:
    """Run ``write`` (one whole transaction), again when SQLite reports "database is
    locked" despite the busy timeout (a reader upgrading to a writer in WAL mode fails
    at once)."""
    return _retrying(write, when=lambda exc: isinstance(exc, OperationalError) and is_locked(exc),
                     attempts=attempts, delay=0.2, jitter=0.3)


def parse_storage(url: str) -> URL:
    """Parse a storage URL, raising :class:`StudyError` with a masked URL if it is bad."""
    if not isinstance(url, str) or not url.strip():
        raise StudyError(f"`storage` must be a SQLAlchemy URL such as {DEFAULT_STORAGE!r}, but got {url!r}.")
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StudyError(f"Bad storage URL {mask_url(url)!r}: {scrub(str(exc), url)}") from None
    except ImportError as exc:
        raise StudyError(f"Storage {mask_url(url)!r} needs a database driver that is not installed: {exc}") from None
    return parsed


def sqlite_path(url: URL) -> str | None:
    """The file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:"):  # a SQLite URI (``?uri=true``): its path, without its own query
        database = database[len("file:"):].split("?", 1)[0]
        if database.startswith("//"):  # file://host/path
            database = "/" + database[2:].partition("/")[2]
        if str(url.query.get("mode", "")).lower() == "memory" or "mode=memory" in (url.database or ""):
            return None
    if database in ("", ":memory:"):
        return None
    return database


class Database:
    """slimtune's tables in one database (Optuna's live beside them)."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: A SQLite file's identity when opened (checked before each trial's record).
        self.identity: FileIdentity | None = None

    @classmethod
    def open(cls, url: str | None = None, *, create: bool = True) -> "Database":
        """Connect and check the schema version.

        Args:
            url: any SQLAlchemy URL Optuna's RDBStorage accepts (default:
                :func:`default_storage`).
            create: create slimtune's tables (and a SQLite file) when missing; with
                ``False`` a missing database or missing tables is a :class:`StudyError`
                and nothing is written.

        Raises:
            StudyError: bad URL, unreachable database, no slimtune tables (``create=False``).
            SchemaVersionError: the database holds a newer slimtune schema.
        """
        url = resolve_storage(url)
        parsed = parse_storage(url)
        path = sqlite_path(parsed)
        if path is not None:
            if not create and not os.path.exists(path):
                raise StudyError(f"No study database at {path!r} (storage {mask_url(url)!r}).")
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise StudyError(f"Cannot create the study database {path!r}: the directory {directory!r} does not exist.")
        try:
            engine = reconnecting(commit_without_fsync_in_wal(create_engine(connect_url(url), **engine_options(parsed))),
                                  url)
        except ImportError as exc:
            raise StudyError(f"Storage {mask_url(url)!r} needs a database driver that is not installed: {exc}") from None
        db = cls(url, engine)
        try:
            creating_concurrently(lambda: db._check_schema(create=create))
        except (OperationalError, SQLAlchemyError) as exc:
            engine.dispose()
            first = scrub(str(exc).strip().splitlines()[0], url)
            raise StudyError(f"Cannot use the study database {mask_url(url)!r}: {first}") from None
        except BaseException:
            engine.dispose()
            raise
        if path is not None and os.path.exists(path):
            db.identity = FileIdentity.of(path)
        return db

    def _check_schema(self, *, create: bool) -> None:
        tables = set(inspect(self.engine).get_table_names())
        if SchemaVersion.__tablename__ in tables:
            with self.engine.connect() as conn:
                row = conn.execute(select(SchemaVersion.version, SchemaVersion.slimtune_version)).first()
            if row is not None:
                version, writer = int(row[0]), row[1]
                if version > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"The study database {mask_url(self.url)!r} has slimtune schema version {version} "
                        f"(written by slimtune {writer}), newer than this slimtune's {SCHEMA_VERSION}; "
                        "upgrade slimtune to use it (the database was not changed)."
                    )
                if version < SCHEMA_VERSION:
                    self._migrate(version)
                return
        if not create:
            raise StudyError(f"The database {mask_url(self.url)!r} holds no slimtune studies.")
        foreign = sorted(t for t in tables if not t.startswith("slimtune_"))
        if foreign and "studies" not in tables and self.engine.dialect.name == "sqlite":
            # a SQLite file of something else (a typo in the path?): leave it alone
            raise StudyError(f"{mask_url(self.url)!r} is a SQLite file of something else (tables "
                             f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), not a slimtune or "
                             "Optuna study database; choose another file (it was not changed).")
        Base.metadata.create_all(self.engine)
        self._write_version()

    def _write_version(self) -> None:
        from slimtune._version import __version__

        try:
            with self.session() as session:
                if session.get(SchemaVersion, 1) is None:
                    session.add(SchemaVersion(id=1, version=SCHEMA_VERSION, slimtune_version=__version__))
        except IntegrityError:  # another worker wrote it first
            pass

    def _migrate(self, version: int) -> None:
        """Bring the schema up to :data:`SCHEMA_VERSION`, one step per transaction; each
        step re-reads the version under a row lock (PostgreSQL), so two workers opening
        an old database at once migrate it once."""
        from slimtune._version import __version__

        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise SchemaVersionError(f"No migration from slimtune schema version {version} to {version + 1}.")
            with self.engine.begin() as conn:
                current = conn.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1).with_for_update()).scalar()
                if current == version:
                    step(conn)
                    conn.execute(update(SchemaVersion).where(SchemaVersion.id == 1)
                                 .values(version=version + 1, slimtune_version=__version__, updated_at=utcnow()))
                version = max(version + 1, int(current or 0))
        Base.metadata.create_all(self.engine)  # tables added by the new version

    def enable_wal(self) -> None:
        """Put a SQLite file in write-ahead-log mode (readers never block the writer;
        several processes on one machine can share it; not for network file systems).
        Persistent in the file; done before the first trial, never by read-only commands."""
        if self.engine.dialect.name != "sqlite" or sqlite_path(make_url(self.url)) is None:
            return
        try:
            with self.engine.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                if str(mode).lower() != "wal":
                    retry_locked(lambda: conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar())
            self.engine.dispose()  # reconnect: connections opened now commit without fsync (see above)
        except OperationalError as exc:  # still usable in rollback-journal mode, with the busy timeout
            logger.warning("Could not put %s in WAL mode: %s", mask_url(self.url), scrub(str(exc), self.url))

    def ensure_tables(self) -> None:
        """Create slimtune's tables that are missing (added without a schema version step)."""
        creating_concurrently(lambda: Base.metadata.create_all(self.engine))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success, rolls back on error, and always closes."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({mask_url(self.url)!r})"
