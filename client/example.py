"""A small terminal app built on the SDK: ``python -m fedrec.client.example``.

It opens (or creates) an encrypted store, loads a signed model, and reads
commands from standard input, one per line, so a person or a test can drive it::

    find star          titles containing "star"
    rate 49 5          rate item 49 five stars; the new top 5 is printed at once
    view 180           an implicit event (watched), also folded in at once
    top 10             the current top 10 (rated and viewed items excluded)
    forget 49          remove item 49 from the store
    history            what the store holds
    privacy            epsilon spent (rating-level DP training only)
    join HOST:PORT     start a SuperNode for this device (--insecure; local federations)
    leave              stop it
    wipe               erase this user's data from the file
    quit

The catalogue is ML-100K's titles when ``FEDREC_DATA_DIR`` holds them, else the
synthetic catalogue. Without ``--model``/``--public-key`` (a server export and
its key) the app makes a demo model on the spot (a truncated SVD of the ratings,
or the synthetic generator's item table) and signs it with a key it generates,
so everything runs without a server.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.errors import FedRecError
from fedrec.model.params import GlobalParams
from fedrec.store.artifact import sign_model

from .sdk import Device, write_key_file

DEMO_DIM = 16


def catalogue(kind: str) -> tuple[list[str], GlobalParams]:
    """Titles and a demo item table: ML-100K (SVD of the ratings) or synthetic."""
    data_dir = os.environ.get("FEDREC_DATA_DIR", "")
    if kind == "ml-100k" or (kind == "auto" and data_dir and (Path(data_dir) / "ml-100k" / "u.item").exists()):
        return _movielens(data_dir)
    from fedrec.data.synthetic import ItemModel, SyntheticConfig

    cfg = SyntheticConfig(n_users=10, n_items=500, rank=DEMO_DIM)
    items = ItemModel.build(cfg)
    glob = GlobalParams(items.factors.astype(np.float32), items.biases.astype(np.float32), cfg.global_mean)
    return [f"Item {i}" for i in range(cfg.n_items)], glob


def _movielens(data_dir: str) -> tuple[list[str], GlobalParams]:
    from fedrec.data.movielens import load_ml100k, load_ml100k_titles

    data = load_ml100k(data_dir)
    mu = float(data.ratings.mean())
    counts = np.bincount(data.items, minlength=data.n_items)
    bias = np.bincount(data.items, weights=data.ratings - mu, minlength=data.n_items) / (counts + 10.0)
    resid = np.zeros((data.n_users, data.n_items), np.float32)
    resid[data.users, data.items] = data.ratings - mu - bias[data.items]
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    q = (vt[:DEMO_DIM].T * s[:DEMO_DIM] / np.sqrt(data.n_users)).astype(np.float32)  # users ~ unit scale
    return load_ml100k_titles(data_dir), GlobalParams(q, bias.astype(np.float32), mu)


class App:
    """The command loop; every answer goes to ``out``."""

    def __init__(self, device: Device, titles: list[str], out: TextIO, key_file: Path) -> None:
        self.dev, self.titles, self.out, self.key_file = device, titles, out, key_file
        self.node: subprocess.Popen[bytes] | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def show_top(self, k: int = 5) -> None:
        for rank, (item, score) in enumerate(self.dev.recommend(k), 1):
            self.say(f"  {rank:>2}. [{item}] {self.titles[item]}  ({score:.2f})")

    def handle(self, line: str) -> bool:
        words = shlex.split(line)
        if not words:
            return True
        cmd, args = words[0].lower(), words[1:]
        if cmd == "quit":
            return False
        if cmd == "find":
            needle = " ".join(args).lower()
            for i, t in enumerate(self.titles):
                if needle in t.lower():
                    self.say(f"  [{i}] {t}")
        elif cmd == "rate":
            item, stars = self._item(args[0]), float(args[1])
            self.dev.record(item, rating=stars)
            self.say(f"rated [{item}] {self.titles[item]}: {stars:g}; top 5 now:")
            self.show_top()
        elif cmd == "view":
            item = self._item(args[0])
            self.dev.record(item, event=True)
            self.say(f"viewed [{item}] {self.titles[item]}; top 5 now:")
            self.show_top()
        elif cmd == "top":
            self.say("top:")
            self.show_top(int(args[0]) if args else 10)
        elif cmd == "forget":
            item = self._item(args[0])
            self.say(f"forgot [{item}] {self.titles[item]} ({self.dev.forget(item)} interactions removed)")
        elif cmd == "history":
            for r in self.dev.interactions():
                what = "viewed" if r.implicit else f"rated {r.value:g}"
                self.say(f"  [{r.item}] {self.titles[r.item]}: {what}")
        elif cmd == "privacy":
            spent = self.dev.privacy_spent()
            self.say("no DP training yet" if not spent else "\n".join(
                f"  epsilon {s['epsilon']:.3f} at delta {s['delta']:g} ({s['unit']}-level, {s['accountant']})"
                for s in spent))
        elif cmd == "join":
            self.node = self.dev.join(superlink=args[0], key_file=self.key_file, insecure=True)
            self.say(f"SuperNode started (pid {self.node.pid}) for {args[0]}")
        elif cmd == "leave":
            self._leave()
        elif cmd == "wipe":
            self.dev.wipe()
            self.say("wiped: interactions and private state erased")
        else:
            self.say(f"unknown command {cmd!r}")
        return True

    def _item(self, text: str) -> int:
        item = int(text)
        if not 0 <= item < len(self.titles):
            raise FedRecError(f"item {item} is not in the catalogue (0..{len(self.titles) - 1})")
        return item

    def _leave(self) -> None:
        if self.node is not None and self.node.poll() is None:
            os.killpg(self.node.pid, signal.SIGTERM)
            self.node.wait(timeout=30)
            self.say("SuperNode stopped")
        self.node = None

    def run(self, lines: TextIO) -> None:
        try:
            for line in lines:
                try:
                    if not self.handle(line):
                        break
                except (FedRecError, ValueError, IndexError) as exc:
                    self.say(f"error: {exc}")
        finally:
            self._leave()


def _demo_signer(path: Path) -> Ed25519PrivateKey:
    """The demo model's signing key, kept beside the store (a real app only ever holds the server's public key)."""
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    signer = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = signer.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                               serialization.NoEncryption())
    write_key_file(path, raw)
    return signer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fedrec SDK example app (commands on stdin)")
    ap.add_argument("--store", type=Path, default=Path("example.fedrec"))
    ap.add_argument("--catalogue", choices=("auto", "ml-100k", "synthetic"), default="auto")
    ap.add_argument("--model", type=Path, help="a signed model exported by the server")
    ap.add_argument("--public-key", type=Path, help="the server's Ed25519 public key (with --model)")
    args = ap.parse_args(argv)
    key_file = args.store.with_suffix(".key")
    if key_file.exists():
        key = bytes.fromhex(key_file.read_text().strip())
    else:  # a real app keeps this in the platform keystore
        key = os.urandom(32)
        args.store.parent.mkdir(parents=True, exist_ok=True)
        write_key_file(key_file, key)
    titles, glob = catalogue(args.catalogue)
    try:
        if args.model is not None:
            dev = Device.open(args.store, key=key, public_key=args.public_key)
            dev.load_model(args.model)
        else:
            signer = _demo_signer(args.store.with_suffix(".demo-signer"))
            dev = Device.open(args.store, key=key, public_key=signer.public_key())
            if dev.model is None or dev.model.n_items != len(titles):
                dev.load_model(sign_model(glob, round_=0, run="demo", signing_key=signer))
    except FedRecError as exc:
        print(f"example: {exc}", file=sys.stderr)
        return 2
    with dev:
        app = App(dev, titles, sys.stdout, key_file)
        app.say(f"store {args.store} (model round {dev.model_round}, {len(titles)} items); top 5:")
        app.show_top()
        app.run(sys.stdin)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
