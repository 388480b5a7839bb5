"""Flower ServerApp, aggregation strategy and server side of secure aggregation (imported as fedrec.server)."""
