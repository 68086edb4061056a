"""Cache key normalization: equivalent requests meet on the same key.

"Play ShaPE _oF-You" and "play shape of you song" both become
"play shape of you": case folded, accents removed, punctuation, underscores
and dashes turned into spaces, whitespace collapsed, and filler words dropped.
"""

from __future__ import annotations

import re
import unicodedata

FILLER_WORDS = frozenset(
    {
        "please",
        "pls",
        "song",
        "track",
        "tune",
        "um",
        "uh",
        "umm",
        "er",
        "hey",
        "ok",
        "okay",
        "just",
        "kindly",
    }
)
_POLITE_LEAD = re.compile(r"^(?:(?:can|could|would|will) you )+")
_NON_WORD = re.compile(r"[^\w\s']|_")
_SPACE = re.compile(r"\s+")


def normalize_key(text: str, fillers: frozenset[str] = FILLER_WORDS) -> str:
    """The canonical form of a request used as a cache key."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = _NON_WORD.sub(" ", folded).replace("'", "")
    words = [w for w in _SPACE.split(folded) if w and w not in fillers]
    return _POLITE_LEAD.sub("", " ".join(words))
