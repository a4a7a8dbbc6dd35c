"""XMPP settings: the channel is off without GATEWAY_XMPP_JID, and a wrong value fails at
start with one line naming the key."""

from __future__ import annotations

import logging

import pytest

from config.settings import ConfigError, load_settings
from connectors.xmpp import XmppChannel


def test_the_channel_is_off_without_a_jid(settings_env):
    assert XmppChannel.from_settings(load_settings()) is None


def test_defaults(settings_env):
    settings_env.setenv("GATEWAY_XMPP_JID", "support@example.org")
    settings_env.setenv("GATEWAY_XMPP_PASSWORD", "secret-secret")
    channel = XmppChannel.from_settings(load_settings())
    assert channel is not None
    session = channel.options.session
    assert (session.jid, session.security, session.address) == \
        ("support@example.org", "starttls", (None, None))
    assert channel.channels == frozenset({"xmpp"}) and channel.routes() == ()
    settings_env.setenv("GATEWAY_XMPP_HOST", "xmpp.example.org")
    settings_env.setenv("GATEWAY_XMPP_SECURITY", "tls")
    assert XmppChannel.from_settings(load_settings()).options.session.address == \
        ("xmpp.example.org", 5223)


@pytest.mark.parametrize(("env", "named"), [
    ({"GATEWAY_XMPP_JID": "support@example.org"}, "GATEWAY_XMPP_PASSWORD"),
    ({"GATEWAY_XMPP_JID": "example.org", "GATEWAY_XMPP_PASSWORD": "pw"}, "GATEWAY_XMPP_JID"),
    ({"GATEWAY_XMPP_JID": "a@example.org/res", "GATEWAY_XMPP_PASSWORD": "pw"},
     "GATEWAY_XMPP_JID"),
    ({"GATEWAY_XMPP_JID": "a@example.org", "GATEWAY_XMPP_PASSWORD": "pw",
      "GATEWAY_XMPP_SECURITY": "ssl"}, "GATEWAY_XMPP_SECURITY"),
    ({"GATEWAY_XMPP_JID": "a@example.org", "GATEWAY_XMPP_PASSWORD": "pw",
      "GATEWAY_XMPP_PORT": "0"}, "GATEWAY_XMPP_PORT"),
])
def test_a_wrong_value_names_its_key(settings_env, env, named):
    for key, value in env.items():
        settings_env.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_agents_on_xmpp_need_no_phone_and_a_bad_jid_names_its_agent(settings_env):
    settings_env.setenv("GATEWAY_XMPP_JID", "support@example.org")
    settings_env.setenv("GATEWAY_XMPP_PASSWORD", "secret-secret")
    settings_env.setenv("GATEWAY_AGENTS", '[{"id": "alice", "xmpp": "Alice@Example.org"}]')
    channel = XmppChannel.from_settings(load_settings())
    assert channel.agents.jids == ["alice@example.org"]
    settings_env.setenv("GATEWAY_AGENTS", '[{"id": "alice", "xmpp": "alice@example.org"}, '
                        '{"id": "bob", "xmpp": "support@example.org"}]')
    with pytest.raises(ConfigError, match=r"GATEWAY_AGENTS\[1\]\.xmpp"):
        XmppChannel.from_settings(load_settings())


def test_security_none_towards_another_host_warns(settings_env, caplog):
    settings_env.setenv("GATEWAY_XMPP_JID", "support@example.org")
    settings_env.setenv("GATEWAY_XMPP_PASSWORD", "secret-secret")
    settings_env.setenv("GATEWAY_XMPP_SECURITY", "none")
    with caplog.at_level(logging.WARNING, logger="gateway.connectors.xmpp"):
        XmppChannel.from_settings(load_settings())
    assert "in clear" in caplog.text
    caplog.clear()
    settings_env.setenv("GATEWAY_XMPP_HOST", "127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="gateway.connectors.xmpp"):
        XmppChannel.from_settings(load_settings())
    assert "in clear" not in caplog.text
