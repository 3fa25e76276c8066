"""roadie.prefect_tls: Prefect's clients in a process share one TLS context, made as Prefect makes it, per setting."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest


def tls_of(client) -> ssl.SSLContext:
    """The context the client's connections would wrap their sockets with (httpx's transport, httpcore's pool)."""
    return client._client._transport._pool._ssl_context


@pytest.fixture(scope="module", autouse=True)
def shared() -> None:
    from roadie import prefect_tls

    prefect_tls.share()
    prefect_tls.share()  # idempotent: one wrapper, not two


def test_every_client_shares_one_context_that_verifies():
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    clients = [SyncPrefectClient("http://127.0.0.1:9/api"), SyncPrefectClient("http://127.0.0.1:9/api")]
    clients.append(PrefectClient("http://127.0.0.1:9/api"))
    contexts = {id(tls_of(c)) for c in clients}
    assert len(contexts) == 1
    context = tls_of(clients[0])
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 10  # certifi's bundle is loaded, as Prefect loads it


def test_the_settings_still_decide_what_the_context_is(tmp_path: Path):
    import certifi
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
        temporary_settings,
    )

    default = tls_of(SyncPrefectClient("http://127.0.0.1:9/api"))
    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        insecure = tls_of(SyncPrefectClient("http://127.0.0.1:9/api"))
    assert insecure is not default
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert default.verify_mode == ssl.CERT_REQUIRED  # the shared verifying context was not changed by that

    bundle = tmp_path / "ca.pem"  # a bundle of its own (the default may come from SSL_CERT_FILE)
    shutil.copy(certifi.where(), bundle)
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(bundle)}):
        first = tls_of(SyncPrefectClient("http://127.0.0.1:9/api"))
        second = tls_of(SyncPrefectClient("http://127.0.0.1:9/api"))
    assert first is second and first is not default


def test_a_client_given_its_own_context_keeps_it():
    from prefect.client.orchestration import SyncPrefectClient

    own = ssl.create_default_context()
    assert tls_of(SyncPrefectClient("http://127.0.0.1:9/api", httpx_settings={"verify": own})) is own
