"""The web app: a sign-up form and a JSON endpoint.

A sign-up is validated and written to SQLite together with one `send_welcome_email`
message in the outbox table (dedup key: the user id), in one transaction, and answered at
once: the sign-up never waits for Redis, and a committed user always gets the e-mail. The
relay (`redismq worker ... --outbox sqlite:///registration.db`) hands the message to the
queue, a worker sends the e-mail. `EMAIL_MODE` picks another way to compare against
(`measure` does): `queued` commits the user, then sends the message to Redis directly (a
sign-up fails while Redis is away, and a crash between the two loses the e-mail);
`inline` sends the e-mail inside the request.

Run it: uvicorn examples.registration.web:app --port 8000
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError, field_validator

from redismq.outbox import Outbox

from . import db
from .mail import deliver_welcome
from .tasks import app as tasks_app
from .tasks import send_welcome_email

MODES = ("outbox", "queued", "inline")

EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")


class SignUp(BaseModel):
    """What a sign-up must carry; anything else is answered with 422."""

    email: str
    name: str

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip()
        if len(value) > 254 or not EMAIL.match(value):
            raise ValueError("not a valid e-mail address")
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not 1 <= len(value) <= 100:
            raise ValueError("a name has 1 to 100 characters")
        if any(not c.isprintable() for c in value):
            raise ValueError("a name must not contain control characters")
        return value


def dedup_key(user_id: int) -> str:
    """The welcome e-mail's dedup key: one message per user, however often it is sent."""
    return f"user-{user_id}"


def queue_welcome(user: dict[str, Any]) -> str:
    """Send the user's welcome e-mail task; returns its message id (the first one's, for a
    resend within the dedup window)."""
    job = send_welcome_email.send_with_options(
        kwargs={"user_id": user["id"], "email": user["email"], "name": user["name"]},
        dedup_key=dedup_key(user["id"]),
    )
    return job.id


_outboxes: dict[str, Outbox] = {}
_outboxes_lock = threading.Lock()


def outbox(db_path: str | None = None) -> Outbox:
    """The outbox table in the example's database (made on first use)."""
    path = db_path or db.path()
    with _outboxes_lock:
        if path not in _outboxes:
            box = Outbox(tasks_app, f"sqlite:///{path}")
            box.create_table()
            _outboxes[path] = box
        return _outboxes[path]


def write_welcome(conn: Any, user: dict[str, Any], db_path: str | None) -> str:
    """Write the user's welcome e-mail task into the outbox, in `conn`'s transaction;
    returns the outbox row's id."""
    return outbox(db_path).send(
        conn,
        send_welcome_email,
        user_id=user["id"],
        email=user["email"],
        name=user["name"],
        dedup_key=dedup_key(user["id"]),
    )


def register(form: SignUp, mode: str, db_path: str | None) -> tuple[dict[str, Any], bool]:
    """The sign-up itself: write the user and the welcome e-mail's message in one
    transaction (outbox), or write the user then queue (or send) the e-mail."""
    written: list[str] = []
    if mode == "outbox":
        outbox(db_path)  # its table, made before the transaction (SQLite has one writer)
    conn = db.connect(db_path)
    try:
        if mode == "outbox":
            user, created = db.add_user(
                conn,
                form.email,
                form.name,
                then=lambda c, u: written.append(write_welcome(c, u, db_path)),
            )
        else:
            user, created = db.add_user(conn, form.email, form.name)
    finally:
        conn.close()
    answer: dict[str, Any] = {**user, "created": created}
    if mode == "outbox":
        # An existing user's e-mail was committed with the account: nothing to send.
        answer["welcome_email"] = "queued"
        if written:
            answer["outbox_id"] = written[0]
    elif mode == "inline":
        answer["welcome_email"] = deliver_welcome(
            user["id"], user["email"], user["name"], db_path=db_path
        )
    else:
        # Sent again for an existing user too: if the first attempt never reached the
        # queue (a crash between the commit above and this line), this one does; if it
        # did, the dedup key makes this a no-op.
        answer["welcome_email"] = "queued"
        answer["message_id"] = queue_welcome(user)
    return answer, created


