"""Deployment: a SuperNode's ClientApp reads the device's encrypted store named in its node config.

``Device.join`` starts ``flower-supernode --node-config 'store="..." key-file="..."'``;
here the ClientApp opens that store (once per process) and uses it as the
device's :class:`InteractionSource` and as its device state, in place of the
simulation's partition and ``Context.state``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fedrec import wire
from fedrec.data.partition import InteractionSource
from fedrec.errors import ConfigError, StoreKeyError
from fedrec.runconfig import RunConfig
from fedrec.store.device_store import DeviceStore
from fedrec.store.store_source import StoreSource

_OPEN: dict[tuple[str, str], DeviceStore] = {}


def node_store(context: Context) -> DeviceStore | None:
    """The store of this SuperNode's device, or None when the node config names none (simulation)."""
    path = context.node_config.get(wire.NODE_STORE)
    if path is None:
        return None
    key_file = context.node_config.get(wire.NODE_KEY_FILE)
    if key_file is None:
        raise ConfigError(f"node config: {wire.NODE_STORE!r} given without {wire.NODE_KEY_FILE!r}")
    cache_key = (str(path), str(key_file))
    store = _OPEN.get(cache_key)
    if store is None:
        try:
            key = bytes.fromhex(Path(str(key_file)).read_text().strip())
        except (OSError, ValueError) as exc:
            raise StoreKeyError(f"{key_file}: cannot read the store key (hex): {exc}") from exc
        store = _OPEN[cache_key] = DeviceStore.open(str(path), key=key, create=False)
    return store


def store_source(context: Context, cfg: RunConfig) -> InteractionSource:
    """The device's interactions from its store (node config ``store`` and ``key-file``)."""
    store = node_store(context)
    if store is None:
        raise ConfigError(f"node config: no {wire.NODE_STORE!r} for a store-backed device")
    return StoreSource(store)
