"""Which addresses are the public internet's, as an egress proxy tells them apart before it
connects: Stripe's Smokescreen resolves each destination, classifies every address it would
connect to, and connects only to an address it has checked, so a page, a redirect or a DNS
answer cannot steer a request to the host's own services, its LAN or a cloud metadata address.

Pure: an address in, its kind out. Who may reach which kind is the caller's policy (a model's
calls: adapters/tools/reach.py; fleet work: `[fleet] work_hosts`).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

PUBLIC = "public"
# RFC 6052: IPv4 addresses as an IPv6-only network's DNS64 writes them; the embedded one decides.
_NAT64 = IPv6Network("64:ff9b::/96")


def address_kind(address: str | IPv4Address | IPv6Address) -> str:
    """`public`, or what else the address is: `unspecified`, `loopback`, `link-local`,
    `multicast`, `private`, `reserved` or `special-purpose` (not global, e.g. 100.64.0.0/10, the
    carrier-grade NAT space that Tailscale uses). An IPv6 address that carries an IPv4 one
    (mapped, 6to4, Teredo, NAT64) is also what that one is: ::ffff:127.0.0.1 is loopback.
    A string may carry an IPv6 zone (`fe80::1%eth0`); one that is no address raises ValueError."""
    ip = ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_kind(ip.ipv4_mapped)
        if ip in _NAT64:
            return address_kind(IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and address_kind(embedded) != PUBLIC:
            return address_kind(embedded)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:  # before private: 169.254.0.0/16 (cloud metadata) is both
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "special-purpose"
    return PUBLIC


def is_public(address: str | IPv4Address | IPv6Address) -> bool:
    """Whether a connection to `address` leaves for the public internet (see address_kind)."""
    return address_kind(address) == PUBLIC


def literal_address(host: str) -> IPv4Address | IPv6Address | None:
    """The address a URL's host spells out (`127.0.0.2`, `[::1]`), None for a name to resolve."""
    try:
        return ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
