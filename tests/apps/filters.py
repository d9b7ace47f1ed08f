"""Filters the tests route through by ``module:Class`` (tests/ is on the proxy's path)."""

from __future__ import annotations

from wsgiproxy.filters import Answer, Filter, Outcome, Request, Response


class Raises(Filter):
    """Raises in the hook the request's ``X-Boom`` names."""

    def _maybe(self, request: Request, hook: str) -> None:
        if request.headers.get("X-Boom") == hook:
            raise RuntimeError(f"boom in {hook}")

    def on_request(self, request: Request) -> Answer | None:
        self._maybe(request, "on_request")
        return None

    def on_response(self, request: Request, response: Response) -> None:
        self._maybe(request, "on_response")

    def on_complete(self, request: Request, outcome: Outcome) -> None:
        self._maybe(request, "on_complete")


class Counts(Filter):
    """Tells the client how many requests this instance has seen (its state across
    reloads), and records the outcome of the one before in a response header."""

    def __init__(self, config, context) -> None:
        super().__init__(config, context)
        self.seen = 0
        self.last = ""

    def on_request(self, request: Request) -> Answer | None:
        self.seen += 1
        request.state["counts.n"] = self.seen
        return None

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.set("X-Seen", str(request.state["counts.n"]))
        response.headers.set("X-Last-Outcome", self.last or "-")

    def on_complete(self, request: Request, outcome: Outcome) -> None:
        self.last = f"{outcome.status} {outcome.cache or '-'} {outcome.answered_by or '-'}"


class Rewrite(Filter):
    """Sets the target to ``config["target"]``."""

    def on_request(self, request: Request) -> Answer | None:
        request.target = self.config["target"]
        return None
