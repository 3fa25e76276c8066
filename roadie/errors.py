"""Two kinds of failure: input that will never work, and trouble that may pass on a retry."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from roadie.settings import get_settings


class RoadieError(Exception):
    """Base of roadie's own errors."""


class InvalidInput(RoadieError):
    """The upload or the request is unusable. Never retried; the message is shown to a person."""


class TransientError(RoadieError):
    """I/O, network or database trouble that a retry may cure."""


class StorageKeyError(InvalidInput):
    """A storage key that could escape its root or confuse a backend."""


def is_transient(exc: BaseException) -> bool:
    """Retry policy shared by every task: only errors that may pass are retried."""
    if isinstance(exc, InvalidInput):
        return False
    if isinstance(exc, TransientError):
        return True
    # Deferred like the botocore import below: `roadie analyze` reaches this module and needs neither library.
    from sqlalchemy.exc import DBAPIError, OperationalError  # noqa: PLC0415

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError  # noqa: PLC0415
        from botocore.exceptions import EndpointConnectionError  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return isinstance(exc, (ConnectionError, TimeoutError))
    return isinstance(exc, (ConnectionError, TimeoutError, BotoConnectionError, EndpointConnectionError))


# ---------------------------------------------------------------------- secrets out of every message

MASK = "***"
# scheme://user:password@host…: the password part, whatever the scheme.
_URL_WITH_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'\"<>]*:)(?P<password>[^\s/@'\"<>]+)(?=@)"
)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_ENV_SECRETS = (
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
)
_ENV_URLS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def mask_url(url: str) -> str:
    """A URL fit to show: the password masked (SQLAlchemy's own rendering for database URLs) and every query value
    masked (a webhook's query is its key). Anything unparsable is masked whole rather than shown."""
    if not url:
        return url
    try:
        if "://" in url and "@" in url.split("?", 1)[0]:
            from sqlalchemy.engine import make_url  # noqa: PLC0415 (start-up, as in is_transient)

            parsed = make_url(url)
            if parsed.password is not None:
                url = parsed.render_as_string(hide_password=True)
        parts = urlsplit(url)
    except Exception:
        return MASK
    if not parts.query:
        return url
    query = urlencode(
        [(key, MASK) for key, _ in parse_qsl(parts.query, keep_blank_values=True)] or [(MASK, "")], safe="*"
    )
    return urlunsplit(parts._replace(query=query))


def secret_values(settings: object | None = None) -> list[str]:
    """Every configured secret, as it may appear in text: the S3 keys, the database passwords, the Prefect auth
    string and the webhook's query (whole and value by value), URL-encoded forms too. Longest first."""
    if settings is None:
        settings = get_settings()
    found: set[str] = set()
    for name in ("s3_access_key", "s3_secret_key", "prefect_api_auth_string"):
        found.add(getattr(settings, name, None) or "")
    found.update(os.environ.get(name, "") for name in _ENV_SECRETS)
    urls = [
        getattr(settings, "database_url", None),
        getattr(settings, "prefect_database_url", None),
        *(os.environ.get(name) for name in _ENV_URLS),
    ]
    for url in filter(None, urls):
        try:
            from sqlalchemy.engine import make_url  # noqa: PLC0415 (start-up, as in is_transient)

            found.add(make_url(url).password or "")
        except Exception:  # noqa: S112 - a URL that does not parse holds no password to hide
            continue
    for url in filter(None, [getattr(settings, "dead_letter_webhook_url", None)]):
        query = urlsplit(url).query
        found.add(query)
        found.update(value for _, value in parse_qsl(query, keep_blank_values=True))
    found.update({quote(value, safe="") for value in found})
    # Very short values (a one-letter test key) would mask ordinary words; they are not secrets worth the name.
    return sorted((value for value in found if len(value) >= 4), key=len, reverse=True)


def redact(text: object, settings: object | None = None) -> str:
    """`text` with every secret masked: passwords inside URLs, query strings of URLs that carry a secret, and every
    configured secret value wherever it appears. Use it on anything a person or a log will read."""
    out = str(text)
    if not out:
        return out
    secrets = secret_values(settings)
    out = _URL_WITH_PASSWORD.sub(lambda m: m.group("head") + MASK, out)
    if secrets:
        out = _URL.sub(lambda m: mask_url(m.group(0)) if any(s in m.group(0) for s in secrets) else m.group(0), out)
        for secret in secrets:
            out = out.replace(secret, MASK)
    return out
