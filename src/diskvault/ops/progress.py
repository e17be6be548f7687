"""The progress callback the operations report through (the CLI draws it)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int | None, what: str) -> None: ...
    def advance(self, n: int) -> None: ...


class NoProgress:
    def start(self, total: int | None, what: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass
