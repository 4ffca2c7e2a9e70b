"""Start every enabled listener in one event loop; stop them all cleanly.

Start-up order is chosen so that nothing is accepted before it can be honoured: the schema is
checked (an outdated one refuses to start and names the fix), the store opened, the PKI loaded
(trust anchors, CRLs from the cache then the sources), and only then do listeners open.
Shutdown is the reverse: listeners stop accepting, in-flight sessions finish or are cut after a
grace period, background tasks are cancelled, the store is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from mssante import metrics
from mssante.config import Settings, parse_host_port
from mssante.directory.mirror import StoreDirectory
from mssante.logs import event
from mssante.operator.auditlog import AuditSink
from mssante.operator.auth import Authenticator
from mssante.operator.delivery import Delivery
from mssante.operator.dkim_sign import DkimSigner
from mssante.operator.imap.server import ImapServer
from mssante.operator.outbound import OutboundClient
from mssante.operator.outbox import OutboundWorker, QueueOutbox, WakeUp, schedule_of
from mssante.operator.queue import Queue
from mssante.operator.smtp.relay import RelayServer
from mssante.operator.smtp.submission import SubmissionServer
from mssante.operator.store.crypto import BlobCipher
from mssante.operator.store.db import Store, mask_url
from mssante.operator.store.migrate import check_schema
from mssante.pki.runtime import Pki
from mssante.whitelist.source import WhitelistStore

log = logging.getLogger("mssante.server")

SHUTDOWN_GRACE_SECONDS = 10.0


class StartupError(Exception):
    """The operator cannot start (a listener cannot bind, …); the message says which and why."""


async def listen_on(
    key: str, address: str, starter: Callable[[str, int], Awaitable[asyncio.Server]]
) -> tuple[asyncio.Server, str]:
    """Open one listener; returns it and the address it is bound to ("host:port").

    A busy or forbidden address is a one-line StartupError naming the configuration key.
    """
    host, port = parse_host_port(address, key)
    try:
        server = await starter(host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"{key}: cannot listen on {address}: {reason.lower()}") from None
    return server, _bound(server)


@dataclass
class Running:
    """What `start` opened; `listeners` maps a listener name to "host:port"."""

    settings: Settings
    store: Store
    pki: Pki
    listeners: dict[str, str] = field(default_factory=dict)
    servers: list[asyncio.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Closed in reverse order at stop, after the listeners (e.g. drain pending deliveries)."""
    relay: RelayServer | None = None
    imap: ImapServer | None = None
    submission: SubmissionServer | None = None
    audit: AuditSink | None = None
    """One audit sink for every listener, started with the first that needs it."""
    delivery: Delivery | None = None
    """One local delivery path (and group-commit task) for the relay and submission."""
    whitelist: WhitelistStore | None = None
    auth: Authenticator | None = None
    """One failed-login slow-down for IMAP and submission."""
    queue: Queue | None = None
    outbox: QueueOutbox | None = None
    worker: OutboundWorker | None = None
    """The outbound worker, when `[queue] enabled` and a listener that queues is on."""


def open_cipher(settings: Settings) -> BlobCipher:
    return BlobCipher.from_text(settings.storage.keys, settings.storage.current_key_id)


async def start(settings: Settings) -> Running:
    url = settings.database_url
    await check_schema(url)
    store = await Store.open(url, open_cipher(settings))
    running: Running | None = None
    try:
        pki = await Pki.load(settings.pki, settings.crl_cache_dir)
        running = Running(settings, store, pki)
        imap = settings.imap
        running.auth = Authenticator(
            store,
            pki,
            free_failures=imap.login_failures_before_delay,
            max_delay=float(imap.login_delay_max_seconds),
        )
        running.tasks.append(
            asyncio.create_task(
                pki.crls.run_periodic(settings.pki.crl_refresh_seconds), name="crl-refresh"
            )
        )
        if settings.metrics.enabled:
            server, where = await listen_on(
                "metrics.listen", settings.metrics.listen, metrics.start
            )
            running.servers.append(server)
            running.listeners["metrics"] = where
        if settings.relay.enabled:
            await _start_relay(running)
        if settings.imap.enabled:
            await _start_imap(running)
        if settings.relay.enabled or settings.submission.enabled:
            await _start_outbound(running)
        if settings.submission.enabled:
            await _start_submission(running)
    except BaseException:
        await _shutdown(running, store)
        raise
    metrics.mark_started()
    for name, where in running.listeners.items():
        event(log, "listener started", listener=name, address=where)
    event(
        log,
        "operator started",
        hostname=settings.operator.hostname,
        database=mask_url(url),
        tls_profile=settings.pki.tls_profile,
    )
    return running


def whitelist_store(settings: Settings) -> WhitelistStore:
    """The whitelist as configured (not loaded yet)."""
    wl = settings.whitelist
    pki = settings.pki
    return WhitelistStore(
        wl.source,
        cache_dir=settings.whitelist_cache_dir,
        checksum=wl.checksum,
        trust=pki.trust_anchors,
        client_cert=(
            (pki.certificate, pki.private_key, pki.private_key_password or None)
            if wl.client_certificate
            else None
        ),
    )


