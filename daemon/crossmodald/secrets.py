"""Secrets in the config: inline, or from an environment variable, a file or a systemd credential.

A secret-valued key (an API token, a password) takes any of::

    token = "inline-value"                                  # fine for tests, not for services
    token = {env = "CROSSMODALD_TOKEN"}                     # Environment= / EnvironmentFile=
    token = {file = "/etc/crossmodald/token"}               # a file readable by the service user
    token = {file = "$CREDENTIALS_DIRECTORY/token"}         # systemd LoadCredential=
    token = {credential = "token"}                          # the same, shorter

The value is resolved once, when the config is validated (so a reload picks up a rotated
secret), and held as a pydantic :class:`~pydantic.SecretStr`: its ``repr``, ``str`` and JSON
dump are ``**********``. Error messages name where the secret was looked for, never its value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

#: systemd sets this for a service with ``LoadCredential=`` / ``SetCredential=``.
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
#: Largest secret file read, in bytes (a token or key, not a data file).
MAX_SECRET_FILE_BYTES = 64 * 1024

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}")
_CREDENTIALS_VAR = re.compile(r"\$(\{CREDENTIALS_DIRECTORY\}|CREDENTIALS_DIRECTORY\b)")
_KINDS = ("env", "file", "credential")


def resolve_secret(value: object, environ: dict[str, str] | None = None) -> str:
    """Turn a secret's config value into the secret itself.

    Args:
        value: A string (the secret inline), or a one-key table ``{env = NAME}``,
            ``{file = PATH}`` (``$CREDENTIALS_DIRECTORY`` in PATH is expanded) or
            ``{credential = NAME}`` (the file NAME in ``$CREDENTIALS_DIRECTORY``). A
            :class:`~pydantic.SecretStr` passes through.
        environ: The environment to read (default: ``os.environ``).

    Returns:
        The secret, with one trailing newline removed when it came from a file.

    Raises:
        ValueError: The value has another shape, the variable is unset, the file cannot be
            read, or the secret is empty. Messages say ``got`` so that the config error
            formatter never echoes the input, and they never contain the secret.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str):
        if not value:
            raise ValueError("a secret must not be empty (got an empty string)")
        return value
    if not isinstance(value, dict):
        raise ValueError(
            "expected a string or a table {env = NAME}, {file = PATH} or {credential = NAME}, "
            f"got {type(value).__name__}"
        )
    keys = sorted(str(key) for key in value)
    if len(keys) != 1 or keys[0] not in _KINDS:
        raise ValueError(
            "a secret table takes exactly one of the keys env, file or credential, "
            f"got {keys or 'no keys'}"
        )
    kind = keys[0]
    ref = value[kind]
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"{kind}: expected a non-empty string, got {type(ref).__name__}")
    if kind == "env":
        if not _ENV_NAME.fullmatch(ref):
            raise ValueError(f"env: not an environment variable name, got {ref[:40]!r}")
        secret = env.get(ref)
        if secret is None:
            raise ValueError(f"environment variable {ref} is not set (got nothing)")
        if not secret:
            raise ValueError(f"environment variable {ref} is empty (got an empty string)")
        return secret
    if kind == "credential":
        if not _CREDENTIAL_NAME.fullmatch(ref):
            raise ValueError(f"credential: not a credential name, got {ref[:40]!r}")
        return _read_secret_file(_credentials_dir(env, f"credential {ref!r}") / ref)
    if _CREDENTIALS_VAR.search(ref):
        directory = str(_credentials_dir(env, f"file {ref!r}"))
        ref = _CREDENTIALS_VAR.sub(lambda _match: directory, ref)
    return _read_secret_file(Path(ref))


def _credentials_dir(env: Any, what: str) -> Path:
    directory = env.get(CREDENTIALS_ENV)
    if not directory:
        raise ValueError(
            f"{what} needs ${CREDENTIALS_ENV} (set by systemd LoadCredential=), got it unset"
        )
    return Path(directory)


def _read_secret_file(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(
            f"cannot read secret file {path}: {exc.strerror or type(exc).__name__} (got no value)"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(
            f"secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes (got more)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text (got binary data)") from None
    # Files written by `echo` or an editor end with a newline that is no part of the secret.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"secret file {path} is empty (got no value)")
    return text


def _validate_secret(value: object) -> str:
    # One parameter: pydantic would pass its ValidationInfo as a second one.
    return resolve_secret(value)


#: A config field type for secrets: use ``token: Secret`` instead of ``token: SecretStr``.
Secret = Annotated[SecretStr, BeforeValidator(_validate_secret)]
