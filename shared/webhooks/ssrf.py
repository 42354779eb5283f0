"""Where a webhook may go: URL checks at submit time, and the one resolved address a delivery connects to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.config.errors import WebhookUrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services: refused even when an allow-listed range contains them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64 and IPv4-compatible forms).
_EMBEDS_V4 = (
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("::/96"),
)


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: scheme, host name as written, port, path, and the literal IP if the host is one."""

    scheme: str
    host: str
    port: int
    path: str
    literal_ip: IPAddress | None


def parse_allow_cidrs(text: str) -> tuple[Network, ...]:
    """The allow-list setting (comma-separated CIDRs) as networks."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def literal_ip(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling a resolver accepts (127.1, 2130706433, 0x7f000001,
    0177.0.0.1, ::ffff:127.0.0.1), or None for a host name."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:  # inet_aton takes the legacy forms: fewer parts, octal, hex, one big number
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _EMBEDS_V4) and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allow: Iterable[Network] = ()) -> str | None:
    """Why a webhook must not connect to `ip` (None if it may): loopback, private, link-local, CGNAT, multicast,
    unspecified, reserved, metadata, or an IPv4 one of those wrapped in IPv6; the allow-list overrides all but
    metadata."""
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    if any(ip.version == net.version and ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            why = refusal(inner, allow)
            return f"{ip} wraps {inner}: {why}" if why else None
    checks = (
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable (e.g. CGNAT 100.64.0.0/10)"),
    )
    for hit, what in checks:
        if hit:
            return f"{ip} is {what}"
    return None


def check_url(url: str, *, allow: Iterable[Network] = (), max_length: int = 2048) -> Target:
    """Refuse (WebhookUrlRefused) a URL that is not http(s), carries credentials, names localhost, or whose
    literal IP is not allowed; host names are resolved and checked again at send time."""
    if len(url) > max_length:
        raise WebhookUrlRefused(
            f"the webhook URL is longer than {max_length} characters (INFERQ_WEBHOOK_MAX_URL_LENGTH)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"the webhook URL cannot be read: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlRefused(f"webhook URLs must be http or https, not {scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlRefused("webhook URLs must not carry credentials (user@host)")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise WebhookUrlRefused("the webhook URL has no host")
    ip = literal_ip(host)
    if ip is None and (host == "localhost" or host.endswith(".localhost")):
        ip = ipaddress.ip_address("127.0.0.1")
    if ip is not None:
        why = refusal(ip, allow)
        if why:
            raise WebhookUrlRefused(f"webhooks may not reach {host}: {why}", url=url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path, ip)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the resolver gives for host (the one place a delivery looks a name up)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def pinned_address(target: Target, *, allow: Iterable[Network] = ()) -> IPAddress:
    """The address to connect to: the literal IP, or the resolved one; refused (WebhookUrlRefused) if any
    resolved address is not allowed, so a name that later resolves inside (DNS rebinding) is caught."""
    allow = tuple(allow)
    addresses = [target.literal_ip] if target.literal_ip is not None else resolve(target.host, target.port)
    if not addresses:
        raise WebhookUrlRefused(f"{target.host} resolves to no address")
    for ip in addresses:
        why = refusal(ip, allow)
        if why:
            raise WebhookUrlRefused(f"webhooks may not reach {target.host}: {why}")
    return addresses[0]
