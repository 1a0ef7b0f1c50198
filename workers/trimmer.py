"""Trimming the consumed topics by their retention."""

from __future__ import annotations

from collections.abc import Iterable

from redismq import Client

from .housekeeping import Component


class Trimmer(Component):
    """Trims the consumed topics by their retention."""

    interval = 10.0

    def __init__(self, client: Client, topics: Iterable[str]) -> None:
        self.client = client
        self.topics = sorted(topics)

    def tick(self) -> None:
        for topic in self.topics:
            self.client.trim(topic)
