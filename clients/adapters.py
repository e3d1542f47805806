"""One adapter per platform, with the same verbs, over that platform's client.

``list_page`` is the verb of the one catalogue pipeline: one page of the account's listings, as the
items a fetch-page message carries, with what the walk needs next (the catalogue's size for numbered
pages, the next cursor for cursor pages).  ``read_quantity`` reads one row's listings back (a
re-check); ``set_quantity`` sends one absolute quantity.  A push works on up to ``push_batch``
listings at once: ``read_quantities`` then ``set_quantities`` (one listing each: the single verbs;
Refurbed reads and writes up to 50 in one call each).  Neither Back Market nor Refurbed has a
compare-and-set: the push pipeline reads first and sends at once after; Shopify has one
(``compare_and_set``): the push reads with ``read_listing`` and its write compares on what that read
found (its ``basis``); a write based on a stale read is refused, and the pipeline reads again.
Paging, quotas, 429s and errors stay the client's business.

Items without a SKU cannot be booked anywhere: they are counted (``skipped``), never sent on.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clients.backmarket import MAX_PAGE_SIZE, BackMarketClient, parse_listing
from clients.errors import ApiError
from clients.refurbed import MAX_BATCH_UPDATE, OfferStockUpdate, RefurbedClient
from clients.refurbed import MAX_PAGE_LIMIT as REFURBED_PAGE_LIMIT
from clients.shopify import DEFAULT_PAGE_LIMIT as SHOPIFY_PAGE_LIMIT
from clients.shopify import MAX_LOCATIONS as SHOPIFY_MAX_LOCATIONS
from clients import shopify_bulk
from clients.shopify import ShopifyClient, VariantStock, bulk_variants_query, parse_variant


@dataclass(frozen=True)
class CataloguePage:
    """One page of an account's listings.

    ``items``: message dicts (``id``, ``sku``, ``quantity``, ``title``, ...); ``total_pages``: the
    walk's page count when the platform says it (numbered pages), or when this page is a cursor
    walk's last; ``next_cursor``: where a cursor walk goes on (None: this was the last page).
    ``read_at``: when the marketplace read these quantities, when it says so (a Shopify bulk
    file: its operation's ``createdAt``); None: the moment the request left.  ``retry_after_s``:
    the page is not ready yet (a bulk operation still running): fetch it again after that long.
    """

    items: list[dict] = field(default_factory=list)
    total_pages: int | None = None
    next_cursor: str | None = None
    count: int | None = None
    skipped: int = 0
    read_at: datetime | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class ListingRead:
    """One listing as a push read it: the quantity the stock rules decide on, and what a compare-and-set
    write of it compares on (``basis``: the platform's own figures behind ``quantity``; None where it has none)."""

    quantity: int
    basis: Any = None


class CatalogueAdapter(abc.ABC):
    """What every platform adapter does for the catalogue pipeline."""

    platform: str = ""

    @abc.abstractmethod
    async def list_page(self, page: int, cursor: str | None = None) -> CataloguePage:
        """Page ``page`` of the catalogue (``cursor``: where a cursor walk's previous page left it)."""

    async def read_quantity(self, listing_ids: list[str]) -> int:
        """What the marketplace lists of a row now: its listings' quantities summed."""
        raise NotImplementedError(f"{self.platform} listings cannot be read one at a time")

    async def read_listing(self, listing_id: str) -> ListingRead:
        """One listing read for a push: its quantity, and the basis its compare-and-set write compares on."""
        return ListingRead(await self.read_quantity([listing_id]))

    #: Whether ``set_quantity`` honours ``expected`` (the marketplace refuses a stale belief, nothing written).
    compare_and_set: bool = False

    async def set_quantity(self, listing_id: str, quantity: int, expected: int | None = None, *,
                           reference: str = "", basis: Any = None) -> bool:
        """Set one listing's quantity (absolute); with ``compare_and_set``, only if it still is ``expected``.

        ``reference``: the stocksync record the change comes from (where the marketplace keeps one);
        ``basis``: what :meth:`read_listing` read (the write compares on it instead of reading again).
        Returns False when the marketplace refused a stale ``expected`` (read again, decide again).
        """
        raise NotImplementedError(f"{self.platform} listings cannot be pushed")

    #: How many listings one push reads and writes together (a platform with batch calls says more).
    push_batch: int = 1

    async def read_quantities(self, listing_ids: list[str]) -> dict[str, int]:
        """What the marketplace lists of each listing now; a listing it does not know is left out."""
        return {listing: await self.read_quantity([listing]) for listing in listing_ids}

    async def set_quantities(self, quantities: list[tuple[str, int]]) -> dict[str, ApiError]:
        """Set each listing's quantity (absolute); the lines that failed on their own, with their error.

        Raises what the call raises when nothing may have been written (or, one at a time, the first failure).
        """
        for listing, quantity in quantities:
            await self.set_quantity(listing, quantity)
        return {}


def _with_sku(items: list[dict]) -> tuple[list[dict], int]:
    kept = [item for item in items if item["sku"]]
    return kept, len(items) - len(kept)


def _listed(variants: list[VariantStock]) -> list[dict]:
    """Shopify variants as listings: tracked ones stocked at a counted location, summed, below zero as 0."""
    listed = []
    for variant in variants:
        stocked = [level for level in variant.levels if level is not None]
        if variant.tracked and stocked:
            listed.append({"id": variant.inventory_item_id, "sku": variant.sku,
                           "quantity": sum(max(0, level) for level in stocked), "title": None})
    return listed


def _bulk_levels(line: dict) -> int:
    """How many locations a bulk file's line names (``at0``, ``at1``...: the query it was made with)."""
    item = line.get("inventoryItem")
    return sum(1 for key in item if key.startswith("at") and key[2:].isdigit()) if isinstance(item, dict) else 0


class BackMarketAdapter(CatalogueAdapter):
    """A Back Market account's listings: numbered pages; page 1's ``count`` says how many."""

    platform = "backmarket"

    def __init__(self, client: BackMarketClient, *, page_size: int = MAX_PAGE_SIZE) -> None:
        self.client = client
        self.page_size = page_size

    async def list_page(self, page: int, cursor: str | None = None) -> CataloguePage:
        result = await self.client.get_listings_page(page, self.page_size)
        items, skipped = _with_sku([listing.to_message() for listing in result.results])
        return CataloguePage(items, max(1, math.ceil(result.count / self.page_size)), count=result.count,
                             skipped=skipped)

    async def read_quantity(self, listing_ids: list[str]) -> int:
        return sum([parse_listing(await self.client.get_listing(listing)).quantity for listing in listing_ids])

    async def set_quantity(self, listing_id: str, quantity: int, expected: int | None = None, *,
                           reference: str = "", basis: Any = None) -> bool:
        await self.client.update_listing(listing_id, quantity=quantity)
        return True


class RefurbedAdapter(CatalogueAdapter):
    """A Refurbed store's offers (``stock`` is market-independent): ``ListOffers`` by ascending id."""

    platform = "refurbed"

    def __init__(self, client: RefurbedClient, *, limit: int = REFURBED_PAGE_LIMIT) -> None:
        self.client = client
        self.limit = limit

    async def list_page(self, page: int, cursor: str | None = None) -> CataloguePage:
        result = await self.client.list_offers(starting_after=cursor, limit=self.limit)
        items, skipped = _with_sku([{"id": offer.id, "sku": offer.sku, "quantity": offer.stock,
                                     "title": offer.instance_name} for offer in result.offers])
        last = not result.has_more or not result.offers
        return CataloguePage(items, page if last else None, None if last else result.offers[-1].id,
                             skipped=skipped)

    async def read_quantity(self, listing_ids: list[str]) -> int:
        return sum([(await self.client.get_offer(offer)).stock for offer in listing_ids])

    async def set_quantity(self, listing_id: str, quantity: int, expected: int | None = None, *,
                           reference: str = "", basis: Any = None) -> bool:
        await self.client.update_offer(listing_id, stock=quantity)
        return True

    push_batch = MAX_BATCH_UPDATE

    async def read_quantities(self, listing_ids: list[str]) -> dict[str, int]:
        if len(listing_ids) == 1:  # a push of one row reads as a re-check does
            return await super().read_quantities(listing_ids)
        page = await self.client.list_offers(ids=listing_ids, limit=max(len(listing_ids), 1))
        return {offer.id: offer.stock for offer in page.offers}

    async def set_quantities(self, quantities: list[tuple[str, int]]) -> dict[str, ApiError]:
        if len(quantities) == 1:
            return await super().set_quantities(quantities)
        results = await self.client.batch_update_offers(
            [OfferStockUpdate(quantity, offer_id=listing) for listing, quantity in quantities])
        return {listing: result.error for (listing, _), result in zip(quantities, results) if result.error is not None}


#: Shopify's ``referenceDocumentUri`` of a push that names no record of its own.
PUSH_REFERENCE = "gid://stocksync/StockPush/0"


@dataclass(frozen=True)
class ShopifyLevels:
    """What a push's read found of one inventory item: the locations counted and their levels as Shopify
    holds them (an oversold one below 0, None where the item is not stocked), in the same order."""

    inventory_item: str
    locations: tuple[str, ...]
    levels: tuple[int | None, ...]

    @property
    def shown(self) -> int:
        """The quantity a read shows: the stocked levels summed, each at least 0."""
        return sum(max(0, level) for level in self.levels if level is not None)


class ShopifyAdapter(CatalogueAdapter):
    """A Shopify shop's ``available`` inventory per variant (an inventory item is a listing), on the GraphQL API.

    Locations: ``location_ids`` (as the account's options give them; the first is where pushes go)
    or, when None, every active location of the shop, as ``shop_locations`` gives them (a process's
    short-lived copy: ``runtime.clients``) or else as the shop lists them now.  A row's quantity is
    the sum over them; a level Shopify does not track, or an item stocked at none of them, is left
    out; below zero (oversold) reads as 0.  A push is one read (:meth:`read_listing`) and one write:
    ``set_quantity`` with the read's ``basis`` sets the first location so that the sum becomes the
    target, with Shopify's compare-and-set on what that location held at the read (the other
    locations are not written, so an order there stays counted); a stale belief is refused
    (``set_quantity`` False).
    """

    platform = "shopify"
    compare_and_set = True

    #: Query points one push costs at one location, as Shopify (and the sandbox) charge them: the
    #: level read (3: the item, its level, their quantities) and the compare-and-set write (10).
    push_points = 13

    def __init__(self, client: ShopifyClient, *, location_ids: list[str] | None = None,
                 limit: int = SHOPIFY_PAGE_LIMIT,
                 shop_locations: Callable[[], Awaitable[list[str]]] | None = None, bulk_poll_s: float = 2.0) -> None:
        self.client = client
        self.location_ids = location_ids
        self.limit = limit
        self.shop_locations = shop_locations or client.location_ids
        self.bulk_poll_s = bulk_poll_s

    async def locations(self) -> list[str]:
        """The locations counted (the account's, or the shop's active ones, up to the query's limit)."""
        if self.location_ids is None:
            self.location_ids = (await self.shop_locations())[:SHOPIFY_MAX_LOCATIONS]
        if not self.location_ids:
            raise ValueError("the shop has no active location to count stock at")
        return self.location_ids

    async def list_page(self, page: int, cursor: str | None = None) -> CataloguePage:
        if cursor is not None and cursor.startswith("bulk:"):
            return await self._bulk_page(page, cursor)
        result = await self.client.variants_page(await self.locations(), cursor, limit=self.limit)
        items, skipped = _with_sku(_listed(result.variants))
        return CataloguePage(items, page if result.next_cursor is None else None, result.next_cursor, skipped=skipped)

    async def _bulk_page(self, page: int, cursor: str) -> CataloguePage:
        """A bulk walk's page: page 1 starts the operation; the others poll it, then read ``limit`` lines of its file.

        Every page asks Shopify for the operation again (1 point): a fresh file link, and a resumed
        walk finds a FAILED or EXPIRED one.  Its lines are a snapshot of ``createdAt``.
        """
        if cursor == shopify_bulk.BULK_START:
            started = await shopify_bulk.start(self.client, bulk_variants_query(await self.locations()))
            return CataloguePage(next_cursor=shopify_bulk.cursor(started.number, 0))
        number, offset = shopify_bulk.parse_cursor(cursor)
        operation = await shopify_bulk.operation(self.client, number)
        if operation.status not in shopify_bulk.FINISHED:
            return CataloguePage(next_cursor=cursor, retry_after_s=self.bulk_poll_s)
        if operation.status != "COMPLETED" or not operation.url:
            ended = f"{operation.status} ({operation.error_code})" if operation.error_code else operation.status
            raise ApiError(f"bulk operation {number} ended {ended}: the catalogue was not exported", api="shopify",
                           endpoint="bulkOperation", status=200, code=operation.error_code or operation.status,
                           permanent=True)
        read = await shopify_bulk.read_lines(self.client, operation.url, offset, self.limit)
        variants = [parse_variant(line, _bulk_levels(line), f"bulk operation {number}'s line")
                    for line in read.lines if "__parentId" not in line]
        items, skipped = _with_sku(_listed(variants))
        following = None if read.next_offset is None else shopify_bulk.cursor(number, read.next_offset)
        return CataloguePage(items, page if following is None else None, following, skipped=skipped,
                             read_at=datetime.fromisoformat(operation.created_at.replace("Z", "+00:00")))

    async def read_quantity(self, listing_ids: list[str]) -> int:
        return sum([(await self.read_listing(listing)).quantity for listing in listing_ids])

    async def read_listing(self, listing_id: str) -> ListingRead:
        locations = await self.locations()
        _, levels = await self.client.levels(listing_id, locations)
        basis = ShopifyLevels(listing_id, tuple(locations), levels)
        return ListingRead(basis.shown, basis)

    async def set_quantity(self, listing_id: str, quantity: int, expected: int | None = None, *,
                           reference: str = "", basis: Any = None) -> bool:
        if basis is None:  # no read to compare on: read now
            basis = (await self.read_listing(listing_id)).basis
        if not isinstance(basis, ShopifyLevels) or basis.inventory_item != listing_id:
            raise ValueError(f"a push of inventory item {listing_id} needs the levels read of that item")
        # The compare is on the first location's level as Shopify holds it (an oversold one below 0);
        # the belief on what the read shows (each level at least 0); the change lands on the first location.
        held = basis.shown
        if expected is not None and held != expected:
            return False
        first = max(0, basis.levels[0] or 0)
        return await self.client.set_available(listing_id, basis.locations[0], max(0, first + quantity - held),
                                               change_from=basis.levels[0], reference=reference or PUSH_REFERENCE)


__all__ = ["BackMarketAdapter", "CatalogueAdapter", "CataloguePage", "ListingRead", "RefurbedAdapter", "ShopifyAdapter",
           "ShopifyLevels"]
