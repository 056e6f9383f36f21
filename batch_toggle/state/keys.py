"""Keyed hashes: review keys and API keys as a store knows them, never in the clear.

A review key is stored only as HMAC-SHA256 under the store's own random secret, truncated to
128 bits: the same key hashes differently in two stores, so a leaked store cannot be matched
against a list of keys from elsewhere. An API key is known to a shared store only by its
fingerprint under the same secret: enough to keep two keys' budgets apart, useless to call Logis.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

HASH_HEX_CHARS = 32  # 128 bits of the HMAC: plenty to tell keys apart, half the bytes on disk
_HASH_RE = re.compile(rf"[0-9a-f]{{{HASH_HEX_CHARS}}}")


def is_review_key_hash(text: str) -> bool:
    """True for what `KeyHasher.review_key_hash` gives (and so never for a raw review key)."""
    return _HASH_RE.fullmatch(text) is not None


class KeyHasher:
    """The keyed hashes of one store (its secret)."""

    def __init__(self, secret: bytes) -> None:
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)

    def review_key_hash(self, key: str) -> str:
        """The keyed hash under which this store knows a (normalised) review key.

        Stable for one store, different between stores; 32 lowercase hex digits."""
        h = self._hmac.copy()
        h.update(key.encode("utf-8"))
        return h.hexdigest()[:HASH_HEX_CHARS]

    def review_key_hashes(self, keys: Iterable[str]) -> list[str]:
        """`review_key_hash` of many keys (about 1 µs each)."""
        base = self._hmac
        out = []
        for key in keys:
            h = base.copy()
            h.update(key.encode("utf-8"))
            out.append(h.hexdigest()[:HASH_HEX_CHARS])
        return out

    def api_key_fingerprint(self, api_key: str) -> str:
        """What a shared budget is kept under: distinct per key, domain-separated from the
        review keys' hashes, and no use to anyone without the key itself."""
        h = self._hmac.copy()
        h.update(b"api-key\x00" + api_key.encode("utf-8"))
        return h.hexdigest()[:HASH_HEX_CHARS]
