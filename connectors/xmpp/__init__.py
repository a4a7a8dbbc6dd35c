"""XMPP: customers who chat from an XMPP client, and agents who work from one (slixmpp).

`XmppChannel` (channel.py) is the channel; `session.py` holds the connection, `stanzas.py`
reads stanzas, `protocol.py`, `commands.py` and `agentview.py` are the pure parts, and
`agents.py` serves agents. See the README's XMPP section for deployment.
"""

from connectors.xmpp.channel import XmppChannel, XmppOptions
from connectors.xmpp.session import SessionConfig, XmppStartError

__all__ = ["SessionConfig", "XmppChannel", "XmppOptions", "XmppStartError"]
