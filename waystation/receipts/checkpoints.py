"""Signed checkpoints of the receipt tree, in the formats transparency logs share (C2SP).

A checkpoint (C2SP tlog-checkpoint) is three lines: the origin (`waystation/<host>`), the tree
size in decimal, the root hash in base64. It travels as a signed note (C2SP signed-note): that
text, a blank line, and one line per signature, `— <key name> <base64(key id || signature)>`,
where the key id is the first 4 bytes of SHA-256(name || "\\n" || 0x01 || Ed25519 public key) and
the signature is Ed25519 over the text. The verifier key is `<name>+<key id hex>+<base64(0x01 ||
public key)>`: what `receipts key` prints, and all an auditor needs.

The private key is `receipts.key` (PKCS#8 PEM, 0600) in the state directory, made at first use;
`receipts.pub` beside it holds the verifier key, so the origin stays what it was when the key was
made even if the host is renamed. Both are written durably (waystation.durable), the public one
first; one that a power cut or a hand lost is rebuilt from the key with the origin of the kept
`receipts.checkpoint` the key signed, never from the hostname of the day (issue 25).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from waystation import contract, durable
from waystation.errors import BadCheckpoint, SigningKeyUnusable

log = structlog.get_logger(__name__)

ED25519 = b"\x01"  # the signed-note signature type of Ed25519
DASH = "\u2014"  # the em dash that opens a signature line
PRIVATE_PREFIX = "PRIVATE+KEY+"
# A key name as golang.org/x/mod/sumdb/note allows one: non-empty, no space, no "+".
KEY_NAME = re.compile(r"[^\s+]{1,128}")
CHECKPOINT_FILE = "receipts.checkpoint"  # the last checkpoint the agent kept, in the state directory


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadCheckpoint(f"{what} is not base64") from None


@dataclass(frozen=True)
class VerifierKey:
    name: str
    public: bytes  # the 32 bytes of the Ed25519 public key

    def __str__(self) -> str:
        return f"{self.name}+{key_id(self.name, self.public).hex()}+{_b64(ED25519 + self.public)}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """A verifier key as `receipts key` prints it; BadCheckpoint when it is not one."""
        parts = text.strip().split("+", 2)  # a key name never holds "+"; base64 may
        if len(parts) != 3:
            raise BadCheckpoint("not an Ed25519 verifier key of the form NAME+KEYID+BASE64")
        name, hex_id, encoded = parts
        raw = _unb64(encoded, "the verifier key")
        if not name or len(raw) != 33 or raw[:1] != ED25519:
            raise BadCheckpoint("not an Ed25519 verifier key of the form NAME+KEYID+BASE64")
        key = cls(name, raw[1:])
        if key_id(name, key.public).hex() != hex_id.lower():
            raise BadCheckpoint("the verifier key's id does not match its name and key")
        return key

    def verify(self, note: str) -> str:
        """The text of `note` when this key signed it; BadCheckpoint otherwise."""
        text, sep, signatures = note.partition("\n\n")
        if not sep:
            raise BadCheckpoint("not a signed note: no blank line before its signatures")
        text += "\n"
        self.check(text, signatures.splitlines())
        return text

    def check(self, text: str, signatures: list[str]) -> None:
        """BadCheckpoint unless one of the signature lines is this key's, over `text`."""
        wanted = key_id(self.name, self.public)
        public = Ed25519PublicKey.from_public_bytes(self.public)
        for line in signatures:
            dash, _, rest = line.partition(" ")
            name, _, encoded = rest.partition(" ")
            if dash != DASH or name != self.name:
                continue
            raw = _unb64(encoded, "a signature")
            if raw[:4] != wanted:
                continue
            try:
                public.verify(raw[4:], text.encode())
            except InvalidSignature:
                raise BadCheckpoint(f"the signature of {self.name} does not match the note") from None
            return
        raise BadCheckpoint(f"the note has no signature by {self.name} (key id {wanted.hex()})")


