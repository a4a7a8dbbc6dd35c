"""Digest authentication for SIP (`connectors/sip/digest.py`): RFC test vectors, header
parsing that only fails with RemoteProtocolError, self-validating and stale nonces, the
ledger that refuses replays, and the registrar's uri check and failure throttle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.sip.digest import (
    AuthOutcome,
    Challenge,
    Credentials,
    NonceIssuer,
    NonceLedger,
    NonceStatus,
    authorize,
    check_credentials,
    choose_challenge,
    compute_response,
    ha1,
    verify,
)
from connectors.sip.errors import LocalProtocolError, RemoteProtocolError

RFC2617_AUTHORIZATION = """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\"""".replace("\n", " ")

RFC7616 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "uri": "/dir/index.html",
    "method": "GET",
    "password": "Circle of Life",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}


def test_rfc_2617_section_3_5_example_parses_and_verifies() -> None:
    creds = Credentials.parse(RFC2617_AUTHORIZATION)
    assert (creds.username, creds.realm, creds.uri) == (
        "Mufasa", "testrealm@host.com", "/dir/index.html")
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", "0a4f113b")
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert creds.algorithm == "MD5"  # the default when absent
    assert verify(creds, method="GET", password="Circle Of Life")
    assert not verify(creds, method="GET", password="Circle of Life")
    assert not verify(creds, method="POST", password="Circle Of Life")
    stored = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert verify(creds, method="GET", stored_ha1=stored)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc_7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    assert compute_response(algorithm=algorithm, **RFC7616) == expected
    challenge = Challenge(
        realm=RFC7616["realm"], nonce=RFC7616["nonce"], algorithm=algorithm,
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    )
    creds = authorize(
        challenge, username="Mufasa", password="Circle of Life", method="GET",
        uri="/dir/index.html", cnonce=RFC7616["cnonce"],
    )
    assert creds.response == expected and creds.nc == "00000001"
    again = Credentials.parse(creds.to_header())
    assert again == creds
    assert verify(again, method="GET", password="Circle of Life")


def test_no_qop_and_sess_and_auth_int_variants_verify() -> None:
    for qop, algorithm in [((), "MD5"), (("auth",), "MD5-sess"), (("auth-int",), "SHA-256"),
                           (("auth",), "SHA-256-sess")]:
        challenge = Challenge(realm="gw", nonce="n1", algorithm=algorithm, qop=qop)
        creds = authorize(challenge, username="agent", password="pw", method="REGISTER",
                          uri="sip:gw.example.com", body=b"v=0\r\n")
        assert creds.qop == (qop[0] if qop else None)
        assert verify(creds, method="REGISTER", password="pw", body=b"v=0\r\n")
        assert not verify(creds, method="REGISTER", password="pw2", body=b"v=0\r\n")
        if qop == ("auth-int",):
            assert not verify(creds, method="REGISTER", password="pw", body=b"v=1\r\n")


def test_challenge_header_round_trip_and_stale() -> None:
    challenge = Challenge(realm='gateway "one"', nonce="abc", algorithm="SHA-256",
                          opaque="o1", stale=True)
    header = challenge.to_header()
    assert header.startswith('Digest realm="gateway \\"one\\"", nonce="abc"')
    assert "stale=true" in header and 'qop="auth"' in header and "algorithm=SHA-256" in header
    assert Challenge.parse(header) == challenge


def test_choose_challenge_prefers_sha_256_as_rfc_8760_asks() -> None:
    md5 = Challenge(realm="r", nonce="n", algorithm="MD5").to_header()
    sha = Challenge(realm="r", nonce="n", algorithm="SHA-256").to_header()
    odd = 'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"'
    assert choose_challenge([md5, odd, sha]).algorithm == "SHA-256"
    assert choose_challenge(["Basic realm=x", md5]).algorithm == "MD5"
    with pytest.raises(RemoteProtocolError):
        choose_challenge([odd, "garbage"])


@pytest.mark.parametrize(
    "value",
    [
        "", "Digest", "Digest username", 'Digest username="a', "Digest username=a,,b=c",
        'Digest username="a" realm="r"',  # missing comma
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"',
        'Digest realm="r", nonce="n", uri="u", response="x"',  # no username
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',  # no nc
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, '
        'nc=1, cnonce="c"',  # nc is not 8 hex digits
        "Digest =x",
    ],
)
def test_malformed_authorization_raises_remote_protocol_error(value: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Credentials.parse(value)


def test_unknown_scheme_asks_for_a_challenge() -> None:
    # RFC 4475 regaut01: answer with a fresh Digest challenge, i.e. 401
    with pytest.raises(RemoteProtocolError) as caught:
        Credentials.parse("NoOneKnowsThisScheme opaque-data=here")
    assert caught.value.status_hint == 401


def test_unsupported_algorithm_or_qop_does_not_verify() -> None:
    creds = Credentials.parse(RFC2617_AUTHORIZATION)
    for changed in (
        Credentials(**{**_fields(creds), "algorithm": "SHA-512-256"}),
        Credentials(**{**_fields(creds), "qop": "auth-conf"}),
    ):
        assert not verify(changed, method="GET", password="Circle Of Life")


def _fields(creds: Credentials) -> dict[str, object]:
    return {name: getattr(creds, name) for name in Credentials.__slots__}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_header_text_parses_or_raises_remote_protocol_error(value: str) -> None:
    for parse in (Credentials.parse, Challenge.parse):
        try:
            parse(value)
        except RemoteProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
            min_size=1, max_size=30),
    st.text(min_size=0, max_size=30),
)
def test_any_username_and_password_round_trip_through_the_headers(user: str, pw: str) -> None:
    challenge = Challenge(realm="gw", nonce="n", algorithm="SHA-256")
    creds = Credentials.parse(authorize(challenge, username=user, password=pw,
                                        method="REGISTER", uri="sip:gw").to_header())
    assert creds.username == user
    assert verify(creds, method="REGISTER", password=pw)


# --- nonces -------------------------------------------------------------------------------

SECRET = b"0123456789abcdef-test-secret"


def test_nonces_are_self_validating_and_go_stale() -> None:
    issuer = NonceIssuer(SECRET, lifetime=300)
    nonce = issuer.issue(now=1000.0)
    assert issuer.check(nonce, now=1000.0) is NonceStatus.VALID
    assert issuer.check(nonce, now=1299.0) is NonceStatus.VALID
    assert issuer.check(nonce, now=1301.0) is NonceStatus.STALE
    assert issuer.check(nonce, now=900.0) is NonceStatus.INVALID  # from the future
    assert NonceIssuer(SECRET).check(nonce, now=1000.0) is NonceStatus.VALID  # another worker
    assert NonceIssuer(b"another-secret-of-16").check(nonce, now=1000.0) is NonceStatus.INVALID
    assert issuer.issue(now=1000.0) != nonce  # random part


@pytest.mark.parametrize("nonce", ["", "x", "!!!!", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "é"])
def test_garbled_nonces_are_invalid(nonce: str) -> None:
    assert NonceIssuer(SECRET).check(nonce, now=0) is NonceStatus.INVALID


def test_tampered_nonce_is_invalid() -> None:
    issuer = NonceIssuer(SECRET)
    nonce = issuer.issue(now=50.0)
    flipped = nonce[:3] + ("A" if nonce[3] != "A" else "B") + nonce[4:]
    assert issuer.check(flipped, now=50.0) is NonceStatus.INVALID


def test_short_secrets_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        NonceIssuer(b"short")


def test_registrar_flow_challenge_answer_stale_and_wrong_password() -> None:
    issuer = NonceIssuer(SECRET, lifetime=60)
    challenge = issuer.challenge("gateway", now=0.0)
    assert challenge.algorithm == "SHA-256" and challenge.qop == ("auth",)
    header = authorize(Challenge.parse(challenge.to_header()), username="agent7",
                       password="s3cret", method="REGISTER", uri="sip:127.0.0.1").to_header()
    creds = Credentials.parse(header)

    def outcome(now: float, password: str = "s3cret", realm: str = "gateway") -> AuthOutcome:
        return check_credentials(creds, issuer=issuer, realm=realm, method="REGISTER",
                                 password=password, now=now)

    assert outcome(10) is AuthOutcome.ACCEPTED
    assert outcome(10, password="guess") is AuthOutcome.REJECTED
    assert outcome(10, realm="elsewhere") is AuthOutcome.REJECTED
    assert outcome(120) is AuthOutcome.STALE  # right answer, old nonce: stale=true
    assert outcome(120, password="guess") is AuthOutcome.REJECTED
    stale = issuer.challenge("gateway", stale=True, now=120.0)
    assert Challenge.parse(stale.to_header()).stale
    foreign = Credentials(**{**_fields(creds), "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093"})
    assert check_credentials(foreign, issuer=issuer, realm="gateway", method="REGISTER",
                             password="s3cret", now=10) is AuthOutcome.REJECTED


def test_nonce_ledger_wants_a_growing_count_with_qop_and_single_use_without() -> None:
    now = [0.0]
    ledger = NonceLedger(300.0, max_entries=3, clock=lambda: now[0])
    assert ledger.use("n1", "00000001") and not ledger.use("n1", "00000001")  # a replay
    assert ledger.use("n1", "00000003") and not ledger.use("n1", "00000002")  # went back
    assert not ledger.use("n1", None)  # dropping qop does not reset it
    assert ledger.use("n2", None) and not ledger.use("n2", None)
    assert not ledger.use("n2", "00000009")
    assert ledger.use("n3", "00000001") and len(ledger) == 3
    now[0] = 301.0  # full: entries older than the lifetime go (their nonces are stale)
    assert ledger.use("n4", "00000001") and len(ledger) == 1
    assert ledger.use("n5", None) and ledger.use("n6", None)
    assert ledger.use("n7", None) and len(ledger) == 3  # all young: the oldest is forgotten


def test_digest_uri_must_name_the_request_uri() -> None:
    from connectors.sip.registrar import same_uri

    assert same_uri("sip:127.0.0.1:5060", "sip:127.0.0.1:5060")
    assert same_uri("sip:127.0.0.1;transport=UDP", "sip:127.0.0.1")  # pyVoIP writes this
    assert same_uri("sip:GW.example.com", "sip:gw.example.com:5060")
    assert not same_uri("sip:127.0.0.1:9", "sip:127.0.0.1:5060")
    assert not same_uri("sip:alice@gw", "sip:gw")
    assert not same_uri("/dir/index.html", "sip:gw")


def test_auth_throttle_limits_sources_and_users_but_spares_known_addresses() -> None:
    from connectors.sip.ratelimit import AuthThrottle

    now = [0.0]
    throttle = AuthThrottle(per_minute=6.0, burst=3, clock=lambda: now[0])
    throttle.succeeded("10.0.0.5", "alice")  # alice's phone, before the attack
    for _ in range(3):
        assert throttle.allowed("192.0.2.1", "alice")
        throttle.failed("192.0.2.1", "alice")
    assert not throttle.allowed("192.0.2.1", "alice")  # the source is limited
    assert not throttle.allowed("192.0.2.1", "bob")  # whatever user it tries
    assert not throttle.allowed("192.0.2.2", "alice")  # and alice from a new address
    assert throttle.allowed("10.0.0.5", "alice")  # but not alice's own phone
    assert throttle.allowed("192.0.2.2", "bob")
    now[0] = 10.0  # 6 a minute: one more attempt after 10 s
    assert throttle.allowed("192.0.2.1", "bob")
    assert throttle.limited == 3
