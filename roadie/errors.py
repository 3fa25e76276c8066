"""Two kinds of failure: input that will never work, and trouble that may pass on a retry."""
from __future__ import annotations


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
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, EndpointConnectionError
    except ImportError:  # pragma: no cover
        return isinstance(exc, (ConnectionError, TimeoutError))
    return isinstance(exc, (ConnectionError, TimeoutError, BotoConnectionError, EndpointConnectionError))
