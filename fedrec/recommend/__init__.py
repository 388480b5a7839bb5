"""On-device recommendation: top-K over the global table, exact or approximate, and streaming fold-in."""
