"""One TLS context per process for Prefect's API clients, instead of one per client.

Prefect 3.9 builds a new SSL context for every PrefectClient and SyncPrefectClient, and loads the whole CA bundle into
it (certifi's, ~150 certificates): ~20 ms of CPU per client. A run opens a dozen of them (its log and event services,
the engine, each concurrency request), and the worker several for every run it starts. Under bench/load that was 43 %
of the workers' CPU and 14 % of the flow runs'; `roadie ingest` opened 11. The API URL is usually http://, where the
context is never used at all.

Prefect takes a caller's own context (httpx_settings={"verify": context}) but its own callers never pass one
(PrefectHQ/prefect#19106 proposes this sharing upstream). share() makes every Prefect client built in this process
default to one context, made the way Prefect makes it and from the same settings (PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
PREFECT_API_SSL_CERT_FILE, else certifi's bundle). It is kept per value of those settings, so a changed setting still
takes effect. A client given its own context keeps it. An SSL context is safe to share between connections and
threads, and nothing changes it after it is made here.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

_MARK = "_roadie_shares_tls_context"


@functools.cache
def tls_context(insecure: bool, cert_file: str) -> ssl.SSLContext:
    """What PrefectClient.__init__ makes for these settings, made once."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cert_file)


def current_tls_context() -> ssl.SSLContext:
    import certifi  # noqa: PLC0415  (deferred with Prefect: share() runs once Prefect is wanted)
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY  # noqa: PLC0415

    return tls_context(
        bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()), PREFECT_API_SSL_CERT_FILE.value() or certifi.where()
    )


def share() -> None:
    """From now on, Prefect's clients in this process use current_tls_context() unless given a context. Idempotent."""
    from prefect.client import orchestration  # noqa: PLC0415  (deferred: Prefect, ~1 s to import)

    for cls in (orchestration.PrefectClient, orchestration.SyncPrefectClient):
        original = cls.__init__
        if getattr(original, _MARK, False):
            continue

        @functools.wraps(original)
        def __init__(
            self: Any, *args: Any, httpx_settings: dict[str, Any] | None = None, _init: Any = original, **kwargs: Any
        ) -> None:
            settings = dict(httpx_settings or {})
            if not isinstance(settings.get("verify"), ssl.SSLContext):  # Prefect would make one: use the shared one
                settings["verify"] = current_tls_context()
            _init(self, *args, httpx_settings=settings, **kwargs)

        setattr(__init__, _MARK, True)
        cls.__init__ = __init__  # type: ignore[method-assign]
