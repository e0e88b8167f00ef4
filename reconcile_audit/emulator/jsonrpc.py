"""The JSON-RPC error every emulated method raises for a request it refuses."""

from __future__ import annotations


class RpcError(Exception):
    """A JSON-RPC error object: the handler answers ``{"error": {"code", "message"}}``."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
