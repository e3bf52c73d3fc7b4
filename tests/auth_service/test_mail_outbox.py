"""The mail outbox: a message committed is sent once it can be, never twice, over STARTTLS or
TLS with a password, by as many relays as run; in development it is logged with its link."""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_service.config import AuthSettings
from auth_service.models import mail_outbox
from shared.db import create_engine, create_sessionmaker, utcnow
from shared.mail import LoggingMailer, MailMessage, MailRelay, MailTemplates, SmtpMailer, create_mailer, queue_mail
from shared.settings import SettingsError
from tests.mail_server import MailServer, serve_mail, text_of
from tests.private_servers import free_port

TEMPLATES = MailTemplates("auth_service")


@pytest.fixture
async def sessionmaker(auth_settings: AuthSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(auth_settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def smtps_server(tmp_path: Path) -> AsyncIterator[MailServer]:
    yield from serve_mail(tmp_path, implicit_tls=True)


def reset_mail(to: str) -> MailMessage:
    return TEMPLATES.render(
        "password_reset",
        to,
        email=to,
        link=f"https://app.example.com/reset-password?token={uuid.uuid4().hex}",
        valid_for="30 minutes",
    )


async def commit_mail(sessionmaker: async_sessionmaker[AsyncSession], message: MailMessage) -> None:
    async with sessionmaker() as session, session.begin():
        await queue_mail(session, mail_outbox, message, utcnow())


async def relay_for(sessionmaker: async_sessionmaker[AsyncSession], mailer: SmtpMailer, **options: object) -> MailRelay:
    return MailRelay(sessionmaker, mail_outbox, mailer, "PyAirtable <no-reply@example.com>", **options)  # type: ignore[arg-type]


async def drain(relay: MailRelay) -> int:
    sent = 0
    while await relay.send_next():
        sent += 1
    return sent


async def test_a_message_committed_while_the_server_is_down_is_sent_once_it_answers(
    sessionmaker: async_sessionmaker[AsyncSession], mail_server: MailServer
) -> None:
    message = reset_mail("ada@example.com")
    await commit_mail(sessionmaker, message)  # no relay ran: as if the process died after the commit
    down = await relay_for(sessionmaker, SmtpMailer(f"smtp://127.0.0.1:{free_port()}", timeout=2))
    later = await relay_for(
        sessionmaker, SmtpMailer(mail_server.url, mail_server.ca_file), clock=lambda: utcnow() + timedelta(hours=1)
    )
    try:
        assert await down.send_next() is True
        assert await down.send_next() is False  # the failed message waits for its next attempt
        assert mail_server.inbox.messages == []

        assert await drain(later) == 1
        assert await drain(later) == 0  # a replay sends nothing twice
    finally:
        await down.stop()
        await later.stop()

    [received] = mail_server.inbox.messages
    assert received["Message-ID"] == f"<{message.id}@example.com>"
    assert received["Subject"] == "Reset your password"
    assert "https://app.example.com/reset-password?token=" in text_of(received)
    async with sessionmaker() as session:
        row = (await session.execute(select(mail_outbox))).one()
    assert row.sent_at is not None and row.attempts == 2
    assert row.text_body == row.html_body == ""  # the link is not kept once sent


async def test_two_relays_send_each_message_exactly_once(
    sessionmaker: async_sessionmaker[AsyncSession], mail_server: MailServer
) -> None:
    messages = [reset_mail(f"user{i}@example.com") for i in range(8)]
    for message in messages:
        await commit_mail(sessionmaker, message)
    relays = [await relay_for(sessionmaker, SmtpMailer(mail_server.url, mail_server.ca_file)) for _ in range(2)]
    try:
        counts = await asyncio.gather(*(drain(relay) for relay in relays))
    finally:
        for relay in relays:
            await relay.stop()

    assert sum(counts) == 8
    received = sorted(message["Message-ID"] for message in mail_server.inbox.messages)
    assert received == sorted(f"<{message.id}@example.com>" for message in messages)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # it is TLS: see tests/mail_server.py
async def test_smtps_sends_over_tls_from_the_first_byte(smtps_server: MailServer) -> None:
    message = reset_mail("ada@example.com")

    await SmtpMailer(smtps_server.url, smtps_server.ca_file).send(message, "no-reply@example.com")

    [received] = smtps_server.inbox.messages
    assert received["To"] == "ada@example.com"


async def test_a_wrong_smtp_password_leaves_the_message_unsent(
    sessionmaker: async_sessionmaker[AsyncSession], mail_server: MailServer
) -> None:
    await commit_mail(sessionmaker, reset_mail("ada@example.com"))
    wrong = mail_server.url.replace("mailer%40example.com:", "mailer%40example.com:x")
    relay = await relay_for(sessionmaker, SmtpMailer(wrong, mail_server.ca_file))
    try:
        assert await relay.send_next() is True
    finally:
        await relay.stop()

    assert mail_server.inbox.messages == []
    async with sessionmaker() as session:
        row = (await session.execute(select(mail_outbox))).one()
    assert row.sent_at is None and row.attempts == 1 and row.text_body


async def test_the_development_mailer_logs_each_message_with_its_link_not_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = reset_mail("ada@example.com")

    with caplog.at_level(logging.INFO, logger="shared.mail"):
        await LoggingMailer().send(message, "no-reply@example.com")

    [record] = caplog.records
    [link] = record.links  # type: ignore[attr-defined]
    assert link.startswith("https://app.example.com/reset-password?token=") and link in message.text
    assert "ada@example.com" not in str(record.__dict__)  # logs hold no personal data


async def test_without_a_mail_server_production_logs_neither_link_nor_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = reset_mail("ada@example.com")

    with caplog.at_level(logging.INFO, logger="shared.mail"):
        await create_mailer("", production=True).send(message, "no-reply@example.com")

    [record] = caplog.records
    assert record.message == "mail not sent: no SMTP_URL"
    assert "token=" not in str(record.__dict__) and "ada@example.com" not in str(record.__dict__)


@pytest.mark.parametrize("url", ["http://mail.example.com", "smtp://", "mail.example.com:25"])
def test_a_malformed_smtp_url_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="SMTP_URL"):
        SmtpMailer(url)
