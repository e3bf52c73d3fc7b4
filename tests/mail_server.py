"""A real SMTP server in process (aiosmtpd) that keeps what it receives, behind TLS with a
certificate the test makes (STARTTLS on ``smtp://``, TLS from the start on ``smtps://``) and
with a user and password, as a provider's server would be."""

import datetime
import email
import email.policy
import ipaddress
import re
import secrets
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.private_servers import free_port

SMTP_USER = "mailer@example.com"
LINK = re.compile(r"https?://\S+\?token=([A-Za-z0-9_\-]+)")


class Inbox:
    """Every message the server accepted, parsed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [message for message in self.messages if message["To"] == address]

    def last_to(self, address: str) -> EmailMessage:
        received = self.to(address)
        assert received, f"no mail to {address}"
        return received[-1]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def token_in(message: EmailMessage) -> str:
    """The one-time token of the message's link (the same in its text and HTML parts)."""
    match = LINK.search(text_of(message))
    assert match is not None, text_of(message)
    assert match.group(0) in html_of(message)
    return match.group(1)


class MailServer:
    def __init__(self, url: str, inbox: Inbox, ca_file: str) -> None:
        self.url = url
        self.inbox = inbox
        self.ca_file = ca_file


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "smtp.crt", folder / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def serve_mail(folder: Path, implicit_tls: bool) -> Iterator[MailServer]:
    cert_file, key_file = _certificate(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    password = secrets.token_urlsafe(12)

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == SMTP_USER.encode() and data.password == password.encode()
        return AuthResult(success=ok)

    inbox = Inbox()
    port = free_port()
    options: dict[str, Any] = {"authenticator": authenticate, "auth_required": True, "auth_require_tls": True}
    if implicit_tls:
        # aiosmtpd does not count a connection that began with TLS as encrypted: AUTH is allowed, the
        # client having no way to speak anything but TLS to this port.
        options["auth_require_tls"] = False
        controller = Controller(inbox, hostname="127.0.0.1", port=port, ssl_context=context, **options)
        scheme = "smtps"
    else:
        controller = Controller(
            inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True, **options
        )
        scheme = "smtp"
    controller.start()
    try:
        yield MailServer(f"{scheme}://mailer%40example.com:{password}@127.0.0.1:{port}", inbox, str(cert_file))
    finally:
        controller.stop()


@pytest.fixture
def mail_server(tmp_path: Path) -> Iterator[MailServer]:
    """An SMTP server with STARTTLS and a password (``smtp://``)."""
    yield from serve_mail(tmp_path, implicit_tls=False)


@pytest.fixture
def smtps_server(tmp_path: Path) -> Iterator[MailServer]:
    """An SMTP server with TLS from the first byte (``smtps://``)."""
    yield from serve_mail(tmp_path, implicit_tls=True)
