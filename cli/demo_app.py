"""The app the demo runs: a welcome e-mail that takes a few milliseconds to "send"."""

from __future__ import annotations

import time

from redismq import App

app = App()


@app.task(topic="demo-emails", max_retries=2, backoff=0.1)
def send_welcome_email(user_id: int) -> str:
    time.sleep(0.001)
    return f"welcome mail sent to user {user_id}"