class SigningKey:
    """The host's receipt-signing key: made at first use, 0600, never leaves the state directory."""

    def __init__(self, private: Ed25519PrivateKey, name: str) -> None:
        self._private = private
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = VerifierKey(name, public)

    @property
    def name(self) -> str:
        return self.verifier.name

    @classmethod
    def load_or_create(cls, state_dir: Path, host: str = "") -> SigningKey:
        """The key of `state_dir`, made when there is none; SigningKeyUnusable when the file is
        there but holds no Ed25519 key (a key is never made over one: it may be restored). A new
        key's origin names `host` (the fleet's `[fleet] host`, so its checkpoints read as the fleet
        knows it), else the hostname."""
        private_path, public_path = state_dir / "receipts.key", state_dir / "receipts.pub"
        try:
            key = cls.load(private_path, public_path, host)
        except FileNotFoundError:
            return cls._create(private_path, public_path, host)
        _write_public(public_path, key)
        return key

    @classmethod
    def load(cls, private_path: Path, public_path: Path, host: str = "") -> SigningKey:
        """The key kept at `private_path`; FileNotFoundError when there is none."""
        try:
            pem = private_path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:  # a directory, no permission, an I/O error
            raise SigningKeyUnusable(private_path, exc.strerror or type(exc).__name__) from None
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):  # truncated, not PEM, encrypted
            raise SigningKeyUnusable(private_path, "not a PEM private key, or damaged") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SigningKeyUnusable(private_path, "not an Ed25519 key")
        try:
            name = VerifierKey.parse(public_path.read_text()).name
        except (OSError, UnicodeError, BadCheckpoint):
            name = _kept_origin(public_path.parent, private) or default_origin(host)
            log.warning("rebuilding the receipts' verifier key", path=str(public_path), origin=name)
        return cls(private, name)

    @classmethod
    def _create(cls, private_path: Path, public_path: Path, host: str) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        durable.make_dirs(private_path.parent, 0o700)
        key = cls(private, default_origin(host))
        # The public key first: a key on disk always has its origin beside it, whatever is cut.
        _write_public(public_path, key)
        # Linked into place: two processes making the key at once keep the first one's, never a
        # mix (the loser's receipts.pub is rewritten from the winner's key below).
        if not durable.write_new(private_path, pem, 0o600):
            return cls.load_or_create(private_path.parent, host)
        return key

    def sign(self, text: str) -> str:
        """`text` (ending in a newline) as a signed note with this key's one signature."""
        return f"{text}\n{self.signature_line(text)}\n"

    def signature_line(self, text: str) -> str:
        """`— NAME BASE64`: this key's signature over `text` (the note's text, newline-ended)."""
        raw = key_id(self.name, self.verifier.public) + self._private.sign(text.encode())
        return f"{DASH} {self.name} {_b64(raw)}"

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        if not KEY_NAME.fullmatch(name):
            raise BadCheckpoint("a key name is 1 to 128 visible characters, without space or +")
        return cls(Ed25519PrivateKey.generate(), name)

    def private_text(self) -> str:
        """The private key as golang.org/x/mod/sumdb/note writes one (`note.GenerateKey`):
        `PRIVATE+KEY+NAME+KEYID+base64(0x01 || seed)`."""
        seed = self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        hex_id = key_id(self.name, self.verifier.public).hex()
        return f"{PRIVATE_PREFIX}{self.name}+{hex_id}+{_b64(ED25519 + seed)}"

    @classmethod
    def parse_private(cls, text: str) -> SigningKey:
        """A key `private_text` wrote (what note.NewSigner reads); BadCheckpoint naming no part of it."""
        problem = "not a signed-note private key of the form PRIVATE+KEY+NAME+KEYID+BASE64"
        if not text.strip().startswith(PRIVATE_PREFIX):
            raise BadCheckpoint(problem)
        parts = text.strip()[len(PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise BadCheckpoint(problem)
        name, hex_id, encoded = parts
        raw = _unb64(encoded, "the private key")
        if not KEY_NAME.fullmatch(name) or len(raw) != 33 or raw[:1] != ED25519:
            raise BadCheckpoint(problem)
        key = cls(Ed25519PrivateKey.from_private_bytes(raw[1:]), name)
        if key_id(name, key.verifier.public).hex() != hex_id.lower():
            raise BadCheckpoint("the private key's id does not match its name and key")
        return key


def _write_public(path: Path, key: SigningKey) -> None:
    text = f"{key.verifier}\n"
    try:
        same = path.read_text() == text
    except (OSError, UnicodeError):
        same = False
    if not same:
        durable.write_atomic(path, text, 0o644)


def _kept_origin(state_dir: Path, private: Ed25519PrivateKey) -> str | None:
    """The origin of the checkpoint kept in `state_dir`, when this key signed it under that name."""
    try:
        note = (state_dir / CHECKPOINT_FILE).read_text()
        text, _, signatures = note.partition("\n\n")
        origin = Checkpoint.parse(text + "\n").origin
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        VerifierKey(origin, public).check(text + "\n", signatures.splitlines())
    except (OSError, UnicodeError, BadCheckpoint):
        return None
    return origin


def default_origin(host: str = "") -> str:
    return f"waystation/{host or socket.gethostname() or 'localhost'}"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    @property
    def root_b64(self) -> str:
        return _b64(self.root)

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{self.root_b64}\n"

    def to_json(self, note: str) -> contract.Checkpoint:
        return {"origin": self.origin, "size": self.size, "root_hash": self.root_b64, "note": note}

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint a note's (verified) text holds."""
        lines = text.split("\n")
        if len(lines) < 4 or not lines[1].isdigit():
            raise BadCheckpoint("not a checkpoint: expected origin, tree size and root hash lines")
        root = _unb64(lines[2], "the root hash")
        if len(root) != 32:
            raise BadCheckpoint("the root hash is not 32 bytes")
        return cls(lines[0], int(lines[1]), root)


def open_checkpoint(note: str, key: VerifierKey) -> Checkpoint:
    """The checkpoint in a signed note, once `key`'s signature on it checks out."""
    checkpoint = Checkpoint.parse(key.verify(note))
    if checkpoint.origin != key.name:
        raise BadCheckpoint(f"the checkpoint is for {checkpoint.origin}, the key is {key.name}'s")
    return checkpoint
