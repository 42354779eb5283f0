"""Webhooks never reach where they must not: every spelling of an internal address is refused, at submit time and
at send time, a canary on loopback receives nothing, and a name that resolves inside at send time is refused."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from pathlib import Path

import pytest

from shared.config.errors import WebhookUrlRefused
from shared.webhooks.ssrf import check_url, parse_allow_cidrs, pinned_address
from tests.factories import make_settings
from tests.webhook_receiver import running_receiver
from worker import webhooks_dispatch
from worker.webhooks_dispatch import Claim, send_one

# {port} is the canary's port: if a loopback spelling slipped through, the canary would count the connection.
REFUSED = [
    "http://127.0.0.1:{port}/",
    "http://127.1:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://017700000001:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://[::1]:{port}/",
    "http://[0:0:0:0:0:0:0:1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://[2002:7f00:1::]:{port}/",
    "http://localhost:{port}/",
    "http://localhost.:{port}/",
    "http://LOCALHOST:{port}/",
    "http://api.localhost:{port}/",
    "http://0:{port}/",
    "http://0.0.0.0:{port}/",
    "http://[::]:{port}/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://100.100.100.200/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.1.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://198.18.0.1/",
    "http://user:pw@example.com/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/",
    "http:///nohost",
]


@pytest.fixture
def no_outside_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any connection the sender opens to a non-loopback address is recorded and blocked (never sent)."""
    attempted: list[str] = []
    real = webhooks_dispatch.open_socket

    def guarded(ip: str, port: int, timeout: float) -> socket.socket:
        if not ipaddress.ip_address(ip).is_loopback:
            attempted.append(ip)
            raise ConnectionRefusedError("test guard: no traffic leaves this machine")
        return real(ip, port, timeout)

    monkeypatch.setattr(webhooks_dispatch, "open_socket", guarded)
    return attempted


def _claim(url: str) -> Claim:
    return Claim(uuid.uuid4(), 1, "msg_test", url, "{}", ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",), None)


def test_every_spelling_is_refused_at_submit_and_at_send(tmp_path: Path, no_outside_connections: list[str]) -> None:
    """Each internal spelling is refused by the URL check and by the sender; the loopback canary sees nothing."""
    settings = make_settings(tmp_path, webhook_timeout_s=1.0)
    refused_submit = refused_send = 0
    with running_receiver() as canary:
        urls = [u.format(port=canary.port) for u in REFUSED]
        for url in urls:
            with pytest.raises(WebhookUrlRefused):
                check_url(url)
            refused_submit += 1
            outcome = send_one(_claim(url), settings)
            assert outcome.refused and outcome.status_code is None, url
            refused_send += 1
        assert canary.connections == 0
    assert no_outside_connections == []
    print(f"SSRF cases refused: {refused_submit}/{len(urls)} at submit, {refused_send}/{len(urls)} at send")


def test_dns_rebinding_is_refused_at_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_outside_connections: list[str]
) -> None:
    """A public-looking name that resolves to loopback when the delivery is sent is refused; nothing connects."""
    settings = make_settings(tmp_path, webhook_timeout_s=1.0)
    with running_receiver() as canary:
        url = f"http://rebind.example.test:{canary.port}/hook"
        check_url(url)  # a name: accepted at submit time
        answers = iter([["93.184.216.34"], ["127.0.0.1"]])
        monkeypatch.setattr(
            "shared.webhooks.ssrf.resolve", lambda host, port: [ipaddress.ip_address(a) for a in next(answers)]
        )
        first = pinned_address(check_url(url))
        assert str(first) == "93.184.216.34"
        outcome = send_one(_claim(url), settings)
        assert outcome.refused and "loopback" in (outcome.error or "")
        assert canary.connections == 0
    assert no_outside_connections == []


def test_a_name_with_one_internal_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If any resolved address is internal the name is refused (no picking the good one)."""
    monkeypatch.setattr(
        "shared.webhooks.ssrf.resolve",
        lambda host, port: [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")],
    )
    with pytest.raises(WebhookUrlRefused):
        pinned_address(check_url("https://mixed.example.test/"))


def test_allow_list_opens_chosen_ranges_but_never_metadata() -> None:
    """INFERQ_WEBHOOK_ALLOW_CIDRS admits its ranges; cloud metadata addresses stay refused."""
    allow = parse_allow_cidrs("127.0.0.0/8, 169.254.0.0/16")
    assert check_url("http://127.0.0.1:9/x", allow=allow).literal_ip == ipaddress.ip_address("127.0.0.1")
    with pytest.raises(WebhookUrlRefused):
        check_url("http://169.254.169.254/", allow=allow)
    with pytest.raises(WebhookUrlRefused):
        check_url("http://10.0.0.1/", allow=allow)


def test_public_urls_pass_and_keep_host_port_path() -> None:
    """A public https URL passes and is split into the parts the sender uses."""
    t = check_url("https://hooks.example.com:8443/in?x=1")
    assert (t.scheme, t.host, t.port, t.path, t.literal_ip) == ("https", "hooks.example.com", 8443, "/in?x=1", None)
    assert check_url("http://8.8.8.8/").port == 80


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    """A 302 is a failed attempt; the sender does not go where it points."""
    settings = make_settings(tmp_path, webhook_allow_cidrs="127.0.0.0/8", webhook_timeout_s=2.0)
    with running_receiver(lambda n: 302) as rec:
        outcome = send_one(_claim(rec.url), settings)
        assert outcome.status_code == 302 and not outcome.ok
        assert len(rec.requests) == 1