def create_app(mode: str | None = None, db_path: str | None = None) -> FastAPI:
    """The app; `mode` is "outbox" (default, $EMAIL_MODE), "queued" or "inline"."""
    mode = mode or os.environ.get("EMAIL_MODE", "outbox")
    if mode not in MODES:
        raise ValueError(f"EMAIL_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    web = FastAPI(title="redismq registration example")

    @web.get("/", response_class=HTMLResponse)
    def form_page() -> str:
        return page()

    @web.post("/signup", response_class=HTMLResponse)
    async def signup_form(request: Request) -> HTMLResponse:
        fields = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        try:
            form = SignUp(email=fields.get("email", ""), name=fields.get("name", ""))
        except ValidationError as exc:
            errors = [
                f"{e['loc'][-1]}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            ]
            return HTMLResponse(page(fields, errors), status_code=422)
        user, created = await run_in_threadpool(register, form, mode, db_path)
        return HTMLResponse(welcome_page(user, created), status_code=201 if created else 200)

    @web.post("/api/signup", status_code=201)
    def signup_json(form: SignUp) -> JSONResponse:
        user, created = register(form, mode, db_path)
        return JSONResponse(user, status_code=201 if created else 200)

    @web.get("/api/users/{user_id}")
    def get_user(user_id: int) -> dict[str, Any]:
        conn = db.connect(db_path)
        try:
            user = db.get_user(conn, user_id)
            if user is None:
                raise HTTPException(404, f"no user {user_id}")
            return {**user, "welcome_email": db.welcome_record(conn, user_id)}
        finally:
            conn.close()

    @web.post("/api/users/{user_id}/welcome")
    def resend_welcome(user_id: int) -> dict[str, Any]:
        """Ask for the welcome e-mail again: the same dedup key, so no second e-mail."""
        conn = db.connect(db_path)
        try:
            user = db.get_user(conn, user_id)
            if user is None:
                raise HTTPException(404, f"no user {user_id}")
            if mode == "outbox":
                outbox(db_path)  # its table, made before the transaction
                with conn:
                    return {"user_id": user_id, "outbox_id": write_welcome(conn, user, db_path)}
        finally:
            conn.close()
        return {"user_id": user_id, "message_id": queue_welcome(user)}

    return web


STYLE = (
    "body{font-family:sans-serif;max-width:32em;margin:3em auto}label{display:block;margin:.6em 0}"
)


def page(fields: dict[str, str] | None = None, errors: list[str] | None = None) -> str:
    fields = fields or {}
    value = {k: html.escape(fields.get(k, ""), quote=True) for k in ("email", "name")}
    problems = "".join(f"<li>{html.escape(e)}</li>" for e in errors or [])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sign up</title><style>{STYLE}</style></head>
<body><h1>Sign up</h1>
{f'<ul style="color:#b00">{problems}</ul>' if problems else ""}
<form method="post" action="/signup">
<label>Name <input name="name" value="{value["name"]}" required maxlength="100"></label>
<label>E-mail <input name="email" type="email" value="{value["email"]}" required></label>
<button type="submit">Create my account</button>
</form></body></html>"""


def welcome_page(user: dict[str, Any], created: bool) -> str:
    name, email = html.escape(user["name"]), html.escape(user["email"])
    what = "Your account is ready" if created else "You had an account already"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Welcome</title><style>{STYLE}</style></head>
<body><h1>Welcome, {name}!</h1><p>{what} (#{user["id"]}). A welcome e-mail is on its way
to {email}.</p></body></html>"""


@contextlib.contextmanager
def serve_in_thread(web: FastAPI, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the app with uvicorn from a thread; yields its base URL, stops on exit."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(web, host=host, port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


app = create_app()
