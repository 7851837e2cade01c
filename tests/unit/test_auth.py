"""Bearer-token auth: roles, 401 vs 403, rotation without restart, bad rewrites, secrets never shown."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from rayml.config import ConfigError, format_validation_error
from rayml.serving.auth import (
    AuthConfig,
    AuthError,
    TokenStore,
    generate_token,
    parse_tokens,
    write_demo_tokens,
)

pytestmark = pytest.mark.unit

ADMIN = "admin-token-aaaaaaaaaaaaaaaa"
INGEST = "ingest-token-bbbbbbbbbbbbbbbb"
INGEST_NEW = "ingest-token-new-cccccccccccc"
READ = "read-token-dddddddddddddddddd"


def write(path: Path, tokens: dict, bump: int = 0) -> None:
    path.write_text(yaml.safe_dump(tokens))
    if bump:  # a rewrite in the same clock tick could keep the mtime; rotation must not depend on that
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    write(path, {"admin": [ADMIN], "ingest": [INGEST], "read": [READ]})
    return path


def store_for(path: Path, **kwargs) -> TokenStore:
    config = AuthConfig(enabled=True, tokens_file=str(path), tokens_env=None, reload_s=0, **kwargs)
    return TokenStore(config, environ={})


def refusal(store: TokenStore, header: str | None, role: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        store.check(header, role)  # type: ignore[arg-type]
    return info.value


def test_each_role_gets_its_own_endpoints_and_the_ones_below(tokens_file):
    store = store_for(tokens_file)
    assert store.check(f"Bearer {READ}", "read").roles == {"read"}
    assert store.check(f"Bearer {INGEST}", "ingest").roles == {"read", "ingest"}
    assert store.check(f"Bearer {INGEST}", "read").authenticated
    assert store.check(f"Bearer {ADMIN}", "admin").roles == {"read", "ingest", "admin"}
    assert store.check(f"bearer {ADMIN}", "ingest").authenticated  # the scheme is case-insensitive

    for token, role in [(READ, "ingest"), (READ, "admin"), (INGEST, "admin")]:
        err = refusal(store, f"Bearer {token}", role)
        assert err.status == 403
        assert f"role '{role}'" in err.detail
        assert err.headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_or_malformed_header_is_401_naming_the_header(tokens_file):
    store = store_for(tokens_file)
    for header in [None, "", "   "]:
        err = refusal(store, header, "ingest")
        assert (err.status, err.headers) == (401, {"WWW-Authenticate": "Bearer"})
        assert "Authorization" in err.detail
    for header in [INGEST, f"Basic {INGEST}", f"Bearer {INGEST} extra", "Bearer"]:
        err = refusal(store, header, "ingest")
        assert err.status == 401
        assert "Authorization" in err.detail and "Bearer <token>" in err.detail
        assert INGEST not in err.detail
        assert err.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_unknown_token_is_401_not_403(tokens_file):
    err = refusal(store_for(tokens_file), "Bearer not-a-known-token-xxxxxxxx", "read")
    assert err.status == 401
    assert err.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "Authorization" in err.detail


def test_reads_are_open_unless_protected_and_disabled_auth_lets_all_through(tokens_file):
    open_reads = store_for(tokens_file, protect_reads=False)
    assert not open_reads.check(None, "read").authenticated
    assert refusal(open_reads, None, "ingest").status == 401
    assert refusal(open_reads, f"Bearer {READ}", "admin").status == 403  # explain: true stays protected

    assert refusal(store_for(tokens_file), None, "read").status == 401  # protect_reads defaults to true

    disabled = TokenStore(AuthConfig(), environ={})
    assert disabled.check(None, "admin") == disabled.check("garbage", "ingest")
    assert not disabled.check(None, "admin").authenticated


def test_several_tokens_per_role_all_work(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"ingest": [INGEST, INGEST_NEW], "read": [READ]}))
    store = store_for(path)
    assert store.check(f"Bearer {INGEST}", "ingest").authenticated
    assert store.check(f"Bearer {INGEST_NEW}", "ingest").authenticated
    assert store.counts() == {"read": 3, "ingest": 2, "admin": 0}


def test_rotation_by_rewriting_the_file_needs_no_restart(tokens_file):
    store = store_for(tokens_file)
    assert store.check(f"Bearer {INGEST}", "ingest").authenticated

    write(tokens_file, {"admin": [ADMIN], "ingest": [INGEST, INGEST_NEW]}, bump=1)  # roll out the new one
    assert store.check(f"Bearer {INGEST_NEW}", "ingest").authenticated
    assert store.check(f"Bearer {INGEST}", "ingest").authenticated

    write(tokens_file, {"admin": [ADMIN], "ingest": [INGEST_NEW]}, bump=2)  # retire the old one
    assert refusal(store, f"Bearer {INGEST}", "ingest").status == 401
    assert refusal(store, f"Bearer {READ}", "read").status == 401  # READ was dropped in the first rewrite
    assert store.check(f"Bearer {INGEST_NEW}", "ingest").authenticated
    assert store.error is None


def test_the_file_is_checked_at_most_every_reload_s(tokens_file):
    now = [0.0]
    config = AuthConfig(enabled=True, tokens_file=str(tokens_file), tokens_env=None, reload_s=10)
    store = TokenStore(config, environ={}, clock=lambda: now[0])
    write(tokens_file, {"ingest": [INGEST_NEW]}, bump=1)
    now[0] = 9.0
    assert store.check(f"Bearer {INGEST}", "ingest").authenticated  # not looked at yet
    now[0] = 10.0
    assert refusal(store, f"Bearer {INGEST}", "ingest").status == 401
    assert store.check(f"Bearer {INGEST_NEW}", "ingest").authenticated


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("ingest: [short]\n", "key 'ingest.0': token is shorter than 16 characters"),
        (f"admins: [{ADMIN}]\n", "key 'admins': unknown role; roles: admin, ingest, read"),
        ("ingest: [unclosed\n", "not valid YAML"),
        ("{}\n", "holds no token"),
    ],
)
def test_a_broken_rewrite_keeps_the_old_tokens_and_reports_why(tokens_file, caplog, content, expected):
    store = store_for(tokens_file)
    tokens_file.write_text(content)
    os.utime(tokens_file, ns=(0, tokens_file.stat().st_mtime_ns + 1_000_000_000))
    with caplog.at_level(logging.WARNING, logger="rayml.serving.auth"):
        assert store.check(f"Bearer {INGEST}", "ingest").authenticated
        assert store.check(f"Bearer {ADMIN}", "admin").authenticated
    assert store.error is not None and expected in store.error
    assert str(tokens_file) in store.error
    assert sum(expected in r.getMessage() for r in caplog.records) == 1  # logged once, not per request

    write(tokens_file, {"ingest": [INGEST_NEW]}, bump=2)  # fixed: the new file takes effect
    assert store.check(f"Bearer {INGEST_NEW}", "ingest").authenticated
    assert refusal(store, f"Bearer {ADMIN}", "admin").status == 401
    assert store.error is None


def test_a_deleted_file_keeps_the_old_tokens(tokens_file):
    store = store_for(tokens_file)
    tokens_file.unlink()
    assert store.check(f"Bearer {INGEST}", "ingest").authenticated
    assert store.error is not None and str(tokens_file) in store.error


def test_tokens_from_the_environment_and_the_file_add_up(tmp_path):
    env = {"RAYML_API_TOKENS": json.dumps({"admin": [ADMIN]})}
    store = TokenStore(AuthConfig(enabled=True), environ=env)
    assert store.check(f"Bearer {ADMIN}", "admin").authenticated
    assert refusal(store, f"Bearer {INGEST}", "ingest").status == 401

    path = tmp_path / "tokens.yaml"
    write(path, {"ingest": [INGEST]})
    both = TokenStore(AuthConfig(enabled=True, tokens_file=str(path), reload_s=0), environ=env)
    assert both.check(f"Bearer {ADMIN}", "admin").authenticated
    assert both.check(f"Bearer {INGEST}", "ingest").authenticated
    write(path, {"ingest": [INGEST_NEW]}, bump=1)
    assert both.check(f"Bearer {ADMIN}", "admin").authenticated  # env tokens survive a file rotation


def test_a_bad_environment_variable_is_named():
    with pytest.raises(ConfigError, match=r"^env MY_TOKENS: key 'read.0': token is shorter than 16"):
        TokenStore(AuthConfig(enabled=True, tokens_env="MY_TOKENS"), environ={"MY_TOKENS": "read: [abc]"})


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValidationError) as info:
        AuthConfig.model_validate({"enabled": True, "tokens_env": None})
    message = format_validation_error("recommender.yaml", AuthConfig, info.value)
    assert "tokens_file" in message and "tokens_env" in message

    with pytest.raises(ValidationError) as info:
        AuthConfig.model_validate({"reload_s": -1, "token_file": "x"})
    message = format_validation_error("recommender.yaml", AuthConfig, info.value)
    assert "key 'reload_s'" in message
    assert "unknown key 'token_file'" in message and "tokens_file" in message

    with pytest.raises(ConfigError, match="env RAYML_API_TOKENS is unset"):
        TokenStore(AuthConfig(enabled=True), environ={})
    with pytest.raises(ConfigError, match=r"tokens\.yaml: tokens file \(auth\.tokens_file\) not readable"):
        TokenStore(AuthConfig(enabled=True, tokens_file=str(tmp_path / "tokens.yaml")), environ={})


def test_token_file_errors_name_the_file_and_key_but_never_the_token():
    bad = f"admins: [{ADMIN}]\ningest: [{INGEST[:15]}]\nread: {READ}\n"
    with pytest.raises(ConfigError) as info:
        parse_tokens(bad, "/run/secrets/tokens.yaml")
    lines = str(info.value).splitlines()
    assert set(lines) == {
        "/run/secrets/tokens.yaml: key 'admins': unknown role; roles: admin, ingest, read",
        "/run/secrets/tokens.yaml: key 'ingest.0': token is shorter than 16 characters",
        "/run/secrets/tokens.yaml: key 'read': expected a list of tokens",
    }
    with pytest.raises(ConfigError, match=r"key 'read\.0': expected a token string") as info:
        parse_tokens("read: [1234567890123456789]\n", "t.yaml")  # YAML reads it as a number
    with pytest.raises(ConfigError, match="line 2") as info:
        parse_tokens(f"read: [{READ}]\n  : {INGEST}: [\n", "t.yaml")
    assert INGEST not in str(info.value)


def test_repr_and_logs_show_counts_not_tokens(tokens_file, caplog):
    store = store_for(tokens_file)
    with caplog.at_level(logging.INFO, logger="rayml.serving.auth"):
        write(tokens_file, {"admin": [ADMIN], "ingest": [INGEST, INGEST_NEW]}, bump=1)
        assert store.reload()
    shown = repr(store) + str(vars(store)) + caplog.text
    assert "ingest=3, admin=1" in repr(store)  # counts include implied roles
    for token in (ADMIN, INGEST, INGEST_NEW):
        assert token not in shown


def test_demo_tokens_file_is_private_and_loads(tmp_path):
    path = tmp_path / "secrets" / "tokens.yaml"
    tokens = write_demo_tokens(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(tokens) == {"read", "ingest", "admin"}
    assert len(set(tokens.values())) == 3
    store = store_for(path)
    for role, token in tokens.items():
        assert store.check(f"Bearer {token}", role).authenticated

    path.chmod(0o644)
    write_demo_tokens(path, roles=["ingest"])  # rewriting fixes a loosened mode too
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(os.listdir(path.parent)) == ["tokens.yaml"]  # no temp file left behind
    assert len(generate_token()) == 32


def test_auth_error_becomes_an_http_exception(tokens_file):
    err = refusal(store_for(tokens_file), None, "admin")
    http = err.to_http_exception()
    assert (http.status_code, http.detail, http.headers) == (401, err.detail, {"WWW-Authenticate": "Bearer"})
