"""Sending invitation and password-reset links: one `Mailer` per process, chosen by
`AGENTOS_PEOPLE__MAILER`. `SmtpMailer` uses the standard library (STARTTLS by default); the dev
`LogMailer` writes the link to the log, so a developer can follow it. Nothing else ever logs a
token: only the dev mailer, which production refuses (core.settings.production_problems)."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from core.settings import Settings

log = logging.getLogger("agentos.mailer")


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...


class LogMailer:
    """Development: the mail, link included, goes to the log."""

    def __init__(self) -> None:
        self.sent: list[Mail] = []  # the last mails, for `agentos dev` and tests

    async def send(self, mail: Mail) -> None:
        self.sent = [*self.sent[-99:], mail]
        log.warning("dev mailer (not sent) to %s: %s\n%s", mail.to, mail.subject, mail.text)


class NoMailer:
    """Mail is off: invitations still work, their links are handed over by other means."""

    async def send(self, mail: Mail) -> None:
        log.info("mail is off (AGENTOS_PEOPLE__MAILER=none): not sending %r", mail.subject)


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        self._s = settings.people

    def _send(self, mail: Mail) -> None:
        s = self._s
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = s.smtp_from, mail.to, mail.subject
        message.set_content(mail.text)
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=10) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username and s.smtp_password is not None:
                smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
            smtp.send_message(message)

    async def send(self, mail: Mail) -> None:
        await asyncio.to_thread(self._send, mail)


def mailer_for(settings: Settings) -> Mailer:
    kind = settings.people.mailer or ("none" if settings.env == "production" else "log")
    if kind == "smtp":
        return SmtpMailer(settings)
    if kind == "log":
        return LogMailer()
    return NoMailer()
