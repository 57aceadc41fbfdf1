"""The relay header nodes sign with the cluster secret (navi_actor/front/relayauth.py): pure."""

from __future__ import annotations

import pytest

from navi_actor.front import relayauth
from navi_actor.tokens import LOCAL, Principal

SECRET = b"0123456789abcdef-cluster"
SID = "a" * 32
ALICE = Principal("alice", "user")


def test_a_signed_header_gives_the_node_and_the_principal():
    value = relayauth.sign(SECRET, "n1", SID, ALICE, 1000.0)
    assert relayauth.verify(SECRET, value, SID, 1001.0) == ("n1", ALICE)
    assert relayauth.verify(SECRET, relayauth.sign(SECRET, "n1", SID, LOCAL, 1000.0), SID, 1000.0) == ("n1", LOCAL)


@pytest.mark.parametrize("why", ["other secret", "other session", "expired", "tampered", "garbage"])
def test_anything_else_is_refused(why):
    value = relayauth.sign(SECRET, "n1", SID, ALICE, 1000.0)
    secret, sid, now = SECRET, SID, 1001.0
    if why == "other secret":
        secret = b"another-secret-of-16-bytes"
    elif why == "other session":
        sid = "b" * 32
    elif why == "expired":
        now = 1000.0 + relayauth.VALID_FOR + 1
    elif why == "tampered":
        forged = relayauth.sign(SECRET, "n1", SID, Principal("alice", "admin"), 1000.0).split(".")[0]
        value = forged + "." + value.split(".")[1]
    else:
        value = "not-a-header"
    assert relayauth.verify(secret, value, sid, now) is None


def test_a_short_secret_is_refused_saying_how_to_make_one():
    with pytest.raises(relayauth.SecretError, match="at least 16"):
        relayauth.parse_secret(b"short\n", "/etc/secret")
    assert relayauth.parse_secret(b"  " + SECRET + b"\n", "/x") == SECRET
