"""Songs the loopback music platforms know, and the matching their search does.

Forty well-known songs (title, artists, album), enough for the benchmark's
workload of distinct songs; ids are derived from the title so every fake and
every run names a song the same way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_WORD = re.compile(r"[a-z0-9]+")


def base62_id(seed: str, length: int = 22) -> str:
    """A Spotify-shaped id (base-62, 22 characters) derived from ``seed``."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    out = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(out)


def numeric_id(seed: str) -> int:
    """A SoundCloud-shaped numeric id derived from ``seed``."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big")


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (apostrophes dropped: "don't" -> "dont")."""
    return _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))


@dataclass(frozen=True, slots=True)
class Song:
    """A song of the catalogue."""

    title: str
    artists: tuple[str, ...]
    album: str
    duration_ms: int

    @property
    def spotify_id(self) -> str:
        """Its Spotify id."""
        return base62_id("track:" + self.title)

    @property
    def soundcloud_id(self) -> int:
        """Its SoundCloud id."""
        return numeric_id("track:" + self.title)

    def score(self, query: str) -> int:
        """How well ``query`` matches (0: not at all): every word of the query must occur
        in the title, artists or album; words of the title count double."""
        wanted = [w for w in words(query) if w not in _SEARCH_STOPWORDS]
        if not wanted:
            return 0
        title = set(words(self.title))
        other = set(words(" ".join(self.artists) + " " + self.album))
        if not all(w in title or w in other for w in wanted):
            return 0
        return sum(2 if w in title else 1 for w in wanted) + (
            5 if " ".join(words(self.title)) in " ".join(words(query)) else 0
        )


_SEARCH_STOPWORDS: Final = frozenset({"by", "the", "a", "feat", "ft"})


def search(songs: tuple[Song, ...], query: str, limit: int, offset: int = 0) -> list[Song]:
    """Songs matching ``query``, best first (ties in catalogue order)."""
    scored = [(s.score(query), i, s) for i, s in enumerate(songs)]
    hits = sorted((x for x in scored if x[0] > 0), key=lambda x: (-x[0], x[1]))
    return [s for _, _, s in hits[offset : offset + limit]]


CATALOGUE: Final[tuple[Song, ...]] = (
    Song("Shape of You", ("Ed Sheeran",), "Divide", 233712),
    Song("Perfect", ("Ed Sheeran",), "Divide", 263400),
    Song("Blinding Lights", ("The Weeknd",), "After Hours", 200040),
    Song("Bohemian Rhapsody", ("Queen",), "A Night at the Opera", 354320),
    Song("Billie Jean", ("Michael Jackson",), "Thriller", 293827),
    Song("Rolling in the Deep", ("Adele",), "21", 228093),
    Song("Someone Like You", ("Adele",), "21", 285240),
    Song("Hotel California", ("Eagles",), "Hotel California", 391376),
    Song("Smells Like Teen Spirit", ("Nirvana",), "Nevermind", 301920),
    Song("Uptown Funk", ("Mark Ronson", "Bruno Mars"), "Uptown Special", 269667),
    Song("Bad Guy", ("Billie Eilish",), "When We All Fall Asleep", 194088),
    Song("Levitating", ("Dua Lipa",), "Future Nostalgia", 203064),
    Song("Watermelon Sugar", ("Harry Styles",), "Fine Line", 174000),
    Song("Dance Monkey", ("Tones and I",), "The Kids Are Coming", 209438),
    Song("Old Town Road", ("Lil Nas X", "Billy Ray Cyrus"), "7", 157067),
    Song("Thinking Out Loud", ("Ed Sheeran",), "Multiply", 281560),
    Song("Hey Jude", ("The Beatles",), "Hey Jude", 431333),
    Song("Imagine", ("John Lennon",), "Imagine", 183867),
    Song("Wonderwall", ("Oasis",), "Morning Glory", 258773),
    Song("Sweet Child O' Mine", ("Guns N' Roses",), "Appetite for Destruction", 356067),
    Song("Take On Me", ("a-ha",), "Hunting High and Low", 225280),
    Song("Africa", ("Toto",), "Toto IV", 295893),
    Song("Dancing Queen", ("ABBA",), "Arrival", 230400),
    Song("Don't Stop Me Now", ("Queen",), "Jazz", 209413),
    Song("Lose Yourself", ("Eminem",), "8 Mile", 326467),
    Song("Halo", ("Beyonce",), "I Am... Sasha Fierce", 261640),
    Song("Umbrella", ("Rihanna", "Jay-Z"), "Good Girl Gone Bad", 275987),
    Song("Viva La Vida", ("Coldplay",), "Viva la Vida", 242373),
    Song("Yellow", ("Coldplay",), "Parachutes", 266773),
    Song("Happy", ("Pharrell Williams",), "G I R L", 232720),
    Song("Rolling Stone", ("Bob Dylan",), "Highway 61 Revisited", 369600),
    Song("Stay With Me", ("Sam Smith",), "In the Lonely Hour", 172724),
    Song("Counting Stars", ("OneRepublic",), "Native", 257267),
    Song("Believer", ("Imagine Dragons",), "Evolve", 204347),
    Song("Havana", ("Camila Cabello", "Young Thug"), "Camila", 217307),
    Song("Despacito", ("Luis Fonsi", "Daddy Yankee"), "Vida", 229360),
    Song("Shallow", ("Lady Gaga", "Bradley Cooper"), "A Star Is Born", 215733),
    Song("Rather Be", ("Clean Bandit", "Jess Glynne"), "New Eyes", 227833),
    Song("Roar", ("Katy Perry",), "Prism", 223546),
    Song("Toxic", ("Britney Spears",), "In the Zone", 198800),
)
"""The songs every loopback platform serves."""
