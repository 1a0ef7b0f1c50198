"""The transactional outbox: a message written into the app's own database, in the app's own
transaction, beside the row that caused it; a relay (`redismq.relay.Relay`) moves it to
its queue once the transaction has committed.

    outbox = Outbox(app, "sqlite:///app.db")
    outbox.create_table()
    with db.begin() as conn:                       # the app's transaction
        conn.execute(users.insert(), {...})
        outbox.send(conn, send_welcome_email, user_id, dedup_key=f"user-{user_id}")

Built on SQLAlchemy Core (`pip install 'redismq[outbox]'`), so that SQLite, PostgreSQL and
MySQL work alike. `conn` is the app's DB-API connection, SQLAlchemy Connection or Session:
the row commits (or rolls back) with the app's transaction, and nothing talks to Redis.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from .errors import InvalidMessage, InvalidURL, RedisMQError
from .message import DEFAULT_MAX_BODY, encode_body, new_message_id
from .validation import check_headers, check_key, check_topic_name

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table
    from sqlalchemy.engine import URL, Dialect

    from .app import App
    from .client import Client
    from .tasks import Task

DEFAULT_TABLE = "redismq_outbox"
# The dedup key of a row sent without one of its own: `outbox-<uid>`.
ROW_DEDUP_PREFIX = "outbox-"
# A task's row's header naming its group and task (JSON [group, task]); the relay indexes
# the job by it and does not send it.
JOB_HEADER = "redismq-outbox-job"
# The columns the app writes (the others are the relay's, or the database's).
INSERTED = ["uid", "topic", "msg_key", "dedup_key", "body", "raw", "headers", "created_at"]


def check_row_headers(headers: dict[str, str] | None) -> None:
    """Raise InvalidMessage unless the headers are a dict of strings to strings without
    the row's own (JOB_HEADER)."""
    check_headers(headers)
    if headers and JOB_HEADER in headers:
        raise InvalidMessage(f"the header {JOB_HEADER!r} is the outbox's own")


class OutboxError(RedisMQError):
    """The outbox cannot be used as asked (a bad URL, a missing table or driver, a `conn`
    of an unknown kind)."""


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
        import sqlalchemy.orm
    except ImportError:
        raise OutboxError("the outbox needs SQLAlchemy: pip install 'redismq[outbox]'") from None
    return sqlalchemy


def database_url(url: str) -> URL:
    """The parsed database URL; `postgresql://` uses psycopg (3) when psycopg2 is absent.
    Raises InvalidURL for a URL SQLAlchemy cannot read."""
    sa = _sqlalchemy()
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("no database URL given (e.g. sqlite:///app.db)")
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise InvalidURL(f"malformed database URL {url!r}: {exc}") from None
    if parsed.drivername == "postgresql" and not _importable("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise InvalidURL(
            f"unknown database in {mask_db_url(parsed)!r}: use sqlite://, postgresql:// "
            "or mysql+pymysql://, for example"
        ) from None
    return parsed


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def mask_db_url(url: URL) -> str:
    """The URL with its password hidden."""
    return str(url.render_as_string(hide_password=True))


