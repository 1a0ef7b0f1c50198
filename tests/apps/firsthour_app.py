"""The app of the first-hour tests (issue 14): a task that fails deep in its own code, and a
middleware that records its hooks in the side-effect file named by $REDISMQ_TEST_DB."""

from __future__ import annotations

from redismq import App


def parse_order(text: str) -> int:
    return int(text)  # raises ValueError: the frame the traceback must show


app = App()


@app.task(topic="orders", name="orders.import", max_retries=1, backoff=0.01)
def import_order(text: str) -> int:
    return parse_order(text)
