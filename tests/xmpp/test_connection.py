"""Logging in: TLS by default (STARTTLS or direct TLS, the server's certificate verified), and
a clear error naming the key to fix when the login cannot work."""

from __future__ import annotations

import pytest

from connectors.xmpp import XmppChannel, XmppStartError
from tests.xmpp.conftest import channel_settings
from tests.xmpp.fakes import eventually


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_login_verifies_the_server_certificate(prosody, core, client, security):
    gw, ann = await prosody.accounts("gw", "ann")
    port = prosody.tls_port if security == "tls" else prosody.port
    channel = XmppChannel.from_settings(channel_settings(
        prosody, gw, xmpp_host="localhost", xmpp_port=port, xmpp_security=security,
        xmpp_ca_file=prosody.ca_file))
    await channel.start(core)
    try:
        assert channel.session._client.socket.version().startswith("TLS")  # encrypted
        customer = await client(ann)
        customer.send(gw, "over tls")
        await eventually(lambda: core.texts() == ["over tls"], what="the message")
    finally:
        await channel.aclose()


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_an_untrusted_certificate_stops_the_start_naming_the_ca_key(
        prosody, core, security):
    (gw,) = await prosody.accounts("gw")
    port = prosody.tls_port if security == "tls" else prosody.port
    channel = XmppChannel.from_settings(channel_settings(
        prosody, gw, xmpp_host="localhost", xmpp_port=port, xmpp_security=security))
    with pytest.raises(XmppStartError, match="GATEWAY_XMPP_CA_FILE"):
        await channel.start(core)
    await channel.aclose()


async def test_a_wrong_password_stops_the_start_naming_the_keys(prosody, core):
    (gw,) = await prosody.accounts("gw")
    channel = XmppChannel.from_settings(channel_settings(
        prosody, gw, xmpp_password="not-the-password-at-all"))
    with pytest.raises(XmppStartError, match="GATEWAY_XMPP_PASSWORD"):
        await channel.start(core)
    await channel.aclose()


async def test_an_unreachable_server_stops_the_start_after_the_timeout(core):
    from tests.peers import free_tcp_port

    channel = XmppChannel.from_settings(channel_settings(
        _Nowhere(free_tcp_port()), "gw@localhost", xmpp_connect_timeout_seconds=0.5))
    with pytest.raises(XmppStartError, match="GATEWAY_XMPP_HOST"):
        await channel.start(core)
    await channel.aclose()


class _Nowhere:
    def __init__(self, port: int) -> None:
        self.port = port
