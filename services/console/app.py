"""The coordinator console (``lianfang serve console``): an aiohttp web application for the joint-meeting
office, reading the ``coordinators`` inbox with the coordinators' keys.

- A background thread reads the inbox with the SDK :class:`~services.sdk.client.Client` (verified and
  opened events), keeps each record (still sealed) in :class:`~services.console.store.ViewStore` and adds
  it to the in-memory :class:`~services.console.view.CaseView`; open pages learn of changes by
  server-sent events (``GET /events``) and fetch the rows again.
- Pages: ``/login``, ``/alerts`` (the queue, filtered by status, town, rule and age), ``/alerts/{id}``
  (reasons, agencies, the victim's timeline, the actions), ``/supervision`` (breaches and rates with a
  chart). Actions publish ``lead.acknowledged``, ``joint_meeting.scheduled`` and
  ``joint_meeting.concluded`` through the same client (:mod:`services.console.actions`).
- Security: accounts with Argon2id and lock-out (:mod:`.accounts`); sessions in HttpOnly,
  SameSite=Strict cookies (Secure unless turned off for http on loopback) that expire
  (:mod:`.sessions`); a CSRF token checked on every POST, and the Origin header when a browser sends one;
  a strict Content-Security-Policy; every view of case content and every action in the audit log
  (:mod:`.audit`). Logs carry ids and error types, never case content, passwords or keys.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from services import trust
from services.audit.kafka import KafkaSink
from services.audit.trail import LocalTrail, participant_trail
from services.bus import metrics_endpoint
from services.bus.registry_follower import RegistryInForce, in_force
from services.bus.security import load_security
from services.console import admin, i18n, pages, record, roles
from services.console.accounts import PASSWORD_KDF, AccountStore, LoginResult
from services.console.actions import FormError, FormProblem, Outgoing, acknowledgement, conclusion, schedule
from services.console.audit import Action, AuditLog
from services.console.markup import Markup
from services.console.metrics import ConsoleMetrics
from services.console.sessions import CSRF_FIELD, PreSession, Session, Sessions, same_token
from services.console.settings import ConsoleSettings
from services.console.store import ViewStore
from services.console.view import Alert, CaseView, Change, OwnAction, OwnKind, QueueFilter, ViewError
from services.hub.config import HubConfig
from services.kernel import envelope, topics
from services.kernel.clock import Clock, utcnow
from services.kernel.errors import (
    LianfangError,
    ReasonCode,
    RegistryExpiredError,
    RegistryStaleError,
    UsageError,
    frames,
)
from services.kernel.keystore import KdfParams, Keystore
from services.kernel.registry import Registry
from services.sdk.client import Client

log = logging.getLogger("lianfang.console")

STATIC: Final = Path(__file__).resolve().parent / "static"
FAST_KDF_ENV: Final = "LIANFANG_INSECURE_FAST_KDF"
_ALERT_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PUBLIC: Final = frozenset({"/login", "/healthz"})
_PUBLIC_PREFIXES: Final = ("/lang/", "/static/")
_BACKGROUND: Final = ("/events", "/alerts/rows")  # requests that are not a person's activity
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_KEEPALIVE_S: Final = 15.0
_ACTION_AUDIT: Final[dict[OwnKind, Action]] = {
    "acknowledge": "acknowledge",
    "schedule": "schedule",
    "conclude": "conclude",
}

_T = TypeVar("_T")

SESSION: Final = web.RequestKey[Session | None]("session")
COOKIE: Final = web.RequestKey[str | None]("cookie")
LANG: Final = web.RequestKey[i18n.Lang]("lang")
ROLE: Final = web.RequestKey[roles.Role | None]("role")


def safe_next(value: str | None) -> str:
    """A redirect target from a form or query: a path on this site, else the queue."""
    if (
        not value
        or len(value) > 500
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 32 for c in value)
    ):
        return "/alerts"
    return value


class Broker:
    """Fans changes out to the open server-sent-event streams (on the event loop's thread), each with
    its number in order (1, 2, ...). The last ``depth`` are kept, so a page that subscribes
    after it was rendered, or reconnects after losing its stream, is sent the changes it missed
    (:meth:`missed`): a page carries the number of the last change before it was rendered."""

    def __init__(self, depth: int = 1000) -> None:
        self._queues: set[asyncio.Queue[tuple[int, Change] | None]] = set()
        self._recent: collections.deque[tuple[int, Change]] = collections.deque(maxlen=depth)
        self.last = 0
        """The number of the latest change (0: none yet)."""

    def subscribe(self) -> asyncio.Queue[tuple[int, Change] | None]:
        queue: asyncio.Queue[tuple[int, Change] | None] = asyncio.Queue(maxsize=100)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[int, Change] | None]) -> None:
        self._queues.discard(queue)

    def publish(self, change: Change) -> None:
        self.last += 1
        self._recent.append((self.last, change))
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled page refetches on its next event
                queue.put_nowait((self.last, change))

    def missed(self, since: int) -> list[tuple[int, Change]] | None:
        """The changes after number ``since``, oldest first; None when they are no longer all kept (or
        ``since`` is not a number this broker gave: a console restarted since), so the page must ask
        for everything again."""
        if since == self.last:
            return []
        if since > self.last or since < 0 or not self._recent or self._recent[0][0] > since + 1:
            return None
        return [(n, change) for n, change in self._recent if n > since]

    def close(self) -> None:
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)


class Console:
    """The console's state and its web application. ``read_inbox=False`` leaves the inbox to the caller
    (:meth:`ingest`), and ``client=None`` serves without a bus at all (actions then fail)."""

    def __init__(
        self,
        settings: ConsoleSettings,
        *,
        registry: Registry | RegistryInForce,
        keystore: Keystore,
        accounts: AccountStore,
        audit: AuditLog,
        store: ViewStore,
        client: Client | None,
        clock: Clock = utcnow,
        metrics: ConsoleMetrics | None = None,
        read_inbox: bool = True,
        trail: LocalTrail | None = None,
    ) -> None:
        self.settings = settings
        self.trail = trail
        self.read_inbox = read_inbox
        self.in_force = in_force(registry)
        self.keystore = keystore
        self.accounts = accounts
        self.audit = audit
        self.store = store
        self.client = client
        self.clock = clock
        self.metrics = metrics or ConsoleMetrics()
        self.sessions = Sessions(idle=settings.session_idle, maximum=settings.session_max, clock=clock)
        self.metrics.sessions.set_function(self.sessions.count)
        self.pre = PreSession()
        self.view = CaseView(HubConfig().at_time_scale(settings.time_scale))
        self.lock = threading.Lock()
        self.broker = Broker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._kdf_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="console-kdf")
        self._io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="console-publish")
        self.restore()

    @property
    def registry(self) -> Registry:
        """The registry in force now (the client follows the registry topic)."""
        return self.in_force.current

    @property
    def names(self) -> dict[str, tuple[str, str]]:
        return {p.id: (p.name_zh, p.name_en) for p in self.registry.document.participants}

    @property
    def participants(self) -> list[str]:
        return [p for p in self.registry.participant_ids() if p != self.settings.participant]

    # ------------------------------------------------------------------ building

    @classmethod
    def from_settings(cls, settings: ConsoleSettings, *, metrics: ConsoleMetrics | None = None) -> Console:
        """Open the trust domain, the accounts, the audit log, the stored inbox and the SDK client."""
        if not settings.bootstrap:
            raise UsageError("no Kafka bootstrap: set LIANFANG_BOOTSTRAP")
        security = load_security()  # an incomplete login stops here, before any key is opened
        domain = trust.open_domain(settings.home)
        metrics = metrics or ConsoleMetrics()
        registry = RegistryInForce.from_domain(
            domain,
            service="console",
            metrics=metrics.registry_in_force,
            registry_topic=topics.TopicNames(settings.topic_prefix).registry,
        )
        keystore = domain.keystore(settings.participant)
        client = Client(
            keystore=keystore,
            registry=registry,
            follow=True,  # the client keeps the console's registry current
            bootstrap=settings.bootstrap,
            outbox_path=settings.data_dir / f"outbox-{settings.participant}.sqlite",
            topic_prefix=settings.topic_prefix,
            security=security,
            reader="console",  # its own group: `lianfang inbox --as coordinators` takes nothing from it
            require_freshness=settings.require_freshness,
        )
        sink = KafkaSink(settings.bootstrap, topics.TopicNames(settings.topic_prefix).audit, security)
        # A registry takes one collector of the audit series: the client's reports this chain too.
        trail = participant_trail(
            settings.data_dir / "audit",
            keystore,
            registry.current,
            "console",
            ship=sink,
            metrics=client.metrics.audit,
        )
        return cls(
            settings,
            registry=registry,
            keystore=keystore,
            accounts=open_accounts(settings),
            audit=AuditLog(settings.audit_path),
            trail=trail,
            store=ViewStore(settings.data_dir / f"inbox-{settings.participant}.sqlite"),
            client=client,
            metrics=metrics,
        )

    def restore(self) -> None:
        """Rebuild the view from the stored records (verified and opened again) and own actions."""
        restored = refused = 0
        for value in self.store.records():
            try:
                opened = envelope.verify_and_open(
                    value, registry=self.registry, now=self.clock(), keystore=self.keystore
                )
                with self.lock:
                    self.view.apply(opened.header, opened.sections)
                restored += 1
            except LianfangError as e:  # ViewError is one too
                refused += 1
                log.warning("a stored inbox record no longer opens: %s", type(e).__name__)
        with self.lock:
            for action in self.store.own_actions():
                self.view.record_own(action)
        if restored or refused:
            log.info("view restored from %d stored inbox records (%d refused)", restored, refused)

    # ------------------------------------------------------------------ the inbox

    def ingest(
        self, opened: envelope.Opened, refuse: Callable[[ReasonCode, str], None] | None = None
    ) -> Change | None:
        """Add one inbox event to the view, then keep its record (before its offset is committed). One
        that does not match its schema is not shown; ``refuse`` reports it (the inbox reader's
        :meth:`~services.sdk.client.Client.refuse`: counted, and a problem record on the dead-letter
        topic, so that its sender and the operators learn of it)."""
        header = opened.header
        try:
            with self.lock:
                change = self.view.apply(header, opened.sections)
        except ViewError:
            self.metrics.applied.labels("invalid").inc()
            log.warning("inbox event %s (%s) does not match its schema; not shown", header.id, header.type)
            if refuse is not None:
                refuse(
                    "malformed", f"the console cannot show this {header.type}: it does not match its schema"
                )
            return None
        except Exception as e:  # a bug met on this event: reported and passed, not met again and again
            self.metrics.applied.labels("internal").inc()
            log.error(
                "a bug (%s) while the console added inbox event %s (%s); not shown\n%s",
                type(e).__name__, header.id, header.type, frames(e),
            )  # fmt: skip
            if refuse is not None:
                refuse(
                    "internal", f"[internal] {type(e).__name__} while the console added this {header.type}"
                )
            return None
        self.store.add_record(header.id, opened.verified.value)
        if change is not None:
            self.metrics.applied.labels(header.type).inc()
            self._announce(change)
        return change

    def _announce(self, change: Change) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.broker.publish, change)

    def _read_inbox(self) -> None:
        assert self.client is not None
        backoff = 1.0
        while not self._stop.is_set():
            try:
                for opened in self.client.inbox(timeout=1.0):
                    self.ingest(opened, functools.partial(self.client.refuse, opened))
                    if self._stop.is_set():
                        break
                self.metrics.inbox_up.set(1)
                backoff = 1.0
            except RegistryStaleError:  # the client logged why (once) and counts itself waiting
                self.metrics.inbox_up.set(0)
                self._stop.wait(1.0)
            except RegistryExpiredError:
                self.metrics.inbox_up.set(0)
                log.error("the registry has expired: reading waits for a newer one on the registry topic")
                self._stop.wait(60)
            except Exception as e:  # the reader keeps going; the error type is logged
                self.metrics.inbox_up.set(0)
                log.warning("reading the inbox failed (%s); retrying in %.0f s", type(e).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.client is not None and self.read_inbox and self._reader is None:
            self._reader = threading.Thread(target=self._read_inbox, name="console-inbox", daemon=True)
            self._reader.start()

    def stop(self) -> None:
        self._stop.set()
        self.broker.close()
        if self._reader is not None:
            self._reader.join(timeout=30)
            self._reader = None
        if self.client is not None:
            self.client.close()
        self._kdf_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)
        self.store.close()
        self.audit.close()
        if self.trail is not None:
            self.trail.close()
        self.accounts.close()

    # ------------------------------------------------------------------ the application

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=256 * 1024)
        app.on_response_prepare.append(self._headers)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.add_routes(
            [
                web.get("/", self.root),
                web.get("/healthz", self.healthz),
                web.get("/login", self.login_page),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/lang/{lang}", self.switch_language),
                web.get("/alerts", self.queue),
                web.get("/alerts/rows", self.queue_rows),
                web.get("/alerts/{alert_id}", self.alert),
                web.get("/alerts/{alert_id}/record", self.meeting_record),
                web.post("/alerts/{alert_id}/{action}", self.act),
                web.get("/supervision", self.supervision),
                web.get("/accounts", self.accounts_page),
                web.get("/events", self.events),
                web.static("/static", STATIC, append_version=False),
            ]
        )
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.start(asyncio.get_running_loop())

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.broker.close()

    # ------------------------------------------------------------------ cookies

    @property
    def _session_cookie(self) -> str:
        return "__Host-lianfang_session" if self.settings.cookie_secure else "lianfang_session"

    @property
    def _pre_cookie(self) -> str:
        return "__Host-lianfang_pre" if self.settings.cookie_secure else "lianfang_pre"

    def _set_cookie(
        self, response: web.StreamResponse, name: str, value: str, *, max_age: int | None = None
    ) -> None:
        response.set_cookie(
            name,
            value,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.settings.cookie_secure,
            max_age=max_age,
        )

    def _clear_cookie(self, response: web.StreamResponse, name: str) -> None:
        response.del_cookie(
            name, path="/", secure=self.settings.cookie_secure, httponly=True, samesite="Strict"
        )

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[LANG] = i18n.lang_of(request.cookies.get("lianfang_lang"))
        token = request.cookies.get(self._session_cookie)
        background = request.path in _BACKGROUND
        session = self.sessions.get(token, touch=not background)
        # The role is read at every request, so a change (`lianfang console role`) applies at once; an
        # account that is gone, or has a role this version does not know, has no session.
        role = self.accounts.role_of(session.user) if session is not None else None
        if session is not None and role is None:
            self.sessions.drop(token)
            session = None
        request[SESSION] = session
        request[ROLE] = role
        request[COOKIE] = token if session is not None else None
        if session is None and not _public(request.path):
            self.metrics.refused.labels("unauthenticated").inc()
            if request.method == "GET" and not background:
                query = {"next": request.path_qs}
                if token:
                    query["m"] = "expired"
                raise web.HTTPSeeOther("/login?" + urlencode(query))
            raise web.HTTPUnauthorized(text="sign in first\n")
        if session is not None and role is not None and not _public(request.path):
            needs = roles.needed(request.method, request.path)
            if not roles.allows(role, needs):
                return self._forbidden(request, role, needs)
        if request.method == "POST" and not await self._csrf_ok(request, session):
            self.metrics.refused.labels("csrf").inc()
            if request.path == "/login":
                self.metrics.logins.labels("csrf").inc()
                return await self._login_form(request, note="error.csrf", status=403)
            return self._html(pages.error(self._viewer(request), i18n.text(request[LANG], "error.csrf")), 403)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as e:
            # Only the type and the frames: an exception's message could quote a form's text.
            self.metrics.refused.labels("internal").inc()
            log.error(
                "unhandled %s on %s %s:\n%s",
                type(e).__name__, request.method, request.path, frames(e),
            )  # fmt: skip
            return self._html(
                pages.error(self._viewer(request), i18n.text(request[LANG], "error.internal")), 500
            )

    async def _csrf_ok(self, request: web.Request, session: Session | None) -> bool:
        """The form's token matches the session's (the sign-in form's: the pre-session cookie's), and
        a browser's Origin, when sent, is this host (the scheme may differ behind a TLS proxy)."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return False
        form = await _form(request)
        given = request.headers.get("X-CSRF-Token") or _first(form, CSRF_FIELD)
        if request.path == "/login":
            return self.pre.check(request.cookies.get(self._pre_cookie), given)
        return session is not None and same_token(session.csrf, given)

    def _forbidden(self, request: web.Request, role: roles.Role, needs: roles.Permission) -> web.Response:
        """403 for what the account's role does not grant: counted, in the audit log, and said."""
        self.metrics.refused.labels("forbidden").inc()
        self._audit(request, "forbidden", f"{request.method} {request.path}", f"{role} lacks {needs}")
        lang = request[LANG]
        text = i18n.text(lang, "error.forbidden", role=i18n.text(lang, f"role.{role}"))
        return self._html(pages.error(self._viewer(request), text), 403)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", _CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")  # no-referrer makes browsers send Origin: null
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if not request.path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"
        if self.settings.cookie_secure and request.secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")

    # ------------------------------------------------------------------ helpers

    def _viewer(self, request: web.Request) -> pages.Viewer:
        session: Session | None = request.get(SESSION)
        return pages.Viewer(
            lang=request.get(LANG, i18n.DEFAULT),
            zone=self.settings.zone,
            user=session.user if session is not None else None,
            csrf=session.csrf if session is not None else "",
            names=self.names,
            path=request.path_qs if request.method == "GET" else _page_of(request.path),
            role=request.get(ROLE),
            seen_change=self.broker.last,
        )

    @staticmethod
    def _html(body: str, status: int = 200) -> web.Response:
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _audit(
        self,
        request: web.Request,
        action: Action,
        target: str = "",
        detail: str = "",
        *,
        seen: tuple[str, str | None] | None = None,
    ) -> None:
        """Record a sign-in, view or action in the console's log; a view of case content (``seen``:
        what was shown and the case's pseudonym) also goes to the hash-chained trail."""
        session: Session | None = request.get(SESSION)
        who = session.user if session is not None else "-"
        self.audit.record(who, action, target, detail, request.remote or "")
        if seen is not None and self.trail is not None:
            shown, subject = seen
            self.trail.append("console_view", object=shown, subject=subject)

    async def _in(self, pool: ThreadPoolExecutor, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, func)

    # ------------------------------------------------------------------ public pages

    async def root(self, request: web.Request) -> web.StreamResponse:
        role = request[ROLE]
        raise web.HTTPSeeOther(roles.home(role) if role is not None else "/alerts")

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def switch_language(self, request: web.Request) -> web.StreamResponse:
        lang = i18n.lang_of(request.match_info["lang"])
        response = web.HTTPSeeOther(safe_next(request.query.get("next")))
        response.set_cookie(
            "lianfang_lang",
            lang,
            path="/",
            max_age=365 * 86_400,
            httponly=True,
            samesite="Lax",
            secure=self.settings.cookie_secure,
        )
        raise response

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if request[SESSION] is not None:
            raise web.HTTPSeeOther(safe_next(request.query.get("next")))
        note = {"expired": "login.expired", "signed_out": "login.signed_out"}.get(request.query.get("m", ""))
        return await self._login_form(request, note=note)

    async def _login_form(
        self, request: web.Request, *, note: str | None = None, status: int = 200, failed: bool = False
    ) -> web.StreamResponse:
        pre_id = request.cookies.get(self._pre_cookie) or PreSession.new_id()
        form = await _form(request) if request.method == "POST" else MultiDictProxy(MultiDict[str]())
        next_path = safe_next(_first(form, "next") or request.query.get("next"))
        lang = request[LANG]
        text = i18n.text(lang, "login.failed") if failed else (i18n.text(lang, note) if note else "")
        kind = "error" if failed or status >= 400 else "info"
        body = pages.login(
            self._viewer(request),
            csrf=self.pre.token(pre_id),
            next_path=next_path,
            note=pages.message(kind, text) if text else Markup(""),
        )
        response = self._html(body, status)
        self._set_cookie(response, self._pre_cookie, pre_id)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        name, password = _first(form, "name"), _first(form, "password")
        result: LoginResult = await self._in(self._kdf_pool, lambda: self.accounts.verify(name, password))
        self.metrics.logins.labels(result.outcome).inc()
        if not result.ok or result.name is None:
            action: Action = "login_locked" if result.outcome == "locked" else "login_failed"
            self.audit.record(result.name or "(unknown)", action, "", "", request.remote or "")
            return await self._login_form(request, status=401, failed=True)
        token, session = self.sessions.create(result.name)
        request[SESSION] = session
        self._audit(request, "login")
        target = safe_next(_first(form, "next"))
        role = self.accounts.role_of(result.name)
        if role is not None and not roles.allows(role, roles.needed("GET", urlsplit(target).path)):
            target = roles.home(role)  # e.g. an administrator sent from the queue
        response = web.HTTPSeeOther(target)
        self._set_cookie(response, self._session_cookie, token)
        self._clear_cookie(response, self._pre_cookie)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self._audit(request, "logout")
        self.sessions.drop(request[COOKIE])
        response = web.HTTPSeeOther("/login?m=signed_out")
        self._clear_cookie(response, self._session_cookie)
        raise response

    # ------------------------------------------------------------------ case pages

    async def queue(self, request: web.Request) -> web.StreamResponse:
        where = QueueFilter.from_query(request.query)
        viewer = self._viewer(request)
        with self.lock:
            body = pages.queue(viewer, self.view, where, self.clock())
            shown = len(self.view.queue(where, self.clock()))
        self._audit(request, "view_queue", where.audited(), f"{shown} alerts", seen=("queue", None))
        self.metrics.views.labels("queue").inc()
        return self._html(body)

    async def queue_rows(self, request: web.Request) -> web.StreamResponse:
        where = QueueFilter.from_query(request.query)
        viewer = self._viewer(request)
        now = self.clock()
        with self.lock:
            every = self.view.queue(where, now)
            alerts, page_count = pages.page_of(every, where)
            rows = pages.queue_rows(viewer, self.view, alerts, now)
            counts = self.view.counts()
            page_status = pages.page_status(viewer, where, page_count, len(every))
        self._audit(
            request,
            "view_queue",
            where.audited(),
            f"{len(alerts)} alerts (live)",
            seen=("queue", None),
        )
        self.metrics.views.labels("queue_rows").inc()
        response = self._html(rows)
        response.headers["X-Lianfang-Counts"] = json.dumps(counts)
        response.headers["X-Lianfang-Page"] = json.dumps(page_status)  # JSON keeps the header ASCII
        return response

    def _alert_or_404(self, request: web.Request) -> Alert:
        alert_id = request.match_info["alert_id"]
        alert = self.view.alert(alert_id) if _ALERT_ID.fullmatch(alert_id) else None
        if alert is None:
            raise web.HTTPNotFound(
                text=pages.error(self._viewer(request), i18n.text(request[LANG], "error.not_found")),
                content_type="text/html",
            )
        return alert

    def _render_alert(
        self, request: web.Request, *, flash: Markup, form: MultiDictProxy[str] | None = None
    ) -> tuple[str, Alert]:
        viewer = self._viewer(request)
        with self.lock:
            alert = self._alert_or_404(request)
            sent = {k: form.getall(k) for k in set(form.keys())} if form is not None else None
            forms = pages.ActionForms(participants=self.participants, flash=flash, form=sent)
            return pages.alert_page(viewer, self.view, alert, self.clock(), forms), alert

    async def alert(self, request: web.Request) -> web.StreamResponse:
        done = request.query.get("done", "")
        lang = request[LANG]
        flash = Markup("")
        if done in ("acknowledge", "schedule", "conclude"):
            text = i18n.text(lang, f"done.{done}")
            if request.query.get("queued"):
                text += " " + i18n.text(lang, "done.queued")
            flash = pages.message("ok", text)
        body, alert = self._render_alert(request, flash=flash)
        self._audit(
            request,
            "view_alert",
            alert.alert_id,
            f"subject {alert.subject}",
            seen=(alert.alert_id, alert.subject),
        )
        self.metrics.views.labels("alert").inc()
        return self._html(body)

    async def meeting_record(self, request: web.Request) -> web.StreamResponse:
        """The printable joint-meeting record (会商纪要) of a concluded alert."""
        viewer = self._viewer(request)
        with self.lock:
            alert = self._alert_or_404(request)
            body = record.record_page(viewer, alert, self.clock())
        if body is None:
            raise web.HTTPNotFound(
                text=pages.error(viewer, i18n.text(request[LANG], "record.not_yet")), content_type="text/html"
            )
        self._audit(
            request,
            "view_record",
            alert.alert_id,
            f"subject {alert.subject}",
            seen=(alert.alert_id, alert.subject),
        )
        self.metrics.views.labels("record").inc()
        return self._html(body)

    async def act(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["action"]
        if kind not in ("acknowledge", "schedule", "conclude"):
            raise web.HTTPNotFound()
        form = await _form(request)
        now = self.clock()
        allowed = set(self.participants)
        with self.lock:
            alert = self._alert_or_404(request)
            if kind == "acknowledge" and alert.status != "open":
                raise web.HTTPSeeOther(f"/alerts/{alert.alert_id}")
            try:
                outgoing = self._outgoing(kind, alert, form, allowed, now)
            except FormError as e:
                failure: FormError | None = e
            else:
                failure = None
        if failure is not None:
            self.metrics.actions.labels(kind, "invalid").inc()
            flash = pages.problems(self._viewer(request), failure.problems)
            body, _ = self._render_alert(request, flash=flash, form=form)
            return self._html(body, 422)
        try:
            event_id, sent = await self._in(self._io_pool, lambda: self._publish(outgoing))
        except LianfangError as e:
            self.metrics.actions.labels(kind, "failed").inc()
            log.warning("publishing %s for alert %s failed: %s", kind, alert.alert_id, type(e).__name__)
            flash = pages.problems(self._viewer(request), [FormProblem("err.publish")])
            body, _ = self._render_alert(request, flash=flash, form=form)
            return self._html(body, 503)
        session = request[SESSION]
        own = OwnAction(
            event_id=event_id,
            kind=outgoing.kind,
            alert_id=alert.alert_id,
            subject=alert.subject,
            at=now,
            user=session.user if session is not None else "-",
        )
        self.store.add_own(own)
        with self.lock:
            change = self.view.record_own(own)
        if change is not None:
            self.broker.publish(change)
        self._audit(request, _ACTION_AUDIT[outgoing.kind], alert.alert_id, f"event {event_id}")
        self.metrics.actions.labels(kind, "sent" if sent else "queued").inc()
        query = {"done": kind, **({} if sent else {"queued": "1"})}
        raise web.HTTPSeeOther(f"/alerts/{alert.alert_id}?{urlencode(query)}")

    def _outgoing(
        self, kind: str, alert: Alert, form: MultiDictProxy[str], allowed: set[str], now: datetime
    ) -> Outgoing:
        zone = self.settings.zone
        if kind == "acknowledge":
            return acknowledgement(alert, participant=self.settings.participant, now=now)
        if kind == "schedule":
            return schedule(alert, form, zone=zone, allowed=allowed)
        return conclusion(alert, form, zone=zone, allowed=allowed, now=now)

    def _publish(self, outgoing: Outgoing) -> tuple[str, bool]:
        if self.client is None:
            raise UsageError("this console runs without a bus client")
        event_id = self.client.publish(
            outgoing.event,
            context=outgoing.context,
            urgency=outgoing.urgency,
            audience=outgoing.audience,
        )
        wait = self.settings.publish_wait_s
        return event_id, self.client.flush(wait) if wait > 0 else False

    async def accounts_page(self, request: web.Request) -> web.StreamResponse:
        """The administrators' page: accounts, roles and lock-outs; no case content."""
        listed = await self._in(self._io_pool, self.accounts.accounts)
        self._audit(request, "view_accounts", "", f"{len(listed)} accounts")
        self.metrics.views.labels("accounts").inc()
        return self._html(admin.accounts_page(self._viewer(request), listed))

    async def supervision(self, request: web.Request) -> web.StreamResponse:
        viewer = self._viewer(request)
        agency = request.query.get("agency") or None  # checked against the agencies reported on
        with self.lock:
            body = pages.supervision(viewer, self.view, self.clock(), agency)
            breaches = len(self.view.breaches)
        self._audit(request, "view_supervision", "", f"{breaches} breaches", seen=("supervision", None))
        self.metrics.views.labels("supervision").inc()
        return self._html(body)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``change`` for each change of the view (its ``id`` its number), ``expired``
        when the session ends. A stream that names the last change its page has seen (``Last-Event-ID``
        when the browser reconnects, else ``?since=`` from the page) is first sent the changes after it,
        or ``resync`` when they are no longer all kept."""
        token = request[COOKIE]
        since = _change_number(request.headers.get("Last-Event-ID") or request.query.get("since"))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue = self.broker.subscribe()  # before reading what was missed: nothing falls in between
        subscribed_at = self.broker.last  # with no ``since``: what is queued from now on is new
        self.metrics.live_clients.inc()
        self._audit(request, "live_updates", seen=("live", None))
        try:
            await response.write(b"retry: 3000\nevent: ready\ndata: {}\n\n")
            sent = subscribed_at if since is None else since
            if since is not None:
                missed = self.broker.missed(since)
                if missed is None:
                    sent = self.broker.last
                    await response.write(f"id: {sent}\nevent: resync\ndata: {{}}\n\n".encode())
                for number, change in missed or ():
                    await response.write(_change_event(number, change))
                    sent = number
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=_KEEPALIVE_S)
                except TimeoutError:
                    if self.sessions.get(token, touch=False) is not None:
                        await response.write(b": keep-alive\n\n")
                        continue
                    item = None
                if self.sessions.get(token, touch=False) is None:
                    await response.write(b"event: expired\ndata: {}\n\n")
                    break
                if item is None:  # the console is stopping
                    break
                number, change = item
                if number > sent:  # not already sent as missed
                    await response.write(_change_event(number, change))
                    sent = number
        except (ConnectionResetError, RuntimeError):
            pass  # the page went away
        finally:
            self.broker.unsubscribe(queue)
            self.metrics.live_clients.dec()
        return response


def _change_number(value: str | None) -> int | None:
    """A change number a page sent back (``Last-Event-ID`` or ``since``); None if absent or not one."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _change_event(number: int, change: Change) -> bytes:
    return f"id: {number}\nevent: change\ndata: {change.to_json()}\n\n".encode()


def _page_of(path: str) -> str:
    """The page a POST belongs to (where the language switch returns to after a refused form)."""
    if path == "/login":
        return path
    parts = path.strip("/").split("/")
    return f"/alerts/{parts[1]}" if len(parts) == 3 and parts[0] == "alerts" else "/alerts"


def _public(path: str) -> bool:
    """Pages anyone may open: sign-in, the language switch, static files, the health check."""
    return path in _PUBLIC or path.startswith(_PUBLIC_PREFIXES)


def _first(form: MultiDictProxy[str], name: str) -> str:
    return form.get(name, "")


async def _form(request: web.Request) -> MultiDictProxy[str]:
    """The posted fields that are text (uploads are not expected anywhere and are dropped)."""
    posted = await request.post()
    return MultiDictProxy(MultiDict((k, v) for k, v in posted.items() if isinstance(v, str)))


def kdf_params() -> KdfParams:
    """Argon2id parameters for new password hashes: :data:`PASSWORD_KDF`, or cheap ones in test runs."""
    return KdfParams.for_tests() if os.environ.get(FAST_KDF_ENV) == "1" else PASSWORD_KDF


def open_accounts(settings: ConsoleSettings) -> AccountStore:
    return AccountStore(
        settings.accounts_path,
        kdf=kdf_params(),
        max_failures=settings.lockout_failures,
        lockout=settings.lockout,
    )


async def serve(settings: ConsoleSettings, *, console: Console | None = None) -> None:
    """Serve until SIGTERM/SIGINT; prints the address people open once it listens."""
    console = console or Console.from_settings(settings)
    metrics_endpoint.start(settings)
    runner = web.AppRunner(console.application(), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = settings.port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            port = int(address[1])
            break
    print(f"console      {settings.url(port)}  (coordinator console)", flush=True)
    if not console.accounts.names():
        log.warning("no console accounts yet: `lianfang console adduser --name N --role R` creates one")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, console.stop)


def run(settings: ConsoleSettings) -> None:
    """``lianfang serve console`` and ``python -m services.console``: serve in the foreground."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(settings))
