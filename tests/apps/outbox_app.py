"""A task for the outbox tests' worker."""

from __future__ import annotations

from redismq import App

app = App()


@app.task(topic="signups", name="welcome")
def welcome(user_id: int) -> int:
    return user_id
