#!/bin/sh
# Installs the real peers the test suite talks to (PostgreSQL, SIPp, baresip,
# Kamailio, Prosody, Dovecot, Chromium) when they are missing and this machine allows it. Tests skip a peer
# that is absent, unless GATEWAY_REQUIRE_PEERS=1 makes absence an error here too.
set -eu

PACKAGES="postgresql sip-tester baresip kamailio prosody dovecot-imapd chromium"

missing_peers() {
    missing=""
    found_pg=""
    for bindir in /usr/lib/postgresql/*/bin; do
        if [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ]; then
            found_pg=1
        fi
    done
    [ -n "$found_pg" ] || missing="$missing postgresql"
    command -v sipp >/dev/null 2>&1 || [ -x /usr/bin/sipp ] || missing="$missing sipp"
    command -v baresip >/dev/null 2>&1 || [ -x /usr/bin/baresip ] || missing="$missing baresip"
    command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || missing="$missing kamailio"
    command -v prosody >/dev/null 2>&1 || [ -x /usr/bin/prosody ] || missing="$missing prosody"
    command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing="$missing dovecot"
    command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing="$missing chromium"
    echo "$missing"
}

missing=$(missing_peers)
if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-peers: missing:$missing; installing $PACKAGES with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
    missing=$(missing_peers)
    if [ -z "$missing" ]; then
        echo "install-peers: installed $PACKAGES"
        exit 0
    fi
fi

echo "install-peers: peers missing:$missing; tests that need them will be skipped" \
     "(run as root on Debian/Ubuntu to install: apt-get install $PACKAGES)"
if [ "${GATEWAY_REQUIRE_PEERS:-0}" = 1 ]; then
    echo "install-peers: GATEWAY_REQUIRE_PEERS=1, so missing peers are an error" >&2
    exit 1
fi
exit 0
