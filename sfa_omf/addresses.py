"""Which IP addresses are public: what a webhook a user sets may reach (calendar/outbox.py checks it when set,
notify/channels.py when sending)."""

from __future__ import annotations

import ipaddress

#: NAT64's well-known prefix (RFC 6052): 64:ff9b::a.b.c.d reaches the IPv4 address a.b.c.d through a translator.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when the address is a public unicast one: not private, loopback, link-local, multicast, reserved or
    unspecified, nor an IPv6 form (IPv4-mapped, NAT64, 6to4) of such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 address that carries an IPv4 one reaches that one: judge the IPv4 address.
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in NAT64_PREFIX:
            return is_public_address(ipaddress.IPv4Address(address.packed[-4:]))
        if address.sixtofour is not None:
            return is_public_address(address.sixtofour)
        if address.teredo is not None:  # a tunnel whose far end we cannot judge
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)  # fec0::/10: is_global says yes
    )
