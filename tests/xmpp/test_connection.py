"""Logging in: TLS by default (STARTTLS or direct TLS, the server's certificate verified), and
a clear error naming the key to fix when the login cannot work."""

from __future__ import annotations

import pytest

from connectors.xmpp import XmppStartError
from tests.helpers import wait_until


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_login_verifies_the_server_certificate(
        prosody, core, start_channel, client, security):
    gw, ann = await prosody.accounts("gw", "ann")
    port = prosody.tls_port if security == "tls" else prosody.port
    channel = await start_channel(core, gw, xmpp_host="localhost", xmpp_port=port,
                                  xmpp_security=security, xmpp_ca_file=prosody.ca_file)
    assert channel.session._client.socket.version().startswith("TLS")  # encrypted
    customer = await client(ann)
    customer.send(gw, "over tls")
    await wait_until(lambda: core.texts() == ["over tls"], what="the message")


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_an_untrusted_certificate_stops_the_start_naming_the_ca_key(
        prosody, core, start_channel, security):
    (gw,) = await prosody.accounts("gw")
    port = prosody.tls_port if security == "tls" else prosody.port
    with pytest.raises(XmppStartError, match="GATEWAY_XMPP_CA_FILE"):
        await start_channel(core, gw, xmpp_host="localhost", xmpp_port=port,
                            xmpp_security=security)


async def test_a_wrong_password_stops_the_start_naming_the_keys(prosody, core, start_channel):
    (gw,) = await prosody.accounts("gw")
    with pytest.raises(XmppStartError, match="GATEWAY_XMPP_PASSWORD"):
        await start_channel(core, gw, xmpp_password="not-the-password-at-all")


async def test_an_unreachable_server_stops_the_start_after_the_timeout(core, start_channel):
    from tests.peers import free_tcp_port

    with pytest.raises(XmppStartError, match="GATEWAY_XMPP_HOST"):
        await start_channel(core, "gw@localhost", xmpp_port=free_tcp_port(),
                            xmpp_connect_timeout_seconds=0.5)
