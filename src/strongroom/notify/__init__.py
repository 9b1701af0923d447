"""Events and the sinks that deliver them: a command, a webhook, email, syslog, apprise.

This package knows how to build an event's payload and how to hand it to one sink; the
outbox (catalog) and the choice of sinks (config) are joined in ``jobs.notifier``.
"""

from strongroom.notify.event import Event, redact
from strongroom.notify.senders import (
    AppriseSender,
    CommandSender,
    DeliveryFailed,
    EmailSender,
    Sender,
    SyslogSender,
    WebhookSender,
)

__all__ = [
    "AppriseSender",
    "CommandSender",
    "DeliveryFailed",
    "EmailSender",
    "Event",
    "Sender",
    "SyslogSender",
    "WebhookSender",
    "redact",
]
