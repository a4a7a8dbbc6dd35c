"""Logging in: the server found by the DNS SRV records of the JID's domain, TLS by default
(STARTTLS or direct TLS, the server's certificate verified), and a clear error naming the key
to fix when the login cannot work."""

from __future__ import annotations

import pytest

from connectors.xmpp import XmppStartError
from tests.helpers import wait_until
from tests.xmpp.dns import SRV, SrvServer


@pytest.mark.parametrize("security, service", [("starttls", "_xmpp-client._tcp"),
                                               ("tls", "_xmpps-client._tcp")])
async def test_without_a_host_the_server_is_found_by_the_srv_records_of_the_domain(
        prosody, core, start_channel, client, security, service):
    gw, ann = await prosody.accounts("gw", "ann")
    port = prosody.tls_port if security == "tls" else prosody.port
    # The domain's SRV record names the server's port; nothing listens on the default one.
    async with SrvServer({f"{service}.localhost": ("localhost", port)}) as dns:
        channel = await start_channel(core, gw, xmpp_host=None, xmpp_port=None,
                                      xmpp_security=security, xmpp_ca_file=prosody.ca_file,
                                      nameservers=(dns.address,))
    assert (f"{service}.localhost", SRV) in dns.asked
    assert channel.session._client.socket.version().startswith("TLS")
    customer = await client(ann)
    customer.send(gw, "found you")
    await wait_until(lambda: core.texts() == ["found you"], what="the message")


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
