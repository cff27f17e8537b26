"""The Legiti API token, from the environment or from a file that may change.

A Kubernetes Secret mounted as a volume is updated in place (an atomic symlink
swap) when the Secret is rotated; re-reading the file is how a running pod
picks the new token up without a restart, and how it heals by itself after an
operator fixes a wrong token.
"""

from __future__ import annotations

from pathlib import Path

from forwarder.ops.logs import register_secret


class TokenError(RuntimeError):
    """The token file cannot be read or is empty."""


class TokenSource:
    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        if (token is None) == (path is None):
            raise ValueError("give exactly one of token and path")
        self._path = path
        self._token = token if token is not None else self._read()
        register_secret(self._token)

    @property
    def token(self) -> str:
        return self._token

    @property
    def path(self) -> Path | None:
        return self._path

    def refresh(self) -> bool:
        """Re-read the file; True when the token changed. A fixed token never changes."""
        if self._path is None:
            return False
        token = self._read()
        if token == self._token:
            return False
        register_secret(token)
        self._token = token
        return True

    def _read(self) -> str:
        assert self._path is not None
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {self._path}: {exc.strerror}") from exc
        if not token:
            raise TokenError(f"the token file {self._path} is empty")
        return token
