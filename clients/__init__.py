"""Clients of the external APIs (Back Market, Refurbed, Shopify, Ingram Micro) and the fleet-wide rate limiter they share."""
