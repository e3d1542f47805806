"""What each marketplace platform can do: the one table every floor asks instead of keeping lists of names.

An *account* is one place the seller sells (a Back Market account, a Refurbed store, a Shopify shop);
its platform decides how its listings are walked, whether one listing can be read back, whether a
local change can be pushed, and whether its orders can be polled.  A capability is a column here,
never a list of account codes somewhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

#: The Shopify Admin API version stocksync speaks (GraphQL ``/admin/api/<version>/graphql.json``): the one
#: place it is pinned; the adapter and the sandbox both read it.
SHOPIFY_API_VERSION = "2026-01"

#: How a platform's catalogue is walked: numbered pages (page 1 says how many: fan out the rest),
#: or a cursor chain (each page names the next).
NUMBERED, CURSOR = "numbered", "cursor"


class UnknownPlatform(ValueError):
    """A platform name no adapter exists for (permanent)."""

    permanent = True


class NotSupported(ValueError):
    """An account was asked for something its platform cannot do (permanent: retrying cannot help)."""

    permanent = True


@dataclass(frozen=True)
class Platform:
    """One platform's capabilities and the facts about its API that the rules depend on."""

    name: str
    title: str
    #: NUMBERED or CURSOR; None: no API to walk (a manual account).
    paging: str | None
    #: One listing can be read back (a single-listing refresh, a push's read-before-write, a re-check).
    read_one: bool
    #: A local change (top-up, manual change) can be sent as an absolute quantity.
    push: bool
    #: Orders can be listed (polled by watermark); the webhooks are a faster path, not the only one.
    poll_orders: bool
    #: Cancelling an order gives the units back on the marketplace by itself (the default; an account
    #: may say otherwise in its options).
    restocks_on_cancel: bool
    #: Hosts (or host suffixes starting with a dot) a credential of this platform may be sent to.
    hosts: tuple[str, ...]
    #: The settings variable of the platform's default credential (the main account's).
    default_credential: str
    #: A push is a compare-and-set (the marketplace refuses it when the stock changed since the read),
    #: so its read and its write need not go milliseconds apart.
    compare_and_set: bool = False
    #: The catalogue can also be exported in one background operation and read from its file
    #: (Shopify's bulk query), chosen for large catalogues (``SHOPIFY_BULK_MIN_VARIANTS``).
    bulk_catalogue: bool = False

    def allows_host(self, host: str) -> bool:
        """Whether ``host`` is one of the platform's own (exact, or under a listed ``.suffix``)."""
        host = host.lower().rstrip(".")
        return any(host == allowed or (allowed.startswith(".") and host.endswith(allowed))
                   for allowed in self.hosts)

    @property
    def takes_local_changes(self) -> bool:
        """Whether a top-up or an adjustment may be booked: pushed there, or an account with no API to erase it."""
        return self.push or self.paging is None

    def abilities(self) -> list[str]:
        """What the platform can do, in words (the CLI's and the console's account lists)."""
        found = [f"sync ({self.paging} pages)"] if self.paging else []
        return found + [words for name, words in (("read_one", "read one"), ("push", "push"),
                                                  ("poll_orders", "poll orders")) if getattr(self, name)]

    def require(self, capability: str, account: str) -> None:
        """Raise :class:`NotSupported` naming the account unless the platform has ``capability``."""
        if not getattr(self, capability):
            raise NotSupported(f"account {account!r} is on {self.title}, which stocksync cannot "
                               f"{_VERBS.get(capability, capability)}")


#: The capabilities a job or a check may ask a platform for (columns of :class:`Platform`).
CAPABILITIES = ("paging", "read_one", "push", "poll_orders")

_VERBS = {"read_one": "read one listing of", "push": "push a stock change to",
          "poll_orders": "poll the orders of"}

#: The platforms.  A capability turns on here when its adapter verb exists (``runtime.adapters``).
PLATFORMS: dict[str, Platform] = {
    platform.name: platform for platform in (
        Platform("backmarket", "Back Market", NUMBERED, read_one=True, push=True, poll_orders=True,
                 restocks_on_cancel=True,
                 hosts=(".backmarket.fr", ".backmarket.com", ".backmarket.de", ".backmarket.es", ".backmarket.it",
                        ".backmarket.co.uk", ".backmarket.be", ".backmarket.nl", ".backmarket.at", ".backmarket.pt",
                        ".backmarket.se", ".backmarket.fi", ".backmarket.gr", ".backmarket.ie", ".backmarket.sk",
                        ".backmarket.co.jp", ".backmarket.com.au"),
                 default_credential="BACKMARKET_TOKEN"),
        Platform("refurbed", "Refurbed", CURSOR, read_one=True, push=True, poll_orders=True,
                 restocks_on_cancel=True, hosts=("api.refurbed.com",), default_credential="REFURBED_TOKEN"),
        Platform("shopify", "Shopify", CURSOR, read_one=True, push=True, poll_orders=True,
                 restocks_on_cancel=True, hosts=(".myshopify.com",), default_credential="SHOPIFY_TOKEN",
                 compare_and_set=True, bulk_catalogue=True),
        # Stock counted here only (a counter, a channel listed by hand): nothing to walk, read or push.
        Platform("manual", "a manual account", None, read_one=False, push=False, poll_orders=False,
                 restocks_on_cancel=False, hosts=(), default_credential=""),
    )
}


def platform(name: str) -> Platform:
    """The platform called ``name``; :class:`UnknownPlatform` naming the known ones otherwise."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise UnknownPlatform(f"unknown platform {name!r}: expected one of {', '.join(PLATFORMS)}") from None


__all__ = ["CAPABILITIES", "CURSOR", "NUMBERED", "NotSupported", "PLATFORMS", "Platform", "SHOPIFY_API_VERSION",
           "UnknownPlatform", "platform"]
