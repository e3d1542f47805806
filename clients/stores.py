"""Store platform adapters behind one interface: read a store's stock in bulk, as (SKU, quantity) items.

Every adapter walks its platform's bulk read with the platform's client (paging, quotas, 429s and
errors are the client's business) and yields :class:`StoreBatch` es: the items of one page and the
time that page was fetched, so a page is applied as a snapshot *as of that time*.

- :class:`BackMarketStoreAdapter`: ``GET /ws/listings`` pages (:class:`clients.backmarket.BackMarketClient`).
- :class:`RefurbedStoreAdapter`: ``OfferService/ListOffers`` while ``has_more``
  (:class:`clients.refurbed.RefurbedClient`).
- :class:`ShopifyStoreAdapter`: variants (SKU → inventory item) then ``inventory_levels.json`` of
  every location, summed per item (:class:`clients.shopify.ShopifyClient`).

Items without a SKU are yielded too (``sku == ""``): the sync counts them as skipped.
"""
from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from clients.backmarket import MAX_PAGE_SIZE, BackMarketClient
from clients.refurbed import MAX_PAGE_LIMIT as REFURBED_PAGE_LIMIT
from clients.refurbed import RefurbedClient
from clients.shopify import MAX_PAGE_LIMIT as SHOPIFY_PAGE_LIMIT
from clients.shopify import ShopifyClient


@dataclass(frozen=True)
class StoreItem:
    """One stock item of a store: the seller's SKU (may be empty), its quantity, the store's id for it."""

    sku: str
    quantity: int
    external_id: str
    title: str | None = None


@dataclass(frozen=True)
class StoreBatch:
    """The items of one page, and when that page was fetched (UTC)."""

    fetched_at: datetime
    items: list[StoreItem] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class StoreAdapter(abc.ABC):
    """What every platform adapter does: read the whole store's stock, a page at a time."""

    #: The platform's name (``store_integrations.platform``).
    platform: str = ""

    @abc.abstractmethod
    def batches(self) -> AsyncIterator[StoreBatch]:
        """Every page of the store's stock, in order, with its fetch time."""

    async def items(self) -> AsyncIterator[tuple[str, int]]:
        """Every ``(sku, quantity)`` of the store (the fetch times left out)."""
        async for batch in self.batches():
            for item in batch.items:
                yield item.sku, item.quantity


class BackMarketStoreAdapter(StoreAdapter):
    """A Back Market account's listings (``quantity`` is one number for every country)."""

    platform = "backmarket"

    def __init__(self, client: BackMarketClient, *, page_size: int = MAX_PAGE_SIZE) -> None:
        self.client = client
        self.page_size = page_size

    async def batches(self) -> AsyncIterator[StoreBatch]:
        """Page 1, then every page its ``count`` says there is (``ceil(count / page_size)`` calls)."""
        page, pages = 1, 1
        while page <= pages:
            fetched_at = _now()  # the snapshot is as of when the request left, not when it came back
            result = await self.client.get_listings_page(page, self.page_size)
            if page == 1:
                pages = max(1, math.ceil(result.count / self.page_size))
            yield StoreBatch(fetched_at, [StoreItem(listing.sku, listing.quantity, listing.id, listing.title)
                                          for listing in result.results])
            page += 1


class RefurbedStoreAdapter(StoreAdapter):
    """A Refurbed merchant's offers (``stock`` is market-independent)."""

    platform = "refurbed"

    def __init__(self, client: RefurbedClient, *, limit: int = REFURBED_PAGE_LIMIT) -> None:
        self.client = client
        self.limit = limit

    async def batches(self) -> AsyncIterator[StoreBatch]:
        """``ListOffers`` pages by ascending id while ``has_more``."""
        cursor = None
        while True:
            fetched_at = _now()
            page = await self.client.list_offers(starting_after=cursor, limit=self.limit)
            yield StoreBatch(fetched_at, [StoreItem(offer.sku, offer.stock, offer.id, offer.instance_name)
                                          for offer in page.offers])
            if not page.has_more or not page.offers:
                return
            cursor = page.offers[-1].id


class ShopifyStoreAdapter(StoreAdapter):
    """A Shopify shop's ``available`` inventory, summed over its locations (or the ones given).

    Inventory levels know inventory items, not SKUs: the variants are read first to map one to the
    other.  A level Shopify does not track (``available`` null) is left out; an item tracked
    nowhere is not an item.  ``available`` below zero (oversold) is read as 0: a store cannot list
    less than nothing.  The levels are one snapshot (an item's locations may be on different
    pages), fetched from the time the first levels page was asked for.
    """

    platform = "shopify"

    def __init__(self, client: ShopifyClient, *, location_ids: list[str] | None = None,
                 limit: int = SHOPIFY_PAGE_LIMIT) -> None:
        self.client = client
        self.location_ids = location_ids
        self.limit = limit

    async def batches(self) -> AsyncIterator[StoreBatch]:
        """One batch: every inventory item with a tracked level, its SKU (or ``""``) and its total."""
        variants = {}
        async for page in self.client.iter_variants(limit=self.limit):
            for variant in page:
                variants[variant.inventory_item_id] = variant
        location_ids = self.location_ids or [str(location["id"]) for location in await self.client.list_locations()
                                             if location.get("active", True)]
        fetched_at = _now()
        totals: dict[str, int] = {}
        if location_ids:
            async for levels in self.client.iter_inventory_levels(location_ids, limit=self.limit):
                for level in levels:
                    if level.available is None:
                        continue
                    totals[level.inventory_item_id] = totals.get(level.inventory_item_id, 0) + max(0, level.available)
        items = []
        for item_id, total in totals.items():
            variant = variants.get(item_id)
            items.append(StoreItem(variant.sku if variant else "", total, item_id, variant.title if variant else None))
        yield StoreBatch(fetched_at, items)


__all__ = ["BackMarketStoreAdapter", "RefurbedStoreAdapter", "ShopifyStoreAdapter", "StoreAdapter", "StoreBatch",
           "StoreItem"]
