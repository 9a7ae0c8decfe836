"""Users of the web app: ``name:password[:admin]`` lines from a file or an environment variable.

Gradio's built-in login is basic access control (no lockout, no rate limit: put a proxy in front for
anything beyond a lab network). Roles are ours: only admins may start training, promote or roll back,
and every such handler checks ``gr.Request.username`` itself, because any event is reachable over HTTP.
Without a users list the app runs single-user on loopback and that user is an admin.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["USERS_ENV", "Users", "load_users"]

_logger = logging.getLogger(__name__)

USERS_ENV = "ILA_USERS"  # same format as the file; lines separated by newlines or ';'
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class Users:
    """Known users, their passwords and which of them are admins."""

    passwords: tuple[tuple[str, str], ...]
    admins: frozenset[str]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.passwords]
        if not names:
            raise ValueError("a users list needs at least one user")
        if len(set(names)) != len(names):
            raise ValueError("a user name appears twice in the users list")
        if not self.admins <= set(names):
            raise ValueError("admins must be listed users")

    @classmethod
    def parse(cls, text: str) -> Users:
        """Parse ``name:password[:admin]`` entries (one per line or ';'-separated; '#' starts a comment).

        Raises:
            ValueError: a malformed line (its number is named, never its content).
        """
        passwords: list[tuple[str, str]] = []
        admins: set[str] = set()
        for number, raw in enumerate(text.replace(";", "\n").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, rest = line.partition(":")
            password, role = rest, ""
            if rest.endswith(":admin"):
                password, role = rest[: -len(":admin")], "admin"
            if not sep or not name or not password or not set(name) <= _NAME_CHARS:
                raise ValueError(f"users entry {number}: expected name:password[:admin] with a plain name")
            if len(password) < 8:
                raise ValueError(f"users entry {number}: password shorter than 8 characters")
            passwords.append((name, password))
            if role:
                admins.add(name)
        return cls(passwords=tuple(passwords), admins=frozenset(admins))

    def check(self, username: str, password: str) -> bool:
        """Gradio's ``auth`` callable: constant-time comparison against every entry."""
        ok = False
        for name, expected in self.passwords:
            # compare against all entries so timing does not tell which user names exist
            match = hmac.compare_digest(name.encode(), str(username).encode())
            ok |= match & hmac.compare_digest(expected.encode(), str(password).encode())
        if not ok:
            _logger.warning("failed login for a user name of %d characters", len(str(username)))
        return ok

    def is_admin(self, username: str | None) -> bool:
        """True for users listed with ``:admin``."""
        return username is not None and username in self.admins


def load_users(path: Path | None, *, env: dict[str, str] | None = None) -> Users | None:
    """Users from ``path``, else from the ``ILA_USERS`` environment variable, else None (no login).

    Raises:
        ValueError: the file or variable is malformed or empty.
        FileNotFoundError: ``path`` is given but missing.
    """
    env = os.environ if env is None else env
    if path is not None:
        return Users.parse(Path(path).read_text(encoding="utf-8"))
    text = env.get(USERS_ENV)
    return Users.parse(text) if text else None
