"""The gateway's settings: read once from GATEWAY_* variables and an optional TOML file.

Environment variables win over the file. A bad or missing value raises ConfigError with one
line that names the key, so `gateway serve` can say exactly what to fix.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    SettingsError,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "GATEWAY_"


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the key."""


PLACEHOLDERS = ("change-me", "changeme", "change_me")  # refused anywhere in a token
MIN_TOKEN = 16


def _not_a_placeholder(value: str) -> str:
    """CONTRACT.md: placeholder secrets (`change-me`, anything shorter than 16 characters)
    are refused for GATEWAY_AGENT_TOKEN."""
    lowered = value.strip().lower()
    if len(value.strip()) < MIN_TOKEN or any(p in lowered for p in PLACEHOLDERS):
        raise ValueError(f"a placeholder or shorter than {MIN_TOKEN} characters: use a long "
                         "random token (e.g. python3 -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    return value


# The example values of config/example.toml and the docs, and the usual stand-ins: a secret
# that is one of these was never set (CONTRACT.md: placeholder secrets are refused, naming
# the key). Compared case-insensitively, after stripping.
EXAMPLE_SECRETS = frozenset({
    "your-auth-token", "app-secret", "a-token-you-choose", "…", "...", "password", "secret",
    "placeholder", "example", "todo", "xxx", "test", "admin", "default",
})


def _not_an_example(value: SecretStr | None) -> SecretStr | None:
    """Refuse a secret left at an example or placeholder value (any length)."""
    if value is None:
        return None
    lowered = value.get_secret_value().strip().lower()
    if (lowered in EXAMPLE_SECRETS or any(p in lowered for p in PLACEHOLDERS)
            or (lowered and set(lowered) <= set("x.…*"))):
        raise ValueError("an example or placeholder value: set the real secret")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


class AgentConfig(BaseModel):
    """One agent: who they are, how their phone reaches the gateway, where they chat."""

    id: str
    name: str = ""
    sip_user: str | None = None
    sip_password: SecretStr | None = None
    contact: str | None = None  # a static SIP contact, e.g. sip:alice@127.0.0.1:5070
    xmpp: str | None = None  # the agent's bare JID, e.g. alice@example.org
    token_sha256: str | None = None  # hex SHA-256 of the agent's own API bearer token

    _sip_password = field_validator("sip_password")(_not_an_example)

    @field_validator("xmpp")
    @classmethod
    def _bare_jid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.strip().partition("@")
        if not at or not local or not domain or "/" in value or " " in value.strip():
            raise ValueError("must be a bare JID, e.g. alice@example.org")
        return value.strip()

    @field_validator("token_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip().lower()
        if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
            raise ValueError("must be 64 hex characters: the SHA-256 of the agent's token")
        return text

    @model_validator(mode="after")
    def _reachable(self) -> "AgentConfig":
        if not self.sip_user and not self.contact and not self.xmpp:
            raise ValueError(f"agent {self.id!r} needs sip_user (REGISTER), contact (static) "
                             "or xmpp (a JID)")
        if self.sip_user and self.sip_password is None:
            raise ValueError(f"agent {self.id!r} has sip_user but no sip_password")
        return self


# ---- one block per part: the core's, then one per channel ------------------------------------
# A new channel adds its block here (fields named <channel>_…, so GATEWAY_<CHANNEL>_… in the
# environment), lists it among Settings' bases, and reads it in its own `from_settings`.


class CoreSettings(BaseModel):
    """The store, HTTP, the agent API, agents, and the core's policy."""

    database_url: str = "sqlite+aiosqlite:///gateway.db"
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    agent_token: SecretStr | None = None

    agents: list[AgentConfig] = Field(default_factory=list)

    conversation_idle_hours: float = Field(72.0, gt=0)
    context_token_ttl_seconds: int = Field(900, gt=0)
    verification_ttl_seconds: int = Field(3600, gt=0)
    otp_ttl_seconds: int = Field(600, gt=0)
    otp_max_attempts: int = Field(5, ge=1)
    escalation_ttl_seconds: int = Field(900, gt=0)
    default_region: str | None = None  # for phone numbers written without +country

    # Every gateway on one PostgreSQL may send the outbox (rows are leased per instance);
    # false makes an API-only replica, whose replies another gateway sends.
    outbox_enabled: bool = True
    # How often the outbox looks for due rows without being woken (new rows wake it, also
    # across gateways through PostgreSQL NOTIFY; retries and recovery rely on this).
    outbox_poll_seconds: float = Field(5.0, gt=0, le=3600)
    # This process's name among the gateways on one database (outbox leases, event fan-out).
    # Unset: a new one per process (host-pid-random). Set it only to a value unique to this
    # gateway and stable across its restarts: then a restart marks its own earlier in-flight
    # sends `unknown` even on SQLite's shared files; two live gateways with one id are refused.
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    # Comment lines on an idle event stream (/api/v1/events), under proxies' idle timeouts.
    events_heartbeat_seconds: float = Field(15.0, gt=0, le=300)

    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("agent_token")
    @classmethod
    def _agent_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _not_a_placeholder(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _db(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be sqlite+aiosqlite:///… or postgresql+asyncpg://…")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value


class TwilioSettings(BaseModel):
    """Twilio: SMS, WhatsApp through Twilio, Voice (one account). On when the SID is set."""

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_api_url: str = "https://api.twilio.com"
    twilio_from_number: str | None = None  # our SMS number, used for outbound when no leg has one
    twilio_voice_number: str | None = None  # the number customers dial in to
    twilio_webhook_shared_key: SecretStr | None = None  # secret of a Twilio Webhooks SharedKey

    @field_validator("twilio_api_url")
    @classmethod
    def _twilio_url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _twilio_complete(self) -> "TwilioSettings":
        # Half-configured, a webhook would either fail open or reject everything silently.
        if self.twilio_account_sid and self.twilio_auth_token is None:
            raise ValueError("twilio_auth_token: required when twilio_account_sid is set")
        if self.twilio_auth_token is not None and not self.twilio_account_sid:
            raise ValueError("twilio_account_sid: required when twilio_auth_token is set")
        if self.twilio_auth_token is not None and not self.twilio_auth_token.get_secret_value():
            raise ValueError("twilio_auth_token: must not be empty")
        return self

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.twilio_account_sid)


class WhatsAppSettings(BaseModel):
    """Meta's WhatsApp Cloud API. On when the app secret is set."""

    whatsapp_app_secret: SecretStr | None = None
    whatsapp_verify_token: SecretStr | None = None
    whatsapp_access_token: SecretStr | None = None
    whatsapp_api_url: str = "https://graph.facebook.com/v21.0"
    whatsapp_phone_number_id: str | None = None

    @field_validator("whatsapp_api_url")
    @classmethod
    def _whatsapp_url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _whatsapp_complete(self) -> "WhatsAppSettings":
        if self.whatsapp_app_secret is not None and not self.whatsapp_app_secret.get_secret_value():
            raise ValueError("whatsapp_app_secret: must not be empty")
        wa = [self.whatsapp_app_secret, self.whatsapp_verify_token, self.whatsapp_access_token]
        if any(v is not None for v in wa) and self.whatsapp_app_secret is None:
            raise ValueError("whatsapp_app_secret: required when WhatsApp is configured")
        return self

    @property
    def whatsapp_enabled(self) -> bool:
        return self.whatsapp_app_secret is not None


class SipSettings(BaseModel):
    """The SIP edge (registrar and proxy for agents' phones and trunks). Always on."""

    sip_host: str = "127.0.0.1"
    sip_port: int = Field(5060, ge=0, le=65535)
    sip_domain: str | None = None  # the domain agents register under; defaults to sip_host
    sip_realm: str = "gateway"
    # Request-URI users that go to any available agent (pick()): a trunk's DIDs (a number
    # matches with or without +) and names such as "support". "*" routes every user that is
    # not an agent's own. Anything else (and no agent user) is answered 404.
    sip_service_users: list[str] = Field(default_factory=lambda: ["support"])
    sip_digest_algorithms: list[str] = Field(default_factory=lambda: ["SHA-256", "MD5"])
    # HMAC secret of the registrar's digest nonces; set it when several gateways share agents
    # (any of them can then check a nonce another issued). Unset: random per process.
    sip_nonce_secret: SecretStr | None = None
    sip_min_expires: int = Field(60, ge=1)  # shorter REGISTER intervals get 423
    sip_max_expires: int = Field(3600, ge=1)  # longer ones are cut to this
    sip_retry_after_seconds: int = Field(30, ge=0)  # Retry-After of 480 when no agent is free
    sip_ring_timeout_seconds: float = Field(60.0, gt=0)  # then CANCEL the agent, 480 the caller
    # Messages whose User-Agent names a SIP scanner (friendly-scanner, sipvicious, sipcli, ...)
    # pass at this rate per source IP (token bucket); the rest are dropped without an answer.
    sip_scanner_rate: float = Field(1.0, ge=0)
    sip_scanner_burst: int = Field(5, ge=0)
    # RFC 3261 timers T1, T2, T4 in milliseconds; tests shorten them, production keeps these.
    sip_timer_t1_ms: int = Field(500, ge=1)
    sip_timer_t2_ms: int = Field(4000, ge=1)
    sip_timer_t4_ms: int = Field(5000, ge=1)
    # ---- SIP under attack (docs/sip.md "Hostile traffic"; docs/security.md "The SIP edge") ----
    # Peers whose X-Context and caller-ID attestation (verstat) are believed: IPs or CIDRs of
    # the trunks and upstream edges (JSON list). Default: nobody.
    sip_trusted_peers: list[str] = Field(default_factory=list)
    # Failed digest authentications (REGISTER, and INVITEs from agents' users) allowed per
    # source IP and per user: a burst, then this many a minute. Beyond: 403 "Too Many Failed
    # Attempts" (a user's limit spares the addresses it authenticated from before).
    sip_auth_failure_burst: int = Field(10, ge=1)
    sip_auth_failures_per_minute: float = Field(6.0, ge=0)
    # Refusals (401, 403, 404, 407, 416, 481) one source IP may collect, whatever its
    # User-Agent: a burst, then this many a minute. Beyond: 403 "Too Many Failed Requests".
    sip_probe_burst: int = Field(30, ge=1)
    sip_probes_per_minute: float = Field(60.0, ge=0)
    # TCP: connections one source IP may hold (trusted peers are exempt), and how long a
    # connection may take to send a complete message (its first, or one it has begun).
    sip_tcp_max_connections_per_source: int = Field(32, ge=1)
    sip_tcp_message_timeout_seconds: float = Field(10.0, gt=0)
    # ---- several gateways behind Kamailio (docs/scale-out.md, point 4) ----
    # Write the registrar's bindings to the database and read the other gateways' every
    # sync interval: a phone registered through one gateway takes calls entering at another.
    sip_shared_registrations: bool = False
    sip_registration_sync_seconds: float = Field(1.0, gt=0, le=60)

    @field_validator("sip_trusted_peers")
    @classmethod
    def _trusted_peers(cls, value: list[str]) -> list[str]:
        import ipaddress

        for peer in value:
            try:
                ipaddress.ip_network(peer.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{peer!r} is not an IP address or CIDR") from None
        return [peer.strip() for peer in value]
    # ---- end of SIP under attack ----

    @field_validator("sip_digest_algorithms")
    @classmethod
    def _digest(cls, value: list[str]) -> list[str]:
        known = {"SHA-256": "SHA-256", "MD5": "MD5"}
        out = []
        for name in value:
            if name.upper() not in known:
                raise ValueError(f"{name!r} is not SHA-256 or MD5")
            out.append(known[name.upper()])
        if not out:
            raise ValueError("name at least one of SHA-256, MD5")
        return out

    @model_validator(mode="after")
    def _sip_consistent(self) -> "SipSettings":
        if self.sip_min_expires > self.sip_max_expires:
            raise ValueError("sip_min_expires: must not exceed sip_max_expires")
        if self.sip_timer_t1_ms > self.sip_timer_t2_ms:
            raise ValueError("sip_timer_t1_ms: must not exceed sip_timer_t2_ms")
        return self


# ---- email: connectors/email (docs/email.md) -----------------------------------------------
class EmailSettings(BaseModel):
    """IMAP in, SMTP out (connectors/email). On when email_address is set; then the IMAP and
    SMTP hosts are required (EmailChannel.from_settings says which key is missing)."""

    email_address: str | None = None  # the support address customers write to
    imap_host: str | None = None
    imap_port: int = Field(993, ge=1, le=65535)
    imap_user: str | None = None  # default: email_address
    imap_password: SecretStr | None = None
    imap_mailbox: str = "INBOX"
    imap_security: Literal["tls", "starttls", "none"] = "tls"
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    email_from_name: str | None = None  # display name of our replies, e.g. "ACME Support"
    # Attachments, HTML originals and raw messages, content-addressed (by reference only in
    # the transcript). Relative paths are relative to the working directory.
    email_store_dir: str = "gateway-mail"
    email_keep_raw: bool = False  # also copy each raw message here (else its IMAP URL names it)
    email_idle: bool = True  # IMAP IDLE when offered; false: poll every email_poll_seconds
    email_poll_seconds: float = Field(60.0, gt=0)
    email_batch: int = Field(100, ge=1, le=1000)  # messages per IMAP FETCH
    email_max_message_mb: float = Field(50.0, gt=0)  # larger mails: header only, noted
    # Processes parsing mail (0: a thread in the gateway process). A process keeps ~2/3 of
    # the per-mail CPU off the process that also serves webhooks and SIP.
    email_parse_workers: int = Field(1, ge=0, le=16)
    # Languages whose "On … wrote:" lines mark quoted history (mail-parser-reply codes: en de
    # fr es it nl pl sv da cs ja ko zh). Each one costs parse time: en alone reads ~2.5x
    # faster than en,de,fr,es (bench/email_ingest.py).
    email_reply_languages: list[str] = Field(default_factory=lambda: ["en"])
    email_timeout_seconds: float = Field(30.0, gt=0)  # every IMAP/SMTP command

    @field_validator("email_address")
    @classmethod
    def _email_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.strip().rpartition("@")
        if not at or not local or "." not in domain or any(c in value for c in " <>,;\"\r\n"):
            raise ValueError("must be one plain address such as support@example.org")
        if "+" in local:
            raise ValueError("must not contain '+': replies go to <local>+<thread token>@…")
        return f"{local}@{domain.lower()}"
# ---- end of email ----


class XmppSettings(BaseModel):
    """The XMPP channel (connectors/xmpp): the gateway's own account. On when the JID is set."""

    xmpp_jid: str | None = None  # the gateway's own account, e.g. support@example.org
    xmpp_password: SecretStr | None = None
    xmpp_host: str | None = None  # unset: DNS SRV of the JID's domain, then the domain itself
    xmpp_port: int | None = Field(None, ge=1, le=65535)  # unset: 5222 (5223 for tls)
    xmpp_security: str = Field("starttls", pattern="^(starttls|tls|none)$")
    xmpp_ca_file: str | None = None  # a CA bundle to trust instead of the system's
    xmpp_resource: str = "gateway"
    xmpp_max_body_chars: int = Field(10_000, ge=1)  # longer messages are refused (error stanza)
    # Per customer JID: messages/s sustained and at once; the rest get an error stanza.
    xmpp_flood_rate: float = Field(1.0, gt=0)
    xmpp_flood_burst: int = Field(20, ge=1)
    xmpp_connect_timeout_seconds: float = Field(20.0, gt=0)  # start() gives up after this
    xmpp_send_timeout_seconds: float = Field(15.0, gt=0)  # a send waits this for the server's ack
    xmpp_reconnect_min_seconds: float = Field(1.0, gt=0)
    xmpp_reconnect_max_seconds: float = Field(60.0, gt=0)
    xmpp_keepalive_seconds: float = Field(60.0, gt=0)  # XEP-0199 ping; a dead link is noticed
    # An agent whose last resource went offline gets their conversations back to the queue
    # after this long (a phone switching networks comes back within it).
    xmpp_agent_release_after_seconds: float = Field(60.0, ge=0)
    # After the gateway's session starts (start-up, or the server forgot our session), an
    # agent not seen yet keeps their conversations for at least this long: their presence
    # is on its way.
    xmpp_presence_grace_seconds: float = Field(10.0, ge=0)
    # With no stored archive position (first start), catch up this many hours of the archive.
    xmpp_archive_backfill_hours: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _xmpp_complete(self) -> "XmppSettings":
        if self.xmpp_jid is None:
            return self
        node, at, domain = self.xmpp_jid.partition("/")[0].rpartition("@")
        if not at or not node or not domain or "/" in self.xmpp_jid:
            raise ValueError("xmpp_jid: must be a bare JID such as support@example.org")
        if self.xmpp_password is None or not self.xmpp_password.get_secret_value():
            raise ValueError("xmpp_password: required when xmpp_jid is set")
        if self.xmpp_reconnect_min_seconds > self.xmpp_reconnect_max_seconds:
            raise ValueError("xmpp_reconnect_min_seconds: must not exceed "
                             "xmpp_reconnect_max_seconds")
        return self

    @property
    def xmpp_enabled(self) -> bool:
        return self.xmpp_jid is not None



# ---- trust under attack (issue 7; docs/security.md) -------------------------------------------

BINDINGS = ("verified-leg", "escalation", "callback", "attested", "caller-id", "address")


class TrustSettings(BaseModel):
    """Guess limits, disclosure of unverified legs, and the HTTP edge's own limits."""

    # Wrong escalation PINs allowed per source (a SIP peer's IP address, a Twilio caller's
    # number): a burst, then this many a minute. Beyond: the call is refused finally (SIP
    # 403 "Too Many Wrong PINs", Twilio <Say> + <Hangup>) and no agent rings.
    pin_failure_burst: int = Field(5, ge=1)
    pin_failures_per_minute: float = Field(2.0, ge=0)
    # The same for everybody together (many sources guessing at once): beyond it, every
    # PIN call is refused until the bucket refills ("PIN Checks Paused").
    pin_global_failure_burst: int = Field(50, ge=1)
    pin_global_failures_per_minute: float = Field(20.0, ge=0)
    # The key of the PIN look-up hash (HMAC-SHA256). Unset: the gateway makes one and keeps
    # it in the database; set it (32+ random characters) to keep it outside the database.
    pin_lookup_secret: SecretStr | None = None
    # What a leg that carries no verification sees of the history, per binding (see
    # docs/security.md "Disclosure"): "limited" (the default for every binding) or "full",
    # e.g. {"attested": "full"}. A verified leg always sees the full bundle.
    disclosure_unverified: dict[str, str] = Field(default_factory=dict)
    # A connection must deliver a complete request head (request line and headers) within
    # this many seconds of opening, or of the previous response; else it is closed. An
    # idle kept-alive connection is closed after the same time (gateway/httpedge.py).
    http_header_timeout_seconds: float = Field(15.0, gt=0)
    # Once its head is in, a request's body must arrive complete within this many seconds,
    # or the gateway answers 408 and closes the connection (gateway/httpedge.py).
    http_body_timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("pin_lookup_secret")
    @classmethod
    def _pin_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _not_a_placeholder(value.get_secret_value())
        return value

    # Every other secret the gateway reads (the channels' own settings blocks included:
    # check_fields=False lets one block name fields another defines).
    _secrets = field_validator(
        "twilio_auth_token", "twilio_webhook_shared_key", "whatsapp_app_secret",
        "whatsapp_verify_token", "whatsapp_access_token", "sip_nonce_secret",
        "imap_password", "smtp_password", "xmpp_password", check_fields=False,
    )(_not_an_example)

    @field_validator("disclosure_unverified")
    @classmethod
    def _disclosure(cls, value: dict[str, str]) -> dict[str, str]:
        for binding, level in value.items():
            if binding not in BINDINGS:
                raise ValueError(f"{binding!r} is not a binding ({', '.join(BINDINGS)})")
            if level not in ("full", "limited"):
                raise ValueError(f"{binding}: {level!r} must be \"full\" or \"limited\"")
        return value
# ---- end of trust under attack ----


class Settings(CoreSettings, TwilioSettings, WhatsAppSettings, SipSettings, EmailSettings,
               XmppSettings, TrustSettings, BaseSettings):
    """Everything the gateway reads from its environment. Names follow CONTRACT.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, toml_file=None,
        env_ignore_empty=True,  # GATEWAY_X= (as compose passes unset values) means "not set"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def _key_name(loc: tuple[Any, ...]) -> str:
    head = str(loc[0]) if loc else "?"
    rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    return f"{ENV_PREFIX}{head.upper()}{rest}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment (and `config_file`), or raise ConfigError."""
    toml: Path | None = None
    if config_file is not None:
        toml = Path(config_file)
        if not toml.is_file():
            raise ConfigError(f"--config {toml}: no such file")
        try:
            tomllib.loads(toml.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--config {toml}: not valid TOML ({exc})") from None

    class _Settings(Settings):
        model_config = SettingsConfigDict(toml_file=toml)

    try:
        return _Settings(**overrides)
    except SettingsError as exc:
        # pydantic-settings: 'error parsing value for field "agents" from source …'
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise ConfigError(
            f"configuration error: {ENV_PREFIX}{field.upper()}: not valid JSON for a list/object"
        ) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        loc = tuple(err.get("loc", ()))
        if not loc:
            # model-level checks name their own key: "twilio_auth_token: required when …"
            key, _, why = msg.partition(": ")
            if key.isidentifier() and why:
                loc, msg = (key,), why
        key = _key_name(loc)
        got = err.get("input")
        secret = any(word in key.lower() for word in ("token", "secret", "password"))
        shown = ("" if got is None or secret or isinstance(got, (dict, list))
                 else f" (got {got!r})")
        raise ConfigError(f"configuration error: {key}: {msg}{shown}") from None
