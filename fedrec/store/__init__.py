"""fedrec.store."""
