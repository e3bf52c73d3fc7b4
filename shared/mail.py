"""Mail: each message in plain text and HTML from templates, sent over SMTP (or, in development,
written to the log) from a transactional mail outbox.

A service renders a message and writes it into its own ``mail_outbox`` table in the same
transaction as the change the message is about (a reset token, a new account), so a crash after
the commit never loses it. The relay then sends each message in a transaction of its own that
holds the row's lock (``FOR UPDATE SKIP LOCKED``, so relays may run side by side) and records
``sent_at`` before it commits: a message recorded as sent is never sent again, and once sent its
bodies (which hold one-time links) are erased. Each message carries its outbox id as its
``Message-ID``; the one case that repeats a message is the process dying between the SMTP server's
acceptance and that commit, and then with the same ``Message-ID``.
"""

import html
import logging
import re
import ssl
import string
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from importlib.resources import files
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import msgspec
from prometheus_client import Counter
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, Uuid, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import UTCDateTime, utcnow
from shared.outbox import TableRelay
from shared.settings import SettingsError

logger = logging.getLogger("shared.mail")
MAIL_PENDING_FLAG = "mail_outbox_pending"
SENT = Counter("pyairtable_mail_sent_total", "Mail messages the relay handed to the mail server", ["template"])
FAILURES = Counter("pyairtable_mail_failures_total", "Mail deliveries that failed (retried later)")
ABANDONED = Counter("pyairtable_mail_abandoned_total", "Mail messages given up after every attempt failed")
MAX_ATTEMPTS = 8
MAX_BACKOFF_SECONDS = 3600
SMTP_TIMEOUT_SECONDS = 10.0
_LINK = re.compile(r"https?://\S+")


class MailMessage(msgspec.Struct, frozen=True):
    id: uuid.UUID
    to: str
    subject: str
    text: str
    html: str
    template: str = ""


class Mailer(Protocol):
    async def send(self, message: MailMessage, mail_from: str) -> None: ...


class LoggingMailer:
    """No mail server: in development the message's subject and link go to the log instead (never
    its address or body: logs hold no personal data); in production, where logs never hold a
    token either, only that it was not sent."""

    def __init__(self, log_contents: bool = True) -> None:
        self.log_contents = log_contents

    async def send(self, message: MailMessage, mail_from: str) -> None:
        if not self.log_contents:
            logger.warning(
                "mail not sent: no SMTP_URL", extra={"message_id": str(message.id), "template": message.template}
            )
            return
        logger.info(
            "mail not sent (no SMTP_URL): its link logged instead (development)",
            extra={"message_id": str(message.id), "subject": message.subject, "links": _LINK.findall(message.text)},
        )


class SmtpMailer:
    """``smtp://user:password@host:587`` (STARTTLS, required) or ``smtps://...:465`` (TLS from the start)."""

    def __init__(self, url: str, ca_file: str = "", timeout: float = SMTP_TIMEOUT_SECONDS) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise SettingsError("SMTP_URL: must be smtp://[user:password@]host[:port] or smtps://...")
        implicit_tls = parts.scheme == "smtps"
        self.hostname = parts.hostname
        self.port = parts.port or (465 if implicit_tls else 587)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.use_tls = implicit_tls
        self.start_tls = not implicit_tls
        self.tls_context = ssl.create_default_context(cafile=ca_file or None)
        self.timeout = timeout

    async def send(self, message: MailMessage, mail_from: str) -> None:
        import aiosmtplib  # loaded with the first message sent: a service that sends none never holds it

        await aiosmtplib.send(
            _email(message, mail_from),
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            tls_context=self.tls_context,
            timeout=self.timeout,
        )


def create_mailer(smtp_url: str, ca_file: str = "", *, production: bool = False) -> Mailer:
    return SmtpMailer(smtp_url, ca_file) if smtp_url else LoggingMailer(log_contents=not production)


def _email(message: MailMessage, mail_from: str) -> EmailMessage:
    email = EmailMessage()
    email["From"] = mail_from
    email["To"] = message.to
    email["Subject"] = message.subject
    email["Date"] = formatdate(usegmt=True)
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"
    email["Message-ID"] = f"<{message.id}@{domain}>"
    email.set_content(message.text)
    email.add_alternative(message.html, subtype="html")
    return email


