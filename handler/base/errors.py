"""The one exception type a request can end with, carrying the HTTP status the client sees."""

from __future__ import annotations

import uuid


class RunError(Exception):
    """A batch or request that cannot be accepted.

    4xx statuses are the client's mistake, 503 means one of our dependencies failed.
    ``index`` is the position of the offending run in the batch, when there is one.
    """

    def __init__(
        self, status: int, reason: str, index: int | None = None, run_id: uuid.UUID | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.index = index
        self.run_id = run_id  # the run it is about, when the index is not known where it is raised

    def to_json(self) -> dict:
        body: dict = {"error": self.reason}
        if self.index is not None:
            body["index"] = self.index
        return body
