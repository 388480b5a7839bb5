"""The encrypted on-device store: one SQLite file holding everything a device keeps.

A device's interactions, its users' factors, privacy accountants, secure-
aggregation state and the signed global model it holds all live in one SQLite
file (stdlib ``sqlite3``), behind the :class:`~fedrec.store.device_state.DeviceStateStore`
interface the simulation uses too. Why this layout:

- **Encryption per record, AES-GCM** (``cryptography``): every row's content is
  sealed with a fresh 96-bit random nonce, and its associated data binds the
  table, the row's key and the store's random id, so a ciphertext moved to
  another row, table or file does not decrypt. Only the layout (tables, row
  count, sizes) and the clear metadata (format, store id, KDF salt and
  parameters) are visible. SQLCipher was measured against this and not chosen:
  see the README's "App SDK" section.
- **Keys**: either 32 bytes supplied by the app (from the platform keystore),
  or a passphrase stretched with Scrypt (salt and cost in the clear metadata).
  Either way HKDF-SHA256 over the store id derives the record key, so one app
  key never encrypts two stores under the same key.
- **Never a silent reset**: a key-check record (a known plaintext sealed at
  creation) tells a wrong key from a damaged file; a file that exists but is
  empty, truncated or not a fedrec store raises :class:`StoreCorruptError`;
  ``PRAGMA quick_check`` runs at open and every record is authenticated when
  read, so a flipped byte is an error or provably harmless, never wrong data.
- **Durability**: WAL journal with ``synchronous=FULL``: a write method returns
  only after its transaction is fsynced, so a crash (``kill -9``, power loss)
  loses nothing acknowledged. Several processes may write at once (the app and
  its SuperNode's ClientApp): SQLite serialises writers, and a cache here is
  refreshed when ``PRAGMA data_version`` says another connection committed.
- **Erasure**: ``secure_delete=ON`` overwrites deleted content with zeros,
  ``VACUUM`` rebuilds the file without free pages, and a ``TRUNCATE``
  checkpoint empties the WAL, so forgotten rows are gone from both files.
  What SQLite cannot promise is what the file system and flash do below it
  (copy-on-write snapshots, wear levelling may keep old blocks); since every
  block was encrypted, destroying the app key erases those copies too.

Limits (documented, not hidden): per-record authentication cannot detect that
whole rows were deleted or that the whole file was replaced by an older copy.
"""

from __future__ import annotations

import secrets
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedrec.errors import StoreCorruptError, StoreError, StoreKeyError
from fedrec.store.device_state import DeviceState, pack_state, unpack_state

