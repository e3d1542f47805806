"""Simulated marketplaces and supplier (aiohttp servers in the vendors' shapes, with quotas and faults to dial)."""
