"""fedrec.secagg."""
