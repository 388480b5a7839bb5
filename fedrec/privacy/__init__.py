"""fedrec.privacy."""
