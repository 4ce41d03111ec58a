"""Which addresses each hop of a delivery may connect to (issue 20, item 7).

A model's call carries `reach` in its args, set when the turn makes the call
(station/turns/calls.py) and kept with the task when it is parked:
- `user-named`: a URL the user's messages name. It may be at any address (the user's own URLs
  stay callable, a service on their loopback included), and so may a redirect within its origin
  (scheme, host and port: a local app's /login); a redirect elsewhere may lead only to a public
  address.
- `public`: a URL that only a tool result named (a fetched page can steer the model): every hop
  must be at a public address.
A host `[tools] allow_hosts` lists may be at any address, on any hop. A task posted to the API
has no `reach`: the user's own, it goes where it says, as it always has.

A hop held to public addresses is checked where it connects (client.py), as Stripe's Smokescreen
checks every connection it makes: an address in the URL is classified before anything is sent; a
name is resolved, every address it resolves to classified (waystation.addresses), and only those
checked are connected to, so a DNS answer that changes between the check and the connection
(rebinding) cannot swap another in.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from waystation.adapters.tools.redirects import port_of, same_origin
from waystation.addresses import PUBLIC, address_kind, literal_address
from waystation.errors import DestinationRefused

REACH = "reach"  # the key in a model's call's args
USER_NAMED = "user-named"
PUBLIC_ONLY = "public"
RULE = (
    "a model's call reaches loopback, link-local and private addresses only at the origin of a URL "
    "the user gave (not another one it was redirected to) or on a host [tools] allow_hosts lists"
)


def public_only(
    reach: object, url: str | httpx.URL, allow_hosts: Sequence[str], called: str | httpx.URL | None = None
) -> bool:
    """Whether a hop to `url` may connect only to public addresses; `called`: the URL the call
    named, when `url` is a redirect from it. `reach`: the call's (None: a task of the user's own,
    which may go anywhere; an unknown value is held to public addresses, never let through)."""
    if reach is None or host_listed(url, allow_hosts):
        return False
    if reach != USER_NAMED:
        return True
    return called is not None and not same_origin(httpx.URL(called), httpx.URL(url))


def refused_literal(url: httpx.URL) -> DestinationRefused | None:
    """The refusal for a URL whose host is an address (127.0.0.2, [::1]) that is not public."""
    address = literal_address(url.host)
    if address is None:
        return None
    kind = address_kind(address)
    return None if kind == PUBLIC else DestinationRefused(url.host, str(address), kind, RULE)


def host_listed(url: str | httpx.URL, hosts: Sequence[str]) -> bool:
    """Whether a URL's destination is on a host list (`[tools] allow_hosts`, `allow_writes`): its
    host, or host:port (the scheme's default port when the URL names none), in any case."""
    if not hosts:
        return False
    parsed = httpx.URL(url)
    host = parsed.host.lower()
    written = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    port = port_of(parsed)
    listed = {h.lower() for h in hosts}
    return bool({host, written, f"{written}:{port}"} & listed)


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, answering only the public addresses a name resolves to: the connector
    connects to what this returns, so nothing else is ever connected to. A name with none is
    refused (DestinationRefused, which aiohttp lets through as it is: it is not an OSError)."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        public = [answer for answer in found if address_kind(answer["host"]) == PUBLIC]
        if found and not public:
            first = found[0]["host"]
            raise DestinationRefused(host, first, address_kind(first), RULE)
        return public

    async def close(self) -> None:
        await self._resolver.close()


async def check_resolved(host: str, port: int) -> None:
    """Through a proxy the proxy connects, not us: refuse a name any of whose addresses is not
    public before the request leaves (the best a client can do there; the proxy's own egress
    policy is what holds at connection time)."""
    if literal_address(host) is not None:
        return  # classified by refused_literal already
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # the proxy may resolve what we cannot: its answer (or error) stands
    for *_, sockaddr in infos:
        kind = address_kind(str(sockaddr[0]))
        if kind != PUBLIC:
            raise DestinationRefused(host, str(sockaddr[0]), kind, RULE)
