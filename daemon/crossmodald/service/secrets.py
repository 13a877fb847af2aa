"""Secrets in the config; moved to :mod:`crossmodald.secrets` (re-exported here for old imports)."""

from crossmodald.secrets import (
    CREDENTIALS_ENV,
    MAX_SECRET_FILE_BYTES,
    Secret,
    resolve_secret,
)

__all__ = ["CREDENTIALS_ENV", "MAX_SECRET_FILE_BYTES", "Secret", "resolve_secret"]