async def _whitelist(running: Running) -> WhitelistStore:
    if running.whitelist is None:
        settings = running.settings
        wl = settings.whitelist
        whitelist = whitelist_store(settings)
        await whitelist.load()
        if wl.source:
            running.tasks.append(
                asyncio.create_task(whitelist.run_periodic(wl.refresh_seconds), name="whitelist")
            )
        else:
            log.warning("no whitelist.source configured: every peer operator will be refused")
        running.whitelist = whitelist
    return running.whitelist


async def _delivery(running: Running) -> Delivery:
    if running.delivery is None:
        delivery = Delivery(running.store, running.settings)
        await delivery.start()
        running.closers.append(delivery.close)
        running.delivery = delivery
    return running.delivery


async def _start_relay(running: Running) -> None:
    settings = running.settings
    whitelist = await _whitelist(running)
    sink = await _audit_sink(running)
    delivery = await _delivery(running)
    relay = RelayServer(settings, running.pki, whitelist, delivery, sink)
    listeners = await relay.start(settings.relay.listen, settings.relay.implicit_tls_listen)
    running.servers.extend(relay.servers)
    running.listeners.update(listeners)
    running.relay = relay


async def _start_outbound(running: Running) -> None:
    """The queue, its worker (DSNs of local deliveries too) and submission's outbox."""
    settings = running.settings
    config = settings.queue
    whitelist = await _whitelist(running)
    sink = await _audit_sink(running)
    delivery = await _delivery(running)
    queue = Queue(running.store, schedule_of(config), lease=timedelta(seconds=config.lease_seconds))
    wake = WakeUp()
    if config.enabled:
        client = OutboundClient(settings, running.pki, whitelist, sink)
        worker = OutboundWorker(settings, running.store, queue, client, delivery, sink, wake)
        await worker.start()
        running.closers.append(worker.close)
        running.worker = worker
    signer = DkimSigner.from_settings(settings.dkim)
    if signer is None:
        log.warning("no dkim.private_key configured: outbound mail is not signed")
    outbox = QueueOutbox(running.store, queue, signer, wake)
    await outbox.start()
    running.closers.append(outbox.close)
    running.queue = queue
    running.outbox = outbox


async def _start_submission(running: Running) -> None:
    """Remote recipients go to the queue (`_start_outbound`), checked against the store's
    directory mirror."""
    settings = running.settings
    whitelist = await _whitelist(running)
    sink = await _audit_sink(running)
    delivery = await _delivery(running)
    assert running.auth is not None and running.outbox is not None
    await running.auth.dummy_hash()
    submission = SubmissionServer(
        settings,
        running.store,
        running.pki,
        whitelist,
        delivery,
        sink,
        running.auth,
        outbox=running.outbox,
        directory=StoreDirectory(running.store),
    )
    config = settings.submission
    listeners = await submission.start(config.listen, config.implicit_tls_listen)
    running.servers.extend(submission.servers)
    running.listeners.update(listeners)
    running.submission = submission


async def _audit_sink(running: Running) -> AuditSink:
    if running.audit is None:
        sink = AuditSink(running.store)
        await sink.start()
        running.closers.append(sink.close)
        running.audit = sink
    return running.audit


async def _start_imap(running: Running) -> None:
    settings = running.settings
    sink = await _audit_sink(running)
    imap = ImapServer(settings, running.store, running.pki, sink, authenticator=running.auth)
    running.closers.append(imap.close)  # after the audit sink's: closers run in reverse
    listeners = await imap.start(settings.imap.listen, settings.imap.implicit_tls_listen)
    running.servers.extend(imap.servers)
    running.listeners.update(listeners)
    running.imap = imap


def _bound(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def stop(running: Running) -> None:
    for server in running.servers:
        server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(s.wait_closed() for s in running.servers)),
            SHUTDOWN_GRACE_SECONDS,
        )
    await _shutdown(running, running.store)
    event(log, "operator stopped")


async def _shutdown(running: Running | None, store: Store) -> None:
    if running is not None:
        for server in running.servers:
            server.close()
        for task in running.tasks:
            task.cancel()
        await asyncio.gather(*running.tasks, return_exceptions=True)
        for close in reversed(running.closers):
            try:
                await close()
            except Exception:
                log.exception("error while stopping")
    await store.close()


async def serve(
    settings: Settings, on_ready: Callable[[Running], Awaitable[None] | None] | None = None
) -> int:
    """Run until SIGINT or SIGTERM; `on_ready` is called once every listener accepts."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    running = await start(settings)
    try:
        if on_ready is not None:
            result = on_ready(running)
            if result is not None:
                await result
        await stopping.wait()
        event(log, "shutdown requested")
    finally:
        await stop(running)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