def outbox_table(name: str = DEFAULT_TABLE) -> Table:
    """The outbox table's definition (in a MetaData of its own)."""
    sa = _sqlalchemy()
    from sqlalchemy.dialects.mysql import LONGBLOB

    return sa.Table(
        name,
        sa.MetaData(),
        # Its order is the order rows are sent in (SQLite needs INTEGER for autoincrement).
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        # Unique per row: the dedup key of a row written without one.
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("msg_key", sa.Text()),
        sa.Column("dedup_key", sa.Text()),
        # LONGBLOB on MySQL: its BLOB holds 64 KB, a body may be up to max_body (1 MiB).
        sa.Column("body", sa.LargeBinary().with_variant(LONGBLOB(), "mysql"), nullable=False),
        sa.Column("raw", sa.Boolean(), nullable=False),
        sa.Column("headers", sa.Text()),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("sent_at", sa.Double()),
        sa.Column("message_id", sa.String(32)),
        sa.Index(f"{name}_pending", "sent_at", "id"),
        # The oldest waiting row of a key (`earlier_waiting`) without reading every one.
        sa.Index(
            f"{name}_keyed",
            "msg_key",
            "id",
            postgresql_where=sa.text("sent_at IS NULL"),
            sqlite_where=sa.text("sent_at IS NULL"),
            mysql_length={"msg_key": 191},
        ),
        sqlite_autoincrement=True,  # ids never reused: the order rows were written in
    )


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting in the outbox (or sent, once marked)."""

    id: int
    uid: str
    topic: str
    key: str | None
    dedup_key: str | None
    body: bytes
    raw: bool
    headers_text: str | None  # as stored: read by `message_headers`
    created_at: float

    @property
    def send_dedup_key(self) -> str:
        """The dedup key it is sent with: its own, else one derived from the row, so that
        sending it again (a relay that died before marking it) is a no-op."""
        return self.dedup_key or f"{ROW_DEDUP_PREFIX}{self.uid}"

    def message_body(self) -> Any:
        """The body as the app gave it (bytes, or the decoded JSON); raises InvalidMessage
        for a body that is not JSON (a row written another way than by `send_message`)."""
        if self.raw:
            return self.body
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise InvalidMessage(f"its body is not valid JSON ({exc})") from None

    def message_headers(self) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
        """The message's headers (None: none) and, for a task's row, the (group, task) by
        which its job is found once sent; raises InvalidMessage for headers that are not a
        JSON object of strings."""
        if not self.headers_text:
            return None, None
        try:
            headers = json.loads(self.headers_text)
            check_headers(headers)
        except (ValueError, InvalidMessage) as exc:
            raise InvalidMessage(f"its headers are not a JSON object of strings ({exc})") from None
        headers = cast(dict[str, str], headers or {})
        job = headers.pop(JOB_HEADER, None)
        if job is None:
            return headers or None, None
        try:
            group, task = json.loads(job)
            return headers or None, (str(group), str(task))
        except (ValueError, TypeError):
            raise InvalidMessage(f"its {JOB_HEADER} header is not [group, task]") from None

    @classmethod
    def of(cls, row: Any) -> OutboxRow:
        m = row._mapping
        return cls(
            m["id"],
            m["uid"],
            m["topic"],
            m["msg_key"],
            m["dedup_key"],
            bytes(m["body"]),
            bool(m["raw"]),
            m["headers"],
            float(m["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the relay is behind: rows waiting, and the creation time of the oldest."""

    waiting: int
    oldest: float | None

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the oldest waiting row has waited (0 when none waits)."""
        if self.oldest is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.oldest)


class Outbox:
    """Messages written into the app's database in the app's transaction; a relay sends
    them. `app` is the App (or Client) whose broker the relay sends to; `url` the database
    (a SQLAlchemy URL such as sqlite:///app.db or postgresql://user@host/db)."""

    def __init__(
        self,
        app: App | Client | None,
        url: str,
        *,
        table: str = DEFAULT_TABLE,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._app = app
        self.db_url = database_url(url)
        self.table = outbox_table(table)
        self.max_body = max_body
        self._dbapi_sql: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def __repr__(self) -> str:
        return f"Outbox({self.name!r})"

    @property
    def name(self) -> str:
        """The outbox as shown in status: its database (password hidden) and table."""
        return f"{mask_db_url(self.db_url)}#{self.table.name}"

    @property
    def client(self) -> Client:
        """The client the relay sends with ($REDISMQ_URL when none was given)."""
        from .app import App
        from .client import Client

        if isinstance(self._app, App):
            return self._app.client
        if self._app is None:
            self._app = Client()
        return self._app

    @cached_property
    def engine(self) -> Engine:
        """The relay's own connections to the database (made on first use)."""
        sa = _sqlalchemy()
        args = {"timeout": 30.0} if self.db_url.get_backend_name() == "sqlite" else {}
        return sa.create_engine(self.db_url, pool_pre_ping=True, connect_args=args)

    @property
    def locks_rows(self) -> bool:
        """Whether the database can lock the rows a relay sends (SELECT ... FOR UPDATE SKIP
        LOCKED), so that relays running at once take different rows."""
        return self.db_url.get_backend_name() in ("postgresql", "mysql")

    def close(self) -> None:
        """Close the relay's connections."""
        if "engine" in self.__dict__:
            self.engine.dispose()

    # -- writing (inside the app's transaction) ---------------------------------------
    def send(
        self, conn: Any, task: Task, *args: Any, dedup_key: str | None = None, **kwargs: Any
    ) -> str:
        """Write a run of `task` with these arguments into the outbox, in `conn`'s
        transaction; returns the row's uid. It is sent once the transaction commits."""
        return self.send_with_options(conn, task, args, kwargs, dedup_key=dedup_key)

    def send_with_options(
        self,
        conn: Any,
        task: Task,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """`send` with an ordering key, a dedup key or headers."""
        check_row_headers(headers)
        # The row's own header, kept off the message: the relay indexes the job by it.
        job = {JOB_HEADER: json.dumps([task.group, task.name])}
        body = task.body(tuple(args), kwargs)
        return self._write(conn, task.topic, body, key, dedup_key, {**(headers or {}), **job})

    def send_message(
        self,
        conn: Any,
        topic: str,
        body: Any,
        *,
        key: str | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Write one message for `topic` into the outbox, in `conn`'s transaction (a DB-API
        connection, a SQLAlchemy Connection or Session); returns the row's uid, the id the
        message is sent under (a task's job is found by it once the relay sent it).

        Checked here (InvalidMessage), so that a row the relay could never send is not
        written. `dedup_key` as in Client.send; without one, the row gets its own.
        """
        check_row_headers(headers)
        return self._write(conn, topic, body, key, dedup_key, headers)

    def _write(
        self,
        conn: Any,
        topic: str,
        body: Any,
        key: str | None,
        dedup_key: str | None,
        headers: dict[str, str] | None,
    ) -> str:
        check_topic_name(topic)
        check_key("key", key)
        check_key("dedup_key", dedup_key)
        data, raw = encode_body(body, self.max_body)
        uid = new_message_id()
        values = {
            "uid": uid,
            "topic": topic,
            "msg_key": key,
            "dedup_key": dedup_key,
            "body": data,
            "raw": raw,
            "headers": json.dumps(headers) if headers else None,
            "created_at": time.time(),
        }
        self._insert(conn, values)
        return uid

    def _insert(self, conn: Any, values: dict[str, Any]) -> None:
        sa = _sqlalchemy()
        if isinstance(conn, sa.engine.Connection | sa.orm.Session | sa.orm.scoped_session):
            conn.execute(self.table.insert(), values)
        elif hasattr(conn, "cursor"):
            sql, order = self._dbapi_insert(conn)
            params: Any = tuple(values[k] for k in order) if order is not None else values
            cursor = conn.cursor()
            try:
                cursor.execute(sql, params)
            finally:
                cursor.close()
        else:
            raise OutboxError(
                "conn must be a DB-API connection or a SQLAlchemy Connection or Session, "
                f"not {type(conn).__name__}"
            )

    def _dbapi_insert(self, conn: Any) -> tuple[str, tuple[str, ...] | None]:
        """The INSERT in the parameter style of `conn`'s driver, and the order of its
        parameters (None: named)."""
        driver = sys.modules.get(type(conn).__module__.split(".")[0])
        dialect_class: Any = self.db_url.get_dialect()
        style = getattr(driver, "paramstyle", None) or dialect_class.default_paramstyle
        if style not in self._dbapi_sql:
            dialect: Dialect = dialect_class(paramstyle=style)
            compiled = self.table.insert().compile(dialect=dialect, column_keys=INSERTED)
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            self._dbapi_sql[style] = (str(compiled), order)
        return self._dbapi_sql[style]

    # -- the table --------------------------------------------------------------------
    def create_table(self) -> None:
        """Create the outbox table and its index, unless they exist."""
        with self.errors():
            self.table.metadata.create_all(self.engine)

    def sql(self) -> str:
        """The SQL that creates the table and its index, for this database."""
        sa = _sqlalchemy()
        dialect = self.db_url.get_dialect()()
        parts = [str(sa.schema.CreateTable(self.table).compile(dialect=dialect)).strip()]
        parts += [
            str(sa.schema.CreateIndex(i).compile(dialect=dialect)).strip()
            for i in sorted(self.table.indexes, key=lambda i: str(i.name))
        ]
        return ";\n\n".join(parts) + ";\n"

    def errors(self) -> Any:
        """Context in which database errors become one-line OutboxErrors."""
        return _DatabaseErrors(self)

    # -- reading and marking (the relay's side) ---------------------------------------
    def waiting(
        self, conn: Connection, limit: int, after: int = 0, lock: bool = False
    ) -> list[OutboxRow]:
        """Up to `limit` unsent rows with an id above `after`, oldest first (`lock`: locked
        FOR UPDATE, skipping rows another relay holds)."""
        sa = _sqlalchemy()
        t = self.table
        q = sa.select(t).where(t.c.sent_at.is_(None), t.c.id > after).order_by(t.c.id).limit(limit)
        if lock:
            q = q.with_for_update(skip_locked=True)
        return [OutboxRow.of(r) for r in conn.execute(q)]

    def earlier_waiting(self, conn: Connection, rows: Sequence[OutboxRow]) -> dict[str, int]:
        """For each key of `rows`, the oldest unsent row of that key before them that is not
        one of them (one another relay holds, or one left behind): theirs go first."""
        keys = {r.key for r in rows if r.key is not None}
        if not keys:
            return {}
        sa = _sqlalchemy()
        t = self.table
        q = (
            sa.select(t.c.msg_key, sa.func.min(t.c.id))
            .where(
                t.c.sent_at.is_(None),
                t.c.msg_key.in_(sorted(keys)),
                t.c.id < max(r.id for r in rows),
                t.c.id.not_in([r.id for r in rows]),
            )
            .group_by(t.c.msg_key)
        )
        return {key: first for key, first in conn.execute(q)}

    def mark_sent(self, conn: Connection, sent: Iterable[tuple[int, str]]) -> None:
        """Mark rows (id, message id) as sent now (a row marked already keeps its mark)."""
        sa = _sqlalchemy()
        t = self.table
        now = time.time()
        params = [{"row": row, "mid": mid, "at": now} for row, mid in sent]
        if not params:
            return
        stmt = (
            sa.update(t)
            .where(t.c.id == sa.bindparam("row"), t.c.sent_at.is_(None))
            .values(sent_at=sa.bindparam("at"), message_id=sa.bindparam("mid"))
        )
        conn.execute(stmt, params)

    def lag(self) -> Lag:
        """Rows waiting to be sent and the creation time of the oldest."""
        sa = _sqlalchemy()
        t = self.table
        unsent = t.c.sent_at.is_(None)
        with self.errors(), self.engine.connect() as conn:
            waiting = conn.execute(sa.select(sa.func.count()).where(unsent)).scalar_one()
            # The first row by id (the pending index's order), not min(created_at), which
            # would read every waiting row from the table.
            oldest = conn.execute(
                sa.select(t.c.created_at).where(unsent).order_by(t.c.id).limit(1)
            ).scalar()
        return Lag(int(waiting), None if oldest is None else float(oldest))

    def delete_sent(self, older_than: float) -> int:
        """Delete rows sent more than `older_than` seconds ago; returns how many."""
        sa = _sqlalchemy()
        t = self.table
        with self.errors(), self.engine.begin() as conn:
            result = conn.execute(sa.delete(t).where(t.c.sent_at < time.time() - older_than))
        return int(result.rowcount or 0)


class _DatabaseErrors:
    """Turns SQLAlchemy's errors into one-line OutboxErrors naming the database."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        sa = _sqlalchemy()
        if not isinstance(exc, sa.exc.SQLAlchemyError):
            return
        raise OutboxError(database_problem(self.outbox, exc)) from None


def database_problem(outbox: Outbox, exc: BaseException) -> str:
    """One line saying what went wrong with the outbox's database."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    where = mask_db_url(outbox.db_url)
    if "no such table" in detail or "does not exist" in detail or "doesn't exist" in detail:
        return (
            f"the outbox table {outbox.table.name!r} is missing in {where} (create it with "
            f"outbox.create_table() or: redismq outbox create {where})"
        )
    return f"outbox database {where}: {detail}"
