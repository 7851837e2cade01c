"""Bearer-token auth by role for the HTTP edge: who may ingest events, ask for explanations, or read.

Roles, from least to most harm a leaked token can do:

- ``read``: ``/recommend``, ``/score``, OIP infer and metadata. Open unless ``protect_reads`` is true.
- ``ingest``: ``POST /events`` (writes what later answers are computed from).
- ``admin``: a request with ``explain: true`` (raw online features) and the admin endpoints.

The roles nest: **admin ⊇ ingest ⊇ read**. Each role can already do more harm than the ones below it
(an ingest client steers the answers a reader gets, and an admin sees the features behind them), so
refusing it the lesser rights protects nothing, while explicit roles would force each admin token to be
copied into every list and every rotation to touch three lists.

Tokens come from a file (e.g. a mounted Kubernetes secret) and/or an environment variable, in one
format, YAML or JSON, a mapping of role to a list of tokens, so that a role can hold an old and a new
token while clients move over::

    admin: [9zQ-m1...]
    ingest: [old-token-still-in-use..., new-token-rolled-out...]
    read: []

A token has 16 to 4096 characters of ``A-Z a-z 0-9 - . _ ~ + /`` with optional trailing ``=`` (the
``b64token`` of RFC 6750); :func:`generate_token` makes suitable ones. Unknown roles, short tokens and
anything but lists of strings are errors naming the source and key. Error messages, logs and ``repr``
never contain a token: the store keeps only their SHA-256 digests.

:class:`TokenStore` re-reads the file when its mtime, size or inode changed (a Kubernetes secret is
swapped by a symlink, so all three change), checked at most every ``reload_s``. A new file that does not
validate, or leaves no token at all, is refused: the previous tokens stay in force and the error is kept
in :attr:`TokenStore.error` and logged; it never reaches a request.

The core is framework-free; :meth:`AuthError.to_http_exception` imports FastAPI only when called.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import yaml
from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from rayml.config.base import ConfigError, StrictModel

if TYPE_CHECKING:
    from fastapi import HTTPException

logger = logging.getLogger(__name__)

Role = Literal["read", "ingest", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # least to most privileged
_IMPLIED: dict[str, frozenset[Role]] = {
    "read": frozenset({"read"}),
    "ingest": frozenset({"read", "ingest"}),
    "admin": frozenset({"read", "ingest", "admin"}),
}
MIN_TOKEN_CHARS = 16
_TOKEN_PATTERN = r"^[A-Za-z0-9\-._~+/]+=*$"  # RFC 6750 b64token
_MAX_FILE_BYTES = 1 << 20
_ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

Token = Annotated[str, StringConstraints(min_length=MIN_TOKEN_CHARS, max_length=4096, pattern=_TOKEN_PATTERN)]


class AuthConfig(StrictModel):
    """The ``auth:`` block of the recommender's args. Relative paths resolve against the cwd."""

    enabled: bool = Field(False, description="Check bearer tokens; false: every endpoint is open.")
    tokens_file: str | None = Field(
        None, description="YAML/JSON file of role -> list of tokens (e.g. a mounted secret); null: none."
    )
    tokens_env: str | None = Field(
        "RAYML_API_TOKENS",
        pattern=_ENV_NAME_PATTERN,
        max_length=256,
        description="Environment variable holding tokens in the file's format; unset or empty: none.",
    )
    protect_reads: bool = Field(
        True, description="Reads (/recommend, /score, OIP) need a `read` token; false: reads are open."
    )
    reload_s: float = Field(
        5.0, ge=0, le=3600, description="Check the tokens file's mtime at most this often; 0: on every request."
    )

    @field_validator("tokens_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _has_source(self) -> AuthConfig:
        if self.enabled and self.tokens_file is None and self.tokens_env is None:
            raise ValueError("enabled is true but neither tokens_file nor tokens_env is set; set one of them")
        return self


class TokenFile(StrictModel):
    """One token source: lists of tokens by role; a token in several lists gets every listed role."""

    admin: list[Token] = Field([], max_length=64, description="Tokens of the admin role (implies ingest, read).")
    ingest: list[Token] = Field([], max_length=64, description="Tokens of the ingest role (implies read).")
    read: list[Token] = Field([], max_length=64, description="Tokens of the read role.")


class AuthError(Exception):
    """A request is refused: 401 (no or unknown credentials) or 403 (a valid token without the role).

    Attributes:
        status: HTTP status code.
        detail: message for the client; it names the header or the role, never the token.
        headers: response headers (``WWW-Authenticate``).
    """

    def __init__(self, status: int, detail: str, headers: Mapping[str, str]) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers)

    def to_http_exception(self) -> HTTPException:
        """The same refusal as a FastAPI ``HTTPException`` (imports FastAPI on first call)."""
        from fastapi import HTTPException

        return HTTPException(status_code=self.status, detail=self.detail, headers=self.headers)