FORMAT = "fedrec-store/1"
KEY_BYTES = 32
_NONCE = 12
_KEYCHECK = b"fedrec-store key check v1"
_ROW = struct.Struct(">qdBq")  # item, value, implicit flag, timestamp
#: Scrypt cost for passphrases: about 0.1 s and 32 MiB on a phone-class core.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE keycheck (id INTEGER PRIMARY KEY, nonce BLOB NOT NULL, ct BLOB NOT NULL);
CREATE TABLE interactions (id INTEGER PRIMARY KEY AUTOINCREMENT, nonce BLOB NOT NULL, ct BLOB NOT NULL);
CREATE TABLE state (name TEXT PRIMARY KEY, nonce BLOB NOT NULL, ct BLOB NOT NULL);
CREATE TABLE records (name TEXT PRIMARY KEY, nonce BLOB NOT NULL, ct BLOB NOT NULL);
"""


@dataclass(frozen=True)
class Interaction:
    """One thing the user did: an explicit rating, or an implicit event (a view, a play).

    ``item`` is the item's index in the global table; ``value`` the rating, or
    the event's weight for an implicit event; ``timestamp`` in seconds.
    """

    item: int
    value: float
    implicit: bool = False
    timestamp: int = 0


@dataclass(frozen=True)
class InteractionRows:
    """The store's interactions as columns (row id order = recording order)."""

    ids: np.ndarray
    items: np.ndarray
    values: np.ndarray
    implicit: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class DeviceStore:
    """One device's encrypted SQLite store; a :class:`DeviceStateStore` for its private state.

    Open with :meth:`open`. Every write method is one durable transaction.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, aead: AESGCM, store_id: bytes) -> None:
        self.path = path
        self._conn = conn
        self._aead = aead
        self._store_id = store_id
        self._version = -1
        self._rows = _empty_rows()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, *, key: bytes | None = None, passphrase: str | None = None,
             create: bool = True, scrypt_n: int = SCRYPT_N) -> DeviceStore:
        """Open the store at ``path``, creating it if it does not exist (and ``create``).

        Parameters
        ----------
        key
            32 secret bytes from the app (e.g. its platform keystore).
        passphrase
            Alternatively, a passphrase stretched with Scrypt (cost ``scrypt_n``
            at creation; an existing store uses the cost in its metadata).

        Raises
        ------
        StoreKeyError
            The key or passphrase does not open this store.
        StoreCorruptError
            The file is empty, truncated, tampered with or not a fedrec store.
        """
        if (key is None) == (passphrase is None):
            raise StoreKeyError("device store: give exactly one of key= or passphrase=")
        if key is not None and len(key) != KEY_BYTES:
            raise StoreKeyError(f"device store: key must be {KEY_BYTES} bytes, got {len(key)}")
        path = Path(path)
        exists = path.exists()
        if exists and path.stat().st_size == 0:
            raise StoreCorruptError(f"{path}: store file is empty (truncated?); refusing to initialise over it")
        if not exists and not create:
            raise StoreError(f"{path}: no device store here")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        try:
            with _sql_errors(path):
                if not exists:
                    _initialise(conn, kdf="raw" if key is not None else "scrypt", scrypt_n=scrypt_n)
                meta = _read_meta(conn, path)
                _quick_check(conn, path)
                aead = AESGCM(_record_key(meta, key=key, passphrase=passphrase))
                store = cls(path, conn, aead, meta["store_id"])
                if not exists:
                    store._write_keycheck()
                store._check_key()
                store._refresh(force=True)
                store.load()
            return store
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the WAL into the file)."""
        self._conn.close()

    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store_id(self) -> str:
        """The store's random id (hex), part of every record's associated data."""
        return self._store_id.hex()

    # ------------------------------------------------------------ interactions
    def add(self, rows: Iterable[Interaction]) -> list[int]:
        """Record interactions in one durable transaction; returns their row ids.

        When this returns, the rows survive a crash (WAL fsynced).
        """
        batch = list(rows)
        with self._write() as cur:
            seq = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchone()
            first = (int(seq[0]) if seq else 0) + 1
            ids = list(range(first, first + len(batch)))
            cur.executemany("INSERT INTO interactions (id, nonce, ct) VALUES (?, ?, ?)",
                            [self._seal("interactions", str(i), _ROW.pack(int(r.item), float(r.value),
                                                                          int(r.implicit), int(r.timestamp)), i)
                             for i, r in zip(ids, batch, strict=True)])
        self._append(ids, batch)
        return ids

    def interactions(self) -> InteractionRows:
        """Every recorded interaction (decrypted; refreshed if another process wrote)."""
        self._refresh()
        return self._rows

    def forget(self, item: int) -> int:
        """Delete every interaction with ``item`` (zeroed on disk, WAL truncated); returns how many."""
        rows = self.interactions()
        ids = rows.ids[rows.items == int(item)]
        if len(ids):
            with self._write() as cur:
                cur.executemany("DELETE FROM interactions WHERE id = ?", [(int(i),) for i in ids])
            self._checkpoint()
            self._refresh(force=True)
        return len(ids)

    def wipe(self) -> None:
        """Right to erasure: delete interactions and private state, VACUUM, empty the WAL.

        The signed model and the round held (rollback protection) are not user
        data and stay.
        """
        with self._write() as cur:
            cur.execute("DELETE FROM interactions")
            cur.execute("DELETE FROM state")
        with _sql_errors(self.path):
            self._conn.execute("VACUUM")
        self._checkpoint()
        self._refresh(force=True)

    # ------------------------------------------------------------ device state
    def load(self) -> DeviceState:
        """The device's private state (a fresh dict); ``{}`` for a new device."""
        with _sql_errors(self.path):
            rows = self._conn.execute("SELECT name, nonce, ct FROM state").fetchall()
        state: DeviceState = {}
        for name, nonce, ct in rows:
            state.update(unpack_state(self._open_record("state", name, nonce, ct), where=f"{self.path} state {name!r}"))
        return state

    def save(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the whole state in one durable transaction."""
        sealed = [(name, *self._seal("state", name, pack_state({name: arr}))) for name, arr in state.items()]
        with self._write() as cur:
            cur.execute("DELETE FROM state")
            cur.executemany("INSERT INTO state (name, nonce, ct) VALUES (?, ?, ?)", sealed)

    def update_state(self, entries: Mapping[str, np.ndarray]) -> None:
        """Insert or replace only the named state entries (the streaming factor refresh)."""
        sealed = [(name, *self._seal("state", name, pack_state({name: arr}))) for name, arr in entries.items()]
        with self._write() as cur:
            cur.executemany("INSERT OR REPLACE INTO state (name, nonce, ct) VALUES (?, ?, ?)", sealed)

    def add_and_update(self, rows: Iterable[Interaction], entries: Mapping[str, np.ndarray]) -> list[int]:
        """:meth:`add` and :meth:`update_state` in one transaction (one fsync)."""
        batch = list(rows)
        sealed = [(name, *self._seal("state", name, pack_state({name: arr}))) for name, arr in entries.items()]
        with self._write() as cur:
            seq = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'interactions'").fetchone()
            first = (int(seq[0]) if seq else 0) + 1
            ids = list(range(first, first + len(batch)))
            cur.executemany("INSERT INTO interactions (id, nonce, ct) VALUES (?, ?, ?)",
                            [self._seal("interactions", str(i), _ROW.pack(int(r.item), float(r.value),
                                                                          int(r.implicit), int(r.timestamp)), i)
                             for i, r in zip(ids, batch, strict=True)])
            cur.executemany("INSERT OR REPLACE INTO state (name, nonce, ct) VALUES (?, ?, ?)", sealed)
        self._append(ids, batch)
        return ids

    # ----------------------------------------------------------- named records
    def put_record(self, name: str, data: bytes) -> None:
        """Store an opaque encrypted blob under ``name`` (e.g. the signed model)."""
        with self._write() as cur:
            cur.execute("INSERT OR REPLACE INTO records (name, nonce, ct) VALUES (?, ?, ?)",
                        (name, *self._seal("records", name, data)))

    def put_records(self, records: Mapping[str, bytes]) -> None:
        """Several named blobs in one transaction (a model and its round together)."""
        sealed = [(name, *self._seal("records", name, data)) for name, data in records.items()]
        with self._write() as cur:
            cur.executemany("INSERT OR REPLACE INTO records (name, nonce, ct) VALUES (?, ?, ?)", sealed)

    def get_record(self, name: str) -> bytes | None:
        """The blob stored under ``name``, or None."""
        with _sql_errors(self.path):
            row = self._conn.execute("SELECT nonce, ct FROM records WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._open_record("records", name, row[0], row[1])

    # ---------------------------------------------------------------- internals
    def _seal(self, table: str, rowkey: str, plain: bytes, rowid: int | None = None) -> tuple[Any, ...]:
        nonce = secrets.token_bytes(_NONCE)
        ct = self._aead.encrypt(nonce, plain, self._ad(table, rowkey))
        return (nonce, ct) if rowid is None else (rowid, nonce, ct)

    def _open_record(self, table: str, rowkey: str, nonce: bytes, ct: bytes) -> bytes:
        try:
            return self._aead.decrypt(bytes(nonce), bytes(ct), self._ad(table, rowkey))
        except (InvalidTag, ValueError) as exc:
            raise StoreCorruptError(f"{self.path}: {table} row {rowkey} does not authenticate "
                                    "(the file was altered or damaged)") from exc

    def _ad(self, table: str, rowkey: str) -> bytes:
        return b"|".join((FORMAT.encode(), table.encode(), rowkey.encode(), self._store_id))

    def _write_keycheck(self) -> None:
        with self._write() as cur:
            cur.execute("INSERT INTO keycheck (id, nonce, ct) VALUES (?, ?, ?)",
                        self._seal("keycheck", "1", _KEYCHECK, 1))

    def _check_key(self) -> None:
        row = self._conn.execute("SELECT nonce, ct FROM keycheck WHERE id = 1").fetchone()
        if row is None:
            raise StoreCorruptError(f"{self.path}: key-check record is missing")
        try:
            plain = self._aead.decrypt(bytes(row[0]), bytes(row[1]), self._ad("keycheck", "1"))
        except InvalidTag as exc:
            raise StoreKeyError(f"{self.path}: the key or passphrase does not open this store "
                                "(or its key-check record was altered)") from exc
        if plain != _KEYCHECK:
            raise StoreCorruptError(f"{self.path}: key-check record has unexpected content")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with _sql_errors(self.path):
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _checkpoint(self) -> None:
        with _sql_errors(self.path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _refresh(self, *, force: bool = False) -> None:
        """Reload the interaction cache if any other connection committed since the last read."""
        with _sql_errors(self.path):
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            if not force and version == self._version:
                return
            rows = self._conn.execute("SELECT id, nonce, ct FROM interactions ORDER BY id").fetchall()
        self._version = version
        decoded = [_ROW.unpack(self._open_record("interactions", str(i), n, c)) for i, n, c in rows]
        self._rows = _columns([int(r[0]) for r in rows], decoded)

    def _append(self, ids: list[int], batch: list[Interaction]) -> None:
        with _sql_errors(self.path):
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._version:  # someone else wrote in between: reload everything
            self._refresh(force=True)
            return
        new = _columns(ids, [(r.item, r.value, int(r.implicit), r.timestamp) for r in batch])
        old = self._rows
        self._rows = InteractionRows(*(np.concatenate([a, b]) for a, b in zip(
            (old.ids, old.items, old.values, old.implicit, old.timestamps),
            (new.ids, new.items, new.values, new.implicit, new.timestamps), strict=True)))


def _empty_rows() -> InteractionRows:
    return _columns([], [])


def _columns(ids: list[int], decoded: list[tuple[Any, ...]]) -> InteractionRows:
    arr = np.array(decoded, dtype=np.float64).reshape(len(decoded), 4)
    return InteractionRows(np.asarray(ids, np.int64), arr[:, 0].astype(np.int64), arr[:, 1].astype(np.float32),
                           arr[:, 2].astype(bool), arr[:, 3].astype(np.int64))


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptError(f"{path}: not a readable SQLite file: {exc}") from exc
    return conn


@contextmanager
def _sql_errors(path: Path) -> Iterator[None]:
    """SQLite failures as store errors: lock timeouts are not corruption."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            raise StoreError(f"{path}: store is busy (another process held it for 30 s): {msg}") from exc
        raise StoreCorruptError(f"{path}: store file is damaged: {msg}") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptError(f"{path}: store file is damaged: {exc}") from exc


def _initialise(conn: sqlite3.Connection, *, kdf: str, scrypt_n: int) -> None:
    meta = {"format": FORMAT.encode(), "store_id": secrets.token_bytes(16), "kdf": kdf.encode()}
    if kdf == "scrypt":
        meta.update({"salt": secrets.token_bytes(16), "scrypt_n": str(scrypt_n).encode(),
                     "scrypt_r": str(SCRYPT_R).encode(), "scrypt_p": str(SCRYPT_P).encode()})
    conn.execute("BEGIN IMMEDIATE")
    for statement in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(statement)
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", list(meta.items()))
    conn.execute("COMMIT")


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, bytes]:
    try:
        meta = {str(k): bytes(v) for k, v in conn.execute("SELECT name, value FROM meta")}
    except sqlite3.OperationalError as exc:
        raise StoreCorruptError(f"{path}: not a fedrec device store (no metadata): {exc}") from exc
    if meta.get("format") != FORMAT.encode() or len(meta.get("store_id", b"")) != 16:
        raise StoreCorruptError(f"{path}: not a {FORMAT} store (format {meta.get('format')!r})")
    return meta


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's own structural check (b-trees, page links): catches truncation and most damage."""
    result = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    if result != ["ok"]:
        raise StoreCorruptError(f"{path}: store file is damaged: {'; '.join(result[:3])}")


def _record_key(meta: Mapping[str, bytes], *, key: bytes | None, passphrase: str | None) -> bytes:
    """HKDF over the store id, from the app key or a Scrypt-stretched passphrase."""
    kdf = meta.get("kdf", b"").decode()
    if kdf == "raw":
        if key is None:
            raise StoreKeyError("device store: this store was created with an app key, not a passphrase")
        secret = key
    elif kdf == "scrypt":
        if passphrase is None:
            raise StoreKeyError("device store: this store was created with a passphrase, not an app key")
        try:
            n, r, p = (int(meta[k]) for k in ("scrypt_n", "scrypt_r", "scrypt_p"))
            secret = Scrypt(salt=meta["salt"], length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode())
        except (KeyError, ValueError) as exc:
            raise StoreCorruptError(f"device store: bad KDF parameters in metadata: {exc}") from exc
    else:
        raise StoreCorruptError(f"device store: unknown key derivation {kdf!r} in metadata")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=meta["store_id"],
                info=FORMAT.encode() + b" record key").derive(secret)
