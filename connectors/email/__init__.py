"""Email: a support mailbox over IMAP (aioimaplib) in, SMTP (aiosmtplib) out.

One job per module: `ids` (Message-IDs, thread tokens), `parse` (bytes -> ParsedMail; with
`classify`, `trim`, `authres`), `blobs` (parts by reference), `compose` (EmailMessage with
policy.SMTP), `imap` (one connection), `inbound` (following the mailbox), `smtp` (one send),
`channel` (the `Channel` the composition root mounts).
"""

from connectors.email.channel import EmailChannel, email_config

__all__ = ["EmailChannel", "email_config"]
