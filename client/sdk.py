"""The client SDK an app embeds: its user's data stays in one encrypted file on the device.

Ten lines of an app::

    from fedrec.client import Device
    dev = Device.open("user.fedrec", key=keystore_key, public_key="server.pub")
    dev.load_model("model-42.frm")            # signed by the server; no rollback
    dev.record(item=50, rating=5)             # durable; the user's factor follows at once
    dev.record(item=181, event=True)          # an implicit event (a view, a play)
    for item, score in dev.recommend(k=10, deny=[1, 2]):
        print(item, score)
    dev.forget(50)                            # one item, gone from the file
    proc = dev.join(superlink="fl.example.org:9092", key_file="user.key", root_certificates="ca.pem",
                    identity="device.identity")  # secure aggregation: the enrolled identity folder
    dev.wipe()                                # right to erasure

Everything works without a server: :meth:`Device.open` creates the store,
:meth:`Device.load_model` accepts a model file the app ships or downloads, and
recommendations are computed on the device. :meth:`Device.join` starts a Flower
SuperNode whose ClientApp (``client.app``) reads the same store through
:mod:`client.node` (node config ``store=... key-file=...``). This module never
imports Flower.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedrec.deploy.keys import check_identity
from fedrec.errors import ConfigError, ModelError, SignatureError
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.recommend.stream import FoldInConfig, user_factor
from fedrec.recommend.topk import ANN_THRESHOLD, Recommendation, TopK
from fedrec.store.artifact import ModelArtifact, load_public_key, verify_model
from fedrec.store.device_store import DeviceStore, Interaction
from fedrec.wire import NODE_EVAL_MIN_COHORT, NODE_IDENTITY, NODE_KEY_FILE, NODE_STORE, STATE_PRIVACY

log = logging.getLogger(__name__)

RECORD_MODEL = "model"
RECORD_ROUND = "model.round"


@dataclass(frozen=True)
class Recommended:
    """Top-K for the app: items best first with their predicted scores; iterates as pairs."""

    items: tuple[int, ...]
    scores: tuple[float, ...]

    def __iter__(self) -> Iterator[tuple[int, float]]:
        return iter(zip(self.items, self.scores, strict=True))

    def __len__(self) -> int:
        return len(self.items)


class Device:
    """One app user's device: store, model, streaming factor and recommendations.

    Use :meth:`open`; a ``Device`` is a context manager and closes its store.
    """

    def __init__(self, store: DeviceStore, *, public_key: Ed25519PublicKey | None, foldin: FoldInConfig,
                 ann_threshold: int) -> None:
        self.store = store
        self._public_key = public_key
        self._foldin = foldin
        self._ann_threshold = ann_threshold
        self._topk: TopK | None = None
        self._round: int | None = None
        self._factor: LocalParams | None = None
        self._seen = np.empty(0, np.int64)
        self._restore_model()

    @classmethod
    def open(cls, path: str | Path, *, key: bytes | None = None, passphrase: str | None = None,
             public_key: Ed25519PublicKey | str | Path | None = None, reg: float = 0.1, bias_reg: float = 0.1,
             implicit_rating: float = 5.0, ann_threshold: int = ANN_THRESHOLD) -> Device:
        """Open (or create) the device's store; ``public_key`` is the server key models must verify with.

        Raises the store's :class:`~fedrec.errors.StoreKeyError` or
        :class:`~fedrec.errors.StoreCorruptError`; never resets a store.
        """
        if isinstance(public_key, str | Path):
            public_key = load_public_key(Path(public_key))
        store = DeviceStore.open(path, key=key, passphrase=passphrase)
        try:
            return cls(store, public_key=public_key, foldin=FoldInConfig(reg, bias_reg, implicit_rating),
                       ann_threshold=ann_threshold)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ model
    @property
    def model_round(self) -> int | None:
        """The round of the model held (None before the first model)."""
        return self._round

    @property
    def topk(self) -> TopK | None:
        """The scorer of the model held (with its ANN index on large catalogues)."""
        return self._topk

    @property
    def model(self) -> GlobalParams | None:
        return None if self._topk is None else self._topk.glob

    def load_model(self, artifact: bytes | str | Path) -> int:
        """Verify and install a signed global model; returns its round.

        The model is accepted only if its Ed25519 signature verifies with the
        provisioned server key and its round is not older than the one held
        (the held round is kept in the store, so a restart cannot roll back).
        The artifact and its round are written in one transaction; the ANN
        index (large catalogues) is rebuilt for the new table.

        Raises
        ------
        SignatureError, RollbackError
        """
        if self._public_key is None:
            raise SignatureError("load_model: no server public key was provisioned (Device.open(public_key=...))")
        data = Path(artifact).read_bytes() if isinstance(artifact, str | Path) else bytes(artifact)
        model = verify_model(data, public_key=self._public_key, min_round=self._round,
                             where=str(artifact) if not isinstance(artifact, bytes) else "model artifact")
        self.store.put_records({RECORD_MODEL: data, RECORD_ROUND: str(model.round).encode()})
        self._install(model)
        return model.round

    def _restore_model(self) -> None:
        data = self.store.get_record(RECORD_MODEL)
        if data is None:
            return
        if self._public_key is None:  # authenticated by the store's AEAD; verified when it was loaded
            from fedrec.store.artifact import _split, _table

            header, payload = _split(data[:-64], str(self.store.path))
            glob = _table(header, payload, str(self.store.path))
            model = ModelArtifact(glob, int(header["round"]), str(header["run"]), header)
        else:
            model = verify_model(data, public_key=self._public_key, where=f"{self.store.path} model")
        held = self.store.get_record(RECORD_ROUND)
        if held is not None and int(held) != model.round:
            raise SignatureError(f"{self.store.path}: stored model round {model.round} differs from the held "
                                 f"round {int(held)}")
        self._install(model)

    def _install(self, model: ModelArtifact) -> None:
        self._topk = TopK(model.glob, ann_threshold=self._ann_threshold)
        self._round = model.round
        self._factor = None
        self._refold()

    # ----------------------------------------------------------- interactions
    def record(self, item: int, rating: float | None = None, *, event: bool = False, weight: float = 1.0,
               timestamp: int | None = None) -> None:
        """Record one interaction: an explicit ``rating``, or ``event=True`` for an implicit one.

        Durable when it returns (one fsynced transaction); the user's factor is
        re-folded before the write, so the next :meth:`recommend` reflects it.
        The streaming factor is a function of the interactions and the model
        (recomputed at open), so it is not written; the factor that training
        keeps in the device state is the training path's own.
        """
        self.record_many([_interaction(item, rating, event, weight, timestamp)])

    def record_many(self, rows: Iterable[Interaction]) -> None:
        """Record a batch in one transaction, then refresh the user's factor once."""
        batch = list(rows)
        for r in batch:
            if r.item < 0:
                raise ConfigError(f"record: item {r.item} must be a non-negative item index")
            if not np.isfinite(r.value):
                raise ConfigError(f"record: item {r.item} has a non-finite value {r.value!r}")
        if self._topk is None:
            self.store.add(batch)
            return
        factor = self._fold(extra=batch)
        self.store.add(batch)
        self._factor = factor

    def interactions(self) -> list[Interaction]:
        """Every recorded interaction, oldest first."""
        rows = self.store.interactions()
        return [Interaction(int(i), float(v), bool(m), int(t))
                for i, v, m, t in zip(rows.items, rows.values, rows.implicit, rows.timestamps, strict=True)]

    def forget(self, item: int) -> int:
        """Remove every interaction with ``item`` from the store and the factor; returns how many."""
        removed = self.store.forget(item)
        if removed:
            self._refold()
        return removed

    def wipe(self) -> None:
        """Right to erasure: interactions, factors, accountants and SecAgg state leave the file.

        See :meth:`fedrec.store.device_store.DeviceStore.wipe` for what SQLite
        guarantees (zeroed pages, VACUUM, WAL truncated) and what it cannot.
        """
        self.store.wipe()
        self._factor = None
        self._refold()

    # -------------------------------------------------------- recommendations
    @property
    def factor(self) -> LocalParams | None:
        """The user's current factor (None before a model is loaded).

        Kept current by this object's own writes; the interactions are written
        only by the app (the ClientApp of :meth:`join` reads them), so the
        cached factor and seen set never miss one.
        """
        return self._factor

    def recommend(self, k: int = 10, *, allow: Sequence[int] | np.ndarray | None = None,
                  deny: Sequence[int] | np.ndarray | None = None, include_seen: bool = False) -> Recommended:
        """The ``k`` best items for this user, seen items excluded unless ``include_seen``."""
        rec = self.recommend_arrays(k, allow=allow, deny=deny, include_seen=include_seen)
        return Recommended(tuple(rec.items.tolist()), tuple(rec.scores.tolist()))

    def recommend_arrays(self, k: int = 10, *, allow: Sequence[int] | np.ndarray | None = None,
                         deny: Sequence[int] | np.ndarray | None = None, include_seen: bool = False) -> Recommendation:
        """:meth:`recommend` as numpy arrays (no per-item Python objects)."""
        if self._topk is None or self._factor is None:
            raise ModelError("recommend: no model loaded yet (Device.load_model)")
        return self._topk.recommend(self._factor, k, exclude=None if include_seen else self._seen,
                                    allow=None if allow is None else np.asarray(allow, np.int64),
                                    deny=None if deny is None else np.asarray(deny, np.int64))

    # ----------------------------------------------------------------- privacy
    def privacy_spent(self) -> list[dict[str, object]]:
        """Epsilon spent by this device, one report per accountant (unit, accountant, delta, steps).

        Read from the accountants that rating-level DP training keeps in the
        device state. Under user-level DP the accountant is the server's (the
        guarantee is about the whole run); the device has nothing to add.
        """
        out: list[dict[str, object]] = []
        for name, raw in sorted(self.store.load().items()):
            if name.startswith(f"{STATE_PRIVACY}.") and name.endswith(".accountant"):
                import json

                from fedrec.privacy.accounting import PrivacyAccountant  # Opacus: loaded only when asked

                acc = PrivacyAccountant.from_state_dict(json.loads(np.asarray(raw, np.uint8).tobytes().decode()))
                out.append({"key": name, **acc.report()})
        return out

    # ---------------------------------------------------------------- training
    def supernode_command(self, *, superlink: str, key_file: str | Path, root_certificates: str | Path | None = None,
                          insecure: bool = False, auth_key: str | Path | None = None,
                          runtime_port: int | None = None, identity: str | Path | None = None,
                          eval_min_cohort: int | None = None) -> list[str]:
        """The ``flower-supernode`` command line that trains this device's store.

        Exactly one of ``root_certificates`` (TLS, the deployment default) or
        ``insecure=True`` (local tests only). ``auth_key`` is the SuperNode's
        private key registered with ``flwr supernode register``. ``key_file``
        holds the store key (hex) and must be readable only by the app user.
        ``identity`` is the device's secure-aggregation identity folder
        (``identity.pem``, ``identity.cert``, ``authority.pub``), passed as node
        config ``secagg-identity``; without it the device refuses secure rounds.
        ``eval_min_cohort`` is the device's floor for a secure evaluation's
        threshold (node config ``secagg-eval-min-cohort``; default the app's
        5): the device refuses to let the server unmask the evaluation sums of
        fewer devices, whatever the run configuration says.
        """
        if (root_certificates is None) == (not insecure):
            raise ConfigError("join: give root_certificates=PATH (TLS) or insecure=True, exactly one")
        exe = shutil.which("flower-supernode") or "flower-supernode"
        cmd = [exe, "--superlink", superlink]
        cmd += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
        if auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(auth_key)]
        if runtime_port is not None:
            cmd += ["--port", str(runtime_port)]
        node_config = [f'{NODE_STORE}="{Path(self.store.path).resolve()}"',
                       f'{NODE_KEY_FILE}="{Path(key_file).resolve()}"']
        if identity is not None:
            node_config.append(f'{NODE_IDENTITY}="{Path(identity).resolve()}"')
        if eval_min_cohort is not None:
            if isinstance(eval_min_cohort, bool) or not isinstance(eval_min_cohort, int) or eval_min_cohort < 2:
                raise ConfigError(f"join: eval_min_cohort must be an integer >= 2, got {eval_min_cohort!r}")
            node_config.append(f"{NODE_EVAL_MIN_COHORT}={eval_min_cohort}")
        cmd += ["--node-config", " ".join(node_config)]
        return cmd

    def join(self, *, superlink: str, key_file: str | Path, root_certificates: str | Path | None = None,
             insecure: bool = False, auth_key: str | Path | None = None, runtime_port: int | None = None,
             log_file: str | Path | None = None, identity: str | Path | None = None,
             eval_min_cohort: int | None = None) -> subprocess.Popen[bytes]:
        """Start a Flower SuperNode for this device (a child process in its own process group).

        The caller stops it with ``os.killpg(proc.pid, signal.SIGTERM)``. The
        ClientApp in it opens the same store; SQLite serialises the two writers.
        An ``identity`` folder is checked first (certificate under its
        ``authority.pub``, key matching it; :class:`~fedrec.errors.DeployError`).
        """
        if identity is not None:
            check_identity(Path(identity))
        cmd = self.supernode_command(superlink=superlink, key_file=key_file, root_certificates=root_certificates,
                                     insecure=insecure, auth_key=auth_key, runtime_port=runtime_port,
                                     identity=identity, eval_min_cohort=eval_min_cohort)
        out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115
        log.info("device: starting %s", " ".join(cmd))
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    # -------------------------------------------------------------- internals
    def _fold(self, extra: Sequence[Interaction] = ()) -> LocalParams:
        assert self._topk is not None
        rows = self.store.interactions()
        items, values, implicit = rows.items, rows.values, rows.implicit
        if extra:
            items = np.concatenate([items, np.array([r.item for r in extra], np.int64)])
            values = np.concatenate([values, np.array([r.value for r in extra], np.float32)])
            implicit = np.concatenate([implicit, np.array([r.implicit for r in extra], bool)])
        self._seen = np.unique(items)
        return user_factor(self._topk.glob, items, values, implicit, config=self._foldin)

    def _refold(self) -> None:
        if self._topk is not None:
            self._factor = self._fold()


def _interaction(item: int, rating: float | None, event: bool, weight: float, timestamp: int | None) -> Interaction:
    if (rating is None) != event:
        raise ConfigError(f"record: item {item}: give rating=VALUE or event=True, exactly one")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return Interaction(int(item), float(weight if event else rating), event, ts)  # type: ignore[arg-type]


def write_key_file(path: str | Path, key: bytes) -> Path:
    """Write the store key (hex) for the SuperNode's ClientApp, readable by the owner only."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return path


__all__ = ["Device", "Interaction", "Recommended", "write_key_file"]