@dataclass(frozen=True)
class AuthResult:
    """A request let through.

    Attributes:
        roles: the roles the presented token grants (with implied ones); empty when no token was needed.
        authenticated: whether a valid token was presented and checked.
    """

    roles: frozenset[Role] = field(default_factory=frozenset)
    authenticated: bool = False


def _describe(item: Mapping[str, Any]) -> str:
    """What is wrong with one value, without echoing it (it may be a token)."""
    kind = item["type"]
    if kind == "string_too_short":
        return f"token is shorter than {MIN_TOKEN_CHARS} characters"
    if kind == "string_too_long":
        return "token is longer than 4096 characters"
    if kind == "string_pattern_mismatch":
        return "token may hold only A-Z a-z 0-9 - . _ ~ + / and trailing ="
    if kind == "string_type":
        return "expected a token string (quote it in YAML)"
    if kind == "list_type":
        return "expected a list of tokens"
    if kind == "too_long":
        return "more than 64 tokens"
    return str(item["msg"])


def parse_tokens(text: str, source: str) -> TokenFile:
    """Validate one token source (the text of a tokens file or variable).

    Args:
        text: YAML or JSON; empty text holds no tokens.
        source: what to name in errors, e.g. the file path or ``env RAYML_API_TOKENS``.

    Raises:
        ConfigError: one line per problem, e.g. ``<source>: key 'admins': unknown role; roles: admin, ingest, read``.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the problem and line: str(exc) quotes the offending line, which may hold a token.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or 'parse error'}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of role to list of tokens, got {type(raw).__name__}")
    try:
        return TokenFile.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for item in exc.errors():
            key = ".".join(str(p) for p in item["loc"]) or "<root>"
            if item["type"] == "extra_forbidden":
                lines.append(f"{source}: key '{key}': unknown role; roles: {', '.join(sorted(ROLES))}")
            else:
                lines.append(f"{source}: key '{key}': {_describe(item)}")
        raise ConfigError("\n".join(lines)) from None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_Table = dict[bytes, frozenset[Role]]


def _table(tokens: TokenFile) -> _Table:
    """SHA-256 digest of each token -> every role it grants, implied roles included."""
    table: _Table = {}
    for role in ROLES:
        for token in getattr(tokens, role):
            key = _digest(token)
            table[key] = table.get(key, frozenset()) | _IMPLIED[role]
    return table


def _merge(*tables: _Table) -> _Table:
    merged: _Table = {}
    for table in tables:
        for key, roles in table.items():
            merged[key] = merged.get(key, frozenset()) | roles
    return merged


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenStore:
    """Checks ``Authorization`` headers against the configured tokens; safe to share between threads.

    Construct it once per replica; it reads its sources at once (failing loudly) and then only re-reads
    the file, from :meth:`check`, when the file changed.
    """

    def __init__(
        self,
        config: AuthConfig,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the tokens of ``config`` (nothing when auth is disabled).

        Args:
            config: the auth block.
            environ: where ``config.tokens_env`` is looked up (default: ``os.environ``).
            clock: seconds, monotonic; the reload interval is measured on it.

        Raises:
            ConfigError: a source is missing or invalid, or the sources hold no token at all.
        """
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        # Only digests are kept, never a TokenFile: its repr would show the tokens.
        self._env_table: _Table = {}
        self._file_table: _Table = {}
        self._file_sig: tuple[int, int, int] | None = None
        self._checked_at = clock()
        self._table: _Table = {}
        self.error: str | None = None
        """Why the last reload of the tokens file was refused; None after a good one."""
        if not config.enabled:
            return
        env = os.environ if environ is None else environ
        name = config.tokens_env
        if name is not None and env.get(name, "").strip():
            self._env_table = _table(parse_tokens(env[name], f"env {name}"))
        if config.tokens_file is not None:
            path = Path(config.tokens_file)
            try:
                st = path.stat()
            except OSError as exc:
                raise ConfigError(f"{path}: tokens file (auth.tokens_file) not readable: {exc.strerror}") from None
            self._file_table, self._file_sig = _table(self._read_file(path, st)), _signature(st)
        self._table = _merge(self._env_table, self._file_table)
        if not self._table:
            raise ConfigError(f"auth.enabled is true but there are no tokens: {self._sources()}")

    def _sources(self) -> str:
        env = f"env {self.config.tokens_env} is unset or empty" if self.config.tokens_env else "auth.tokens_env is null"
        file = f"{self.config.tokens_file} holds none" if self.config.tokens_file else "auth.tokens_file is null"
        return f"{env}; {file}"

    def _read_file(self, path: Path, st: os.stat_result) -> TokenFile:
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: tokens file is not a regular file")
        if st.st_size > _MAX_FILE_BYTES:
            raise ConfigError(f"{path}: tokens file is larger than {_MAX_FILE_BYTES} bytes")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: tokens file not readable: {getattr(exc, 'strerror', None) or exc}") from None
        return parse_tokens(text, str(path))

    def reload(self, force: bool = False) -> bool:
        """Re-read the tokens file if it changed (or ``force``); a bad file keeps the current tokens.

        Returns:
            True when new tokens took effect. On a refusal, :attr:`error` says why; this never raises.
        """
        if not self.config.enabled or self.config.tokens_file is None:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reloading; this request uses the tokens in force
        try:
            self._checked_at = self._clock()
            path = Path(self.config.tokens_file)
            try:
                st = path.stat()
            except OSError as exc:
                return self._refuse(f"{path}: tokens file not readable: {exc.strerror}", None)
            sig = _signature(st)
            if sig == self._file_sig and not force:
                return False
            try:
                file_table = _table(self._read_file(path, st))
            except ConfigError as exc:
                return self._refuse(str(exc), sig)
            table = _merge(self._env_table, file_table)
            if not table:
                return self._refuse(f"{path}: tokens file holds no token and the environment none", sig)
            self._file_table, self._file_sig, self._table, self.error = file_table, sig, table, None
            logger.info("auth: reloaded %s: %s", path, self._counts_text())
            return True
        finally:
            self._lock.release()

    def _refuse(self, error: str, sig: tuple[int, int, int] | None) -> bool:
        # Remember the bad file's signature so it is parsed once, not on every request until it is fixed.
        if sig is not None:
            self._file_sig = sig
        if error != self.error:
            logger.warning("auth: keeping the previous tokens: %s", error)
        self.error = error
        return False

    def _maybe_reload(self) -> None:
        if self.config.tokens_file is not None and self._clock() - self._checked_at >= self.config.reload_s:
            self.reload()

    def check(self, authorization: str | None, role: Role) -> AuthResult:
        """Let a request through if it may act as ``role``, else raise.

        Args:
            authorization: the raw ``Authorization`` header, or None when absent.
            role: what the request needs: ``ingest`` for POST /events, ``admin`` for ``explain: true``
                and admin endpoints, ``read`` for the rest.

        Returns:
            The roles granted; empty and unauthenticated when auth is disabled or reads are open.

        Raises:
            AuthError: 401 when the header is missing, malformed or its token unknown; 403 when the token
                is valid but lacks ``role``.
            ValueError: ``role`` is not a role (a bug in the caller).
        """
        if role not in _IMPLIED:
            raise ValueError(f"Got {role!r} for role; it must be one of {', '.join(ROLES)}")
        if not self.config.enabled or (role == "read" and not self.config.protect_reads):
            return AuthResult()
        self._maybe_reload()
        if authorization is None or not authorization.strip():
            raise AuthError(
                401,
                f"missing Authorization header; send 'Authorization: Bearer <token>' with a token of role '{role}'",
                {"WWW-Authenticate": "Bearer"},
            )
        parts = authorization.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            # Never echo the header: a client that forgot the scheme sent the bare token.
            raise AuthError(
                401,
                "malformed Authorization header; expected 'Bearer <token>'",
                {"WWW-Authenticate": 'Bearer error="invalid_request"'},
            )
        digest = _digest(parts[1])
        granted: frozenset[Role] = frozenset()
        for stored, roles in self._table.items():  # every entry, so timing does not tell which one matched
            if hmac.compare_digest(stored, digest):
                granted = granted | roles
        if not granted:
            raise AuthError(
                401,
                "invalid bearer token in the Authorization header",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if role not in granted:
            raise AuthError(
                403,
                f"this token lacks role '{role}', which this request needs",
                {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{role}"'},
            )
        return AuthResult(roles=granted, authenticated=True)

    def counts(self) -> dict[str, int]:
        """How many distinct tokens hold each role, implied roles included (e.g. for a health page)."""
        return {role: sum(role in roles for roles in self._table.values()) for role in ROLES}

    def _counts_text(self) -> str:
        return ", ".join(f"{role}={n}" for role, n in self.counts().items())

    def __repr__(self) -> str:
        if not self.config.enabled:
            return "TokenStore(enabled=False)"
        error = ", reload_error=True" if self.error else ""
        return f"TokenStore(enabled=True, protect_reads={self.config.protect_reads}, {self._counts_text()}{error})"


def generate_token() -> str:
    """A new random token (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def write_demo_tokens(path: str | Path, roles: Iterable[Role] = ROLES) -> dict[Role, str]:
    """Write a tokens file with one new token per role, readable by its owner only (mode 0600).

    The file is written beside ``path`` and renamed over it, so a running :class:`TokenStore` never reads
    half of it. Parent folders are created.

    Returns:
        The new token of each role, for the caller to print.
    """
    path = Path(path)
    tokens: dict[Role, str] = {role: generate_token() for role in roles}
    text = "".join(f"{role}: [{token}]\n" for role, token in tokens.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tokens
