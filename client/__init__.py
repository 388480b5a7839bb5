"""Flower ClientApp, client side of secure aggregation, and the client SDK for apps (imported as fedrec.client).

``from fedrec.client import Device`` loads the SDK only (no Flower): see :mod:`.sdk`.
"""

from .sdk import Device, Interaction, Recommended, write_key_file

__all__ = ["Device", "Interaction", "Recommended", "write_key_file"]
