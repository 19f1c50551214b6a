"""The study database: one engine per URL, one session context manager, the schema
version check.

Example:
    >>> db = Database.open("sqlite:///slimtune.db")
    >>> with db.session() as session:
    ...     names = session.scalars(select(StudyRecord.study_name)).all()
"""

from __future__ import annotations

import logging
import os
import random
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from slimtune.studies.errors import SchemaVersionError, StudyError
from slimtune.studies.models import SCHEMA_VERSION, Base, SchemaVersion

DEFAULT_STORAGE = "sqlite:///slimtune.db"
T = TypeVar("T")
logger = logging.getLogger(__name__)

#: ``{from_version: step(connection)}``: each step brings the schema one version up.
MIGRATIONS: dict[int, Callable] = {}


def creating_concurrently(create: Callable[[], T], *, attempts: int = 6) -> T:
    """Run ``create`` (which creates tables when missing), retrying when another worker
    creates the same tables at the same moment: PostgreSQL then fails one of two
    concurrent ``CREATE TABLE`` with a unique violation, and the retry finds the tables.
    """
    for attempt in range(attempts):
        try:
            return create()
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")  # pragma: no cover


def mask_url(url: "str | URL") -> str:
    """The URL with its password replaced by ``***`` (never print credentials)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without anything after '@'
        text = str(url)
        if "@" in text:
            head, tail = text.rsplit("@", 1)
            scheme = head.split("://", 1)[0] + "://" if "://" in head else ""
            return f"{scheme}***@{tail}"
        return text


def _scrub(message: str, url: "str | URL") -> str:
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message


#: SQLite waits this long for another process's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60


def engine_options(url: "str | URL") -> dict:
    """``create_engine`` options for slimtune's and Optuna's engines: a long busy
    timeout on SQLite (several worker processes share one file), connection checks
    elsewhere."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (or busy): worth a retry."""
    text = str(exc).lower()
    return isinstance(exc, OperationalError) and ("database is locked" in text or "database is busy" in text)


def retry_locked(write: Callable[[], T], *, attempts: int = 5) -> T:
    """Run ``write`` (one whole transaction), again when SQLite reports "database is
    locked" despite the busy timeout (a reader upgrading to a writer in WAL mode fails
    at once)."""
    for attempt in range(attempts):
        try:
            return write()
        except OperationalError as exc:
            if not is_locked(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")  # pragma: no cover


def parse_storage(url: str) -> URL:
    """Parse a storage URL, raising :class:`StudyError` with a masked URL if it is bad."""
    if not isinstance(url, str) or not url.strip():
        raise StudyError(f"`storage` must be a SQLAlchemy URL such as {DEFAULT_STORAGE!r}, but got {url!r}.")
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StudyError(f"Bad storage URL {mask_url(url)!r}: {_scrub(str(exc), url)}") from None
    except ImportError as exc:
        raise StudyError(f"Storage {mask_url(url)!r} needs a database driver that is not installed: {exc}") from None
    return parsed


def sqlite_path(url: URL) -> str | None:
    """The file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return database


class Database:
    """slimtune's tables in one database (Optuna's live beside them)."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str = DEFAULT_STORAGE, *, create: bool = True) -> "Database":
        """Connect and check the schema version.

        Args:
            url: any SQLAlchemy URL Optuna's RDBStorage accepts.
            create: create slimtune's tables (and a SQLite file) when missing; with
                ``False`` a missing database or missing tables is a :class:`StudyError`
                and nothing is written.

        Raises:
            StudyError: bad URL, unreachable database, no slimtune tables (``create=False``).
            SchemaVersionError: the database holds a newer slimtune schema.
        """
        parsed = parse_storage(url)
        path = sqlite_path(parsed)
        if path is not None:
            if not create and not os.path.exists(path):
                raise StudyError(f"No study database at {path!r} (storage {mask_url(url)!r}).")
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise StudyError(f"Cannot create the study database {path!r}: the directory {directory!r} does not exist.")
        try:
            engine = create_engine(parsed, **engine_options(parsed))
        except ImportError as exc:
            raise StudyError(f"Storage {mask_url(url)!r} needs a database driver that is not installed: {exc}") from None
        db = cls(url, engine)
        try:
            creating_concurrently(lambda: db._check_schema(create=create))
        except (OperationalError, SQLAlchemyError) as exc:
            engine.dispose()
            first = _scrub(str(exc).strip().splitlines()[0], url)
            raise StudyError(f"Cannot use the study database {mask_url(url)!r}: {first}") from None
        except BaseException:
            engine.dispose()
            raise
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
        Base.metadata.create_all(self.engine)
        self._write_version()

    def _write_version(self) -> None:
        from slimtune import __version__

        try:
            with self.session() as session:
                if session.get(SchemaVersion, 1) is None:
                    session.add(SchemaVersion(id=1, version=SCHEMA_VERSION, slimtune_version=__version__))
        except IntegrityError:  # another worker wrote it first
            pass

    def _migrate(self, version: int) -> None:
        from slimtune import __version__

        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise SchemaVersionError(f"No migration from slimtune schema version {version} to {version + 1}.")
            with self.engine.begin() as conn:
                step(conn)
            version += 1
        Base.metadata.create_all(self.engine)  # tables added by the new version
        with self.session() as session:
            record = session.get(SchemaVersion, 1)
            record.version, record.slimtune_version = SCHEMA_VERSION, __version__

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
        except OperationalError as exc:  # still usable in rollback-journal mode, with the busy timeout
            logger.warning("Could not put %s in WAL mode: %s", mask_url(self.url), _scrub(str(exc), self.url))

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
