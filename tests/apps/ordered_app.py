"""An ordered group for the ordering tests: each run appends its sequence number to a
Redis list per key, so the test can read the order in which each key was processed."""

from __future__ import annotations

import os
import time

import redis

from redismq import App, Message

app = App()
_seen = redis.Redis.from_url(os.environ.get("REDISMQ_URL", "redis://127.0.0.1:6379/0"))


@app.consumer("orders", group="ledger", ordered=True, max_retries=5, backoff=0.01)
def apply(msg: Message) -> None:
    body = msg.body
    if body.get("fail_first") and msg.attempt == 0:
        raise RuntimeError("first attempt fails")
    if body.get("sleep"):  # a slow message: its process id is readable while it runs
        _seen.rpush(f"started:{body['key']}", os.getpid())
        time.sleep(body["sleep"])
    _seen.rpush(f"seen:{body['key']}", body["seq"])
