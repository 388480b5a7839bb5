"""fedrec.model."""
