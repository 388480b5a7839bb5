"""Flower ClientApp and client side of secure aggregation (imported as fedrec.client)."""