class MailTemplates:
    """``<name>.txt`` (a ``Subject:`` line, a blank line, the text) and ``<name>.html`` in a
    package's ``templates`` folder; ``$name`` placeholders, HTML-escaped in the HTML part."""

    def __init__(self, package: str) -> None:
        self.folder = files(package) / "templates"

    def render(self, name: str, to: str, **values: str) -> MailMessage:
        head, _, text = self.folder.joinpath(f"{name}.txt").read_text("utf-8").partition("\n\n")
        subject = head.removeprefix("Subject:").strip()
        markup = self.folder.joinpath(f"{name}.html").read_text("utf-8")
        escaped = {key: html.escape(value) for key, value in values.items()}
        return MailMessage(
            id=uuid.uuid4(),
            to=to,
            subject=string.Template(subject).substitute(values),
            text=string.Template(text).substitute(values),
            html=string.Template(markup).substitute(escaped),
            template=name,
        )


def mail_outbox_table(metadata: MetaData) -> Table:
    """The ``mail_outbox`` table in a service's own metadata (so its migrations create it)."""
    return Table(
        "mail_outbox",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("template", String(50), nullable=False),
        Column("recipient", String(320), nullable=False),
        Column("subject", String(200), nullable=False),
        Column("text_body", Text, nullable=False),
        Column("html_body", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("next_attempt_at", UTCDateTime, nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("sent_at", UTCDateTime, nullable=True),
        Index("ix_mail_outbox_unsent", "sent_at", "next_attempt_at"),
    )


async def queue_mail(session: AsyncSession, table: Table, message: MailMessage, now: datetime) -> None:
    """Record ``message`` in the caller's transaction; the relay is woken when it commits."""
    await session.execute(
        table.insert().values(
            id=message.id,
            template=message.template,
            recipient=message.to,
            subject=message.subject,
            text_body=message.text,
            html_body=message.html,
            created_at=now,
            next_attempt_at=now,
            attempts=0,
        )
    )
    session.info[MAIL_PENDING_FLAG] = True


class MailRelay(TableRelay):
    """Sends what the mail outbox holds, one message per transaction."""

    name = "mail relay"
    pending_flag = MAIL_PENDING_FLAG

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        table: Table,
        mailer: Mailer,
        mail_from: str,
        poll_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(sessionmaker, table, poll_seconds)
        self.mailer = mailer
        self.mail_from = mail_from
        self.clock = clock

    async def send_next(self) -> bool:
        """Send the oldest due message; False when none is due."""
        table = self.table
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            row = (
                await session.execute(
                    select(table)
                    .where(table.c.sent_at.is_(None), table.c.attempts < MAX_ATTEMPTS, table.c.next_attempt_at <= now)
                    .order_by(table.c.created_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if row is None:
                return False
            try:
                await self.mailer.send(_message_from_row(row), self.mail_from)
            except Exception as exc:
                await session.execute(update(table).where(table.c.id == row.id).values(**_retry(row.attempts, now)))
                _count_failure(row, exc)
                return True
            # The bodies hold one-time links: once the server has them, they are not kept.
            await session.execute(
                update(table)
                .where(table.c.id == row.id)
                .values(sent_at=self.clock(), attempts=row.attempts + 1, text_body="", html_body="")
            )
        SENT.labels(row.template).inc()
        return True

    async def _relay_all(self) -> None:
        while not self._loop.stopping and await self.send_next():
            pass


def _message_from_row(row: Any) -> MailMessage:
    return MailMessage(
        id=row.id, to=row.recipient, subject=row.subject, text=row.text_body, html=row.html_body, template=row.template
    )


def _retry(attempts: int, now: datetime) -> dict[str, Any]:
    delay = min(30 * 2**attempts, MAX_BACKOFF_SECONDS)
    return {"attempts": attempts + 1, "next_attempt_at": now + timedelta(seconds=delay)}


def _count_failure(row: Any, exc: Exception) -> None:
    FAILURES.inc()
    # The error's type and the message id only: never the recipient or the body.
    extra = {"message_id": str(row.id), "template": row.template, "error": type(exc).__name__}
    if row.attempts + 1 >= MAX_ATTEMPTS:
        ABANDONED.inc()
        logger.error("mail abandoned after every attempt failed", extra=extra)
    else:
        logger.warning("mail not sent; will retry", extra=extra)
