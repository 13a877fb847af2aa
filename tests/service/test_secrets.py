"""Config secrets: inline, environment, file, systemd credentials; never echoed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from crossmodald.service.config import ConfigError, load_config_text
from crossmodald.service.secrets import MAX_SECRET_FILE_BYTES, Secret, resolve_secret

VALUE = "s3cret-Value-0123456789"


class Holder(BaseModel):
    token: Secret


def config_with(token_toml: str) -> str:
    return f'[[api.tokens]]\nname = "ops"\ntoken = {token_toml}\nscopes = ["admin"]\n'


def test_inline_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_secret(VALUE) == VALUE
    monkeypatch.setenv("CROSSMODALD_TOKEN", VALUE)
    config = load_config_text(config_with('{env = "CROSSMODALD_TOKEN"}'))
    token = config.api.tokens[0].token
    assert token.get_secret_value() == VALUE
    # Never shown: repr, str, model dumps, the config's repr.
    for shown in (repr(token), str(token), config.model_dump_json(), repr(config)):
        assert VALUE not in shown


def test_file_strips_one_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(VALUE + "\n")
    assert resolve_secret({"file": str(path)}) == VALUE
    path.write_text(VALUE + "\r\n")
    assert resolve_secret({"file": str(path)}) == VALUE
    path.write_text(VALUE + "\n\n")
    assert resolve_secret({"file": str(path)}) == VALUE + "\n"


def test_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text(VALUE)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve_secret({"credential": "api-token"}, env) == VALUE
    assert resolve_secret({"file": "$CREDENTIALS_DIRECTORY/api-token"}, env) == VALUE
    assert resolve_secret({"file": "${CREDENTIALS_DIRECTORY}/api-token"}, env) == VALUE


@pytest.mark.parametrize(
    ("value", "env", "message"),
    [
        ("", {}, "must not be empty"),
        (123, {}, "expected a string or a table"),
        ({}, {}, "exactly one of the keys env, file or credential"),
        ({"env": "A", "file": "/x"}, {}, "exactly one of the keys"),
        ({"path": "/x"}, {}, "exactly one of the keys"),
        ({"env": 5}, {}, "env: expected a non-empty string"),
        ({"env": "BAD-NAME"}, {}, "not an environment variable name"),
        ({"env": "UNSET_X"}, {}, "environment variable UNSET_X is not set"),
        ({"env": "EMPTY_X"}, {"EMPTY_X": ""}, "environment variable EMPTY_X is empty"),
        ({"credential": "tok"}, {}, "needs $CREDENTIALS_DIRECTORY"),
        ({"credential": "../etc/passwd"}, {"CREDENTIALS_DIRECTORY": "/"}, "not a credential"),
        ({"file": "$CREDENTIALS_DIRECTORY/t"}, {}, "needs $CREDENTIALS_DIRECTORY"),
        ({"file": "/nonexistent/crossmodald/token"}, {}, "cannot read secret file"),
    ],
)
def test_bad_values_say_why(value: object, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("$", r"\$")):
        resolve_secret(value, env)


def test_file_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        resolve_secret({"file": str(empty)})
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="larger than"):
        resolve_secret({"file": str(big)})
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        resolve_secret({"file": str(binary)})
    with pytest.raises(ValueError, match="cannot read secret file"):
        resolve_secret({"file": str(tmp_path)})  # a directory


def test_config_errors_name_the_key_not_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Too short a token from the environment: the error must not echo it.
    monkeypatch.setenv("SHORT_TOKEN", "tiny-secret")
    with pytest.raises(ConfigError) as info:
        load_config_text(config_with('{env = "SHORT_TOKEN"}'), "svc.toml")
    text = "\n".join(info.value.errors)
    assert "api.tokens.0.token" in text
    assert "tiny-secret" not in text
    with pytest.raises(ConfigError) as info:
        load_config_text(config_with('{env = "NOT_SET_ANYWHERE"}'), "svc.toml")
    assert info.value.errors == [
        "api.tokens.0.token: environment variable NOT_SET_ANYWHERE is not set (got nothing)"
    ]
    assert "tiny-secret" not in caplog.text


def test_secretstr_passes_through_and_compares_by_value() -> None:
    assert Holder(token=SecretStr(VALUE)).token.get_secret_value() == VALUE
    assert Holder.model_validate({"token": VALUE}) == Holder.model_validate({"token": VALUE})
    assert Holder.model_validate({"token": VALUE}) != Holder.model_validate({"token": VALUE + "x"})
