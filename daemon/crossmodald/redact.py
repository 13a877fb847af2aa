"""Hide credentials in URLs before they leave the process.

One function for every place a URL can be shown: ``/v1/sources``, logs, events
(``stream.fault`` messages), error messages (:class:`~crossmodald.ingest.base.SourceError`
texts) and ``check-config`` output. It hides:

* the userinfo, whole: ``rtsp://admin:pw@cam`` and ``rtsp://token@cam`` both become
  ``rtsp://***@cam`` (a user name alone is often the secret: a token, a stream key);
* credential-like query (and fragment) values: ``?token=abc&res=hd`` becomes
  ``?token=***&res=hd`` for ``token``, ``access_token``, ``key``, ``apikey``, ``api_key``,
  ``password``, ``pass``, ``pwd``, ``secret``, ``sig``, ``signature``, ``auth``,
  ``credential(s)``, ``X-Amz-*``, ``X-Goog-*`` and names ending in ``_token``, ``_key``,
  ``_secret``, ``_password`` or ``_signature`` (any case, ``-`` same as ``_``).

Everything else (scheme, host, IPv6 brackets, port, path, other parameters, their order) is
kept as written. A string that is not a URL is returned unchanged by :func:`redact_url`.

:func:`redact_text` (log lines, error messages, request lines an HTTP client sent) also hides
what is not a whole URL: credential-like parameters in a bare request target
(``GET /v1/events?access_token=abc HTTP/1.1``), the value of an ``Authorization`` (or
``Proxy-Authorization``) header, and the credentials after ``Bearer`` or ``Basic``.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "is_sensitive_parameter", "redact_text", "redact_url"]

#: What a hidden value is replaced with.
MASK = "***"

_SENSITIVE = frozenset(
    {
        "token",
        "access_token",
        "key",
        "apikey",
        "api_key",
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "sig",
        "signature",
        "auth",
        "authorization",
        "credential",
        "credentials",
    }
)
_SENSITIVE_PREFIXES = ("x_amz_", "x_goog_")
_SENSITIVE_SUFFIXES = ("_token", "_key", "_secret", "_password", "_signature")
# scheme "://" then anything up to whitespace or a quote/bracket that closes the text around it.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A parameter in text that is no whole URL: a request target, a cut-off line ("?token=ab...").
_PARAMETER_IN_TEXT = re.compile(r"(?<=[?&;#])([^=&;#?\s'\"<>`/]+)=([^&;#\s'\"<>`]+)")
# An Authorization header as a client sent it or a library quotes it: hide its whole value.
_AUTH_HEADER_IN_TEXT = re.compile(
    r"(?i)\b((?:proxy-)?authorization)([\"']?\s*[:=]\s*[\"']?)([^\r\n\"']+)"
)
# Credentials after an auth scheme (RFC 7235 token68), wherever they stand.
_AUTH_SCHEME_IN_TEXT = re.compile(r"\b((?i:bearer)|Basic)(\s+)([A-Za-z0-9._~+/-]+=*)")


def is_sensitive_parameter(name: str) -> bool:
    """Whether a query parameter of this name carries a credential (see the module doc)."""
    key = name.strip().lower().replace("-", "_")
    return (
        key in _SENSITIVE
        or key.startswith(_SENSITIVE_PREFIXES)
        or key.endswith(_SENSITIVE_SUFFIXES)
    )


def redact_url(url: str) -> str:
    """``url`` with its userinfo and credential-like parameters hidden.

    Args:
        url: Any string; only ``scheme://...`` URLs are changed.

    Returns:
        E.g. ``rtsp://***@[::1]:8554/live?token=***#t=1`` for
        ``rtsp://admin:pw@[::1]:8554/live?token=abc#t=1``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return url
    # The authority ends at the first "/", "?" or "#" (RFC 3986 §3.2).
    end = len(rest)
    for mark in "/?#":
        at = rest.find(mark)
        if at != -1:
            end = min(end, at)
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        authority, tail = _unencoded_slash(authority, tail)
    userinfo, at_sign, host = authority.rpartition("@")
    if at_sign and userinfo:
        authority = f"{MASK}@{host}"
    tail, hash_sign, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    if question:
        query = _redact_parameters(query)
    if hash_sign and "=" in fragment:
        fragment = _redact_parameters(fragment)
    return f"{scheme}://{authority}{path}{question}{query}{hash_sign}{fragment}"


def redact_text(text: str) -> str:
    """``text`` (a log line, an error message, a request line) with its credentials hidden.

    Every URL in it is redacted as :func:`redact_url` does; so are credential-like parameters
    outside a whole URL (``/v1/events?access_token=***``), ``Authorization`` header values and
    the credentials after ``Bearer``/``Basic`` (see the module doc).
    """
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    if "=" in text:
        text = _PARAMETER_IN_TEXT.sub(_mask_parameter, text)
    lowered = text.lower()
    if "authorization" in lowered:
        text = _AUTH_HEADER_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    if "bearer" in lowered or "Basic" in text:
        text = _AUTH_SCHEME_IN_TEXT.sub(_mask_scheme, text)
    return text


def _mask_parameter(match: re.Match[str]) -> str:
    name = match.group(1)
    if match.group(2) == MASK or not is_sensitive_parameter(_unquote(name)):
        return match.group(0)
    return f"{name}={MASK}"


def _mask_scheme(match: re.Match[str]) -> str:
    if match.group(3) == MASK:
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{MASK}"


def _unencoded_slash(authority: str, tail: str) -> tuple[str, str]:
    """``user:pa/ss@host`` (a password with an unencoded "/"): the authority runs to the "@".

    Read as a host, ``user:pa`` would have a port that is not a number: no real authority
    looks like that, so the text up to the last "@" (before any query) is the userinfo.
    """
    host = authority.rsplit("]", 1)[-1]  # an IPv6 literal has colons of its own
    if ":" not in host or host.rpartition(":")[2].isdigit():
        return authority, tail
    head = tail.split("?", 1)[0].split("#", 1)[0]
    userinfo_end = head.rfind("@")
    if userinfo_end == -1:
        return authority, tail
    return authority + tail[: userinfo_end + 1], tail[userinfo_end + 1 :]


def _redact_parameters(query: str) -> str:
    parts = re.split(r"([&;])", query)
    for index in range(0, len(parts), 2):
        name, equals, value = parts[index].partition("=")
        if equals and value and is_sensitive_parameter(_unquote(name)):
            parts[index] = f"{name}={MASK}"
    return "".join(parts)


def _unquote(name: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(name)
