"""fedrec.metrics."""
