"""Encryption at rest of third-party tokens (platform accounts' OAuth tokens).

Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) under a key list:
``PARLEY_TOKEN_KEY`` holds one or more Fernet keys, comma-separated. The first
encrypts; every one decrypts. To rotate, list a new key first and the old ones
after it, restart, and re-encrypt the stored rows (``python -m store tokens
reencrypt``, or ``PlatformAccountRepository.reencrypt``); then the old keys
may be dropped. Without ``PARLEY_TOKEN_KEY`` a key is generated once in the
data directory (``token_key``, mode 0600), like the join-token key; servers
on several machines must share one ``PARLEY_TOKEN_KEY`` instead.

Errors never carry a key or a plaintext: ``TokenKeyError`` names the entry
of the list that is wrong, ``TokenDecryptError`` says that no configured
key opens a stored token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from store.secret_file import load_or_create

KEY_FILE = "token_key"
"""Name of the generated key's file in the data directory."""
FERNET_KEY_CHARS = 44
"""Length of a Fernet key: 32 bytes, URL-safe base64."""


class TokenCryptoError(Exception):
    """Token encryption cannot work as configured, or a stored token cannot be opened."""


class TokenKeyError(TokenCryptoError):
    """A key in ``PARLEY_TOKEN_KEY`` (or the key file) is not a Fernet key."""


class TokenDecryptError(TokenCryptoError):
    """A stored token was encrypted with none of the configured keys, or was altered."""


def generate_key() -> str:
    """A new random Fernet key (URL-safe base64 of 32 bytes)."""
    return Fernet.generate_key().decode("ascii")


def key_id(key: str) -> str:
    """A short, non-secret fingerprint of a key, for logs and operators."""
    return hashlib.sha256(key.encode("ascii", "replace")).hexdigest()[:8]


def parse_keys(value: str) -> list[str]:
    """The keys of a comma-separated ``PARLEY_TOKEN_KEY`` (blank entries skipped)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def load_or_create_key(data_dir: Path) -> str:
    """The key kept in ``data_dir/token_key``, generated (mode 0600) on first use."""
    return load_or_create(
        data_dir / KEY_FILE,
        generate_key,
        min_bytes=FERNET_KEY_CHARS,
        leaked_hint=(
            "The platform-token key may have leaked: set PARLEY_TOKEN_KEY to a new key "
            "followed by this one, restart, and run `python -m store tokens reencrypt`."
        ),
    )


def _fernet(key: str, position: int) -> Fernet:
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise TokenKeyError(f"token key #{position} is not URL-safe base64") from exc
    if len(raw) != 32:
        raise TokenKeyError(
            f"token key #{position} is not a Fernet key (32 bytes of URL-safe base64); "
            "generate one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )
    return Fernet(key.encode("ascii"))


class TokenCipher:
    """Encrypts with the first key of a list, decrypts with any of them."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise TokenKeyError("no token key given")
        self._primary = _fernet(keys[0], 1)
        self._all = MultiFernet(
            [self._primary, *(_fernet(k, i + 2) for i, k in enumerate(keys[1:]))]
        )
        self.key_ids = tuple(key_id(k) for k in keys)
        """Fingerprints of the keys, the encrypting one first (never the keys)."""

    @classmethod
    def from_config(cls, keys: str | None, data_dir: Path) -> TokenCipher:
        """The cipher of ``PARLEY_TOKEN_KEY`` when set, else of the data directory's key file."""
        if keys is not None and parse_keys(keys):
            return cls(parse_keys(keys))
        return cls([load_or_create_key(data_dir)])

    def encrypt(self, plaintext: str) -> bytes:
        """``plaintext`` encrypted (and authenticated) with the first key."""
        return self._primary.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        """The plaintext of a stored token; ``TokenDecryptError`` when no key opens it."""
        try:
            return self._all.decrypt(token).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError, TypeError) as exc:
            raise TokenDecryptError(
                "a stored platform token cannot be decrypted with the configured keys "
                f"(PARLEY_TOKEN_KEY, key ids {', '.join(self.key_ids)}): it was encrypted "
                "with a key that is no longer listed, or the row was altered"
            ) from exc

    def is_current(self, token: bytes) -> bool:
        """Whether ``token`` is encrypted with the first key (re-encryption would skip it)."""
        try:
            self._primary.decrypt(token)
        except (InvalidToken, TypeError):
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """``token`` re-encrypted with the first key (``TokenDecryptError`` if none opens it)."""
        try:
            return self._all.rotate(token)
        except (InvalidToken, TypeError) as exc:
            raise TokenDecryptError(
                "a stored platform token cannot be re-encrypted: none of the configured keys "
                f"(key ids {', '.join(self.key_ids)}) opens it"
            ) from exc
