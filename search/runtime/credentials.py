"""Passwords in the URLs a search is given stay in the driver's memory: shown and stored masked.

Where it sits: on the driver, before the checks (`search.phases.prepare`). Two kinds of URL carry
credentials:
- a tracking server's `http(s)://user:password@host`: the user and password go where MLflow
  expects them, `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`, and the URI goes on
  without them (`take_tracking_credentials`);
- a database URL, `postgresql://user:password@host/db` (the Optuna study, or a database tracking
  store): the driver connects with the password in the URL, so the search carries the masked URL
  (`postgresql://user:***@host/db`) everywhere it shows or stores one (output, MLflow, the state
  file, Ray Tune's snapshots) and `real` gives the full one back, in this process only, where a
  connection is made (`keep` registers it).
A password may also sit in the query string (`postgresql://user@host/db?password=...`,
`mysql://user@host/db?passwd=...`): the value of every key in `SECRET_KEYS` (any case) is masked
the same way (`?password=***`), in the same places, and `real` gives the full URL back.
A resumed search gets a masked password back from the flag that gave it the first time
(`search.phases.prepare`).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# Query-string keys whose value is a secret (compared lower-case): what database drivers take
# (psycopg's password, MySQL's passwd and pwd) and the usual names for a token.
SECRET_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token"})
_REAL: dict[str, str] = {}  # masked URL -> the URL with its password, for this process


def _query_secrets(query: str) -> list[str]:
    """The values of the query's secret keys, as written (percent-encoded)."""
    pairs = (part.partition("=") for part in query.split("&"))
    return [value for key, eq, value in pairs if eq and unquote(key).strip().lower() in SECRET_KEYS]


def _masked_query(query: str) -> str:
    """`query` with each secret key's value replaced by ***, the rest as written."""
    parts = []
    for part in query.split("&"):
        key, eq, _ = part.partition("=")
        parts.append(f"{key}={MASK}" if eq and unquote(key).strip().lower() in SECRET_KEYS else part)
    return "&".join(parts)


def _netloc(parts, password: str | None) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None:
        host += f":{parts.port}"
    if parts.username is None:
        return host
    return f"{parts.username}:{password}@{host}" if password is not None else f"{parts.username}@{host}"


def shown(url: str) -> str:
    """`url` with its passwords (user-info and query string) replaced by ***: what output, logs and
    files may hold."""
    try:
        parts = urlsplit(url)
        if parts.password is not None and parts.password != MASK:
            parts = parts._replace(netloc=_netloc(parts, MASK))
        if any(v != MASK for v in _query_secrets(parts.query)):
            parts = parts._replace(query=_masked_query(parts.query))
        return urlunsplit(parts) if parts != urlsplit(url) else url
    except ValueError:  # not a URL (a bad port): nothing to mask that a parser would find
        return url


def without_credentials(url: str) -> str:
    """`url` without `user:password@`."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=_netloc(parts._replace(netloc=parts.netloc.rpartition("@")[2]), None)))


def keep(url: str) -> str:
    """The masked URL to carry, remembering the full one for `real`."""
    masked = shown(url)
    if masked != url:
        _REAL[masked] = url
    return masked


def real(url: str) -> str:
    """The URL to connect with: the full one behind a masked URL this process was given."""
    return _REAL.get(url, url)


def has_masked_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.password == MASK or MASK in _query_secrets(parts.query)
    except ValueError:
        return False


def take_tracking_credentials(uri: str) -> str:
    """The tracking URI to carry. An http(s) server's user and password move to MLflow's
    environment variables (this process only); a database store's password, and a secret in any
    URI's query string, are kept (`keep`)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() in ("http", "https") and parts.username is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = parts.username
        if parts.password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = parts.password
        return keep(without_credentials(uri))
    return keep(uri)
