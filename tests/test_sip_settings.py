"""SIP settings from the environment: the forms the README documents, and clear errors."""

from __future__ import annotations

import ipaddress
import re

import pytest

from signaling.settings import ServerSettings


def test_allow_list_takes_comma_separated_cidrs_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_SIP_ALLOW", "10.0.0.0/8, 192.168.1.0/24")
    assert ServerSettings().sip_networks() == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("192.168.1.0/24"),
    )
    monkeypatch.setenv("PARLEY_SIP_ALLOW", '["::1/128"]')
    assert ServerSettings().sip_networks() == (ipaddress.IPv6Network("::1/128"),)
    monkeypatch.setenv("PARLEY_SIP_ALLOW", "10.0.0.0/33")
    with pytest.raises(ValueError, match=re.escape("10.0.0.0/33")):
        ServerSettings().sip_networks()


def test_listen_users_ports_and_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_SIP_LISTEN", "[::1]:5070")
    monkeypatch.setenv("PARLEY_SIP_USERS", "alice:s3cret,bob:pa:ss")
    monkeypatch.setenv("PARLEY_RTP_PORTS", "20000-20100")
    monkeypatch.setenv("PARLEY_SIP_ECHO_CANCEL", "false")
    settings = ServerSettings()
    assert settings.sip_endpoint() == ("::1", 5070)
    assert settings.sip_user_passwords() == {"alice": "s3cret", "bob": "pa:ss"}
    assert "s3cret" not in repr(settings)  # a secret never shows in logs or errors
    assert settings.rtp_port_range() == (20000, 20100)
    assert settings.sip_echo_cancel is False
    monkeypatch.setenv("PARLEY_SIP_LISTEN", "off")
    assert ServerSettings().sip_endpoint() is None
    for bad, field in [("5060", "SIP_LISTEN"), ("host:99999", "SIP_LISTEN")]:
        monkeypatch.setenv("PARLEY_SIP_LISTEN", bad)
        with pytest.raises(ValueError, match=field):
            ServerSettings().sip_endpoint()
    monkeypatch.setenv("PARLEY_RTP_PORTS", "100-200")
    with pytest.raises(ValueError, match="1024-65535"):
        ServerSettings().rtp_port_range()
    monkeypatch.setenv("PARLEY_SIP_USERS", "nopassword")
    with pytest.raises(ValueError, match="user:password"):
        ServerSettings().sip_user_passwords()
