"""The reply chunker cuts where speech can start early and sound natural."""

from agent.chunker import ChunkerSettings, SentenceChunker, clean_for_speech


def feed_all(text: str, step: int = 3, settings: ChunkerSettings | None = None) -> list[str]:
    c = SentenceChunker(settings)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += c.feed(text[i : i + step])
    return out + c.flush()


def test_first_chunk_cut_at_clause_then_sentences() -> None:
    text = (
        "Of course my friend, the capital of France is Paris. "
        "It is known for art, food and fashion."
    )
    assert feed_all(text) == [
        "Of course my friend,",
        "the capital of France is Paris.",
        "It is known for art, food and fashion.",
    ]


def test_short_first_clause_is_not_cut() -> None:
    assert feed_all("Yes, it is. Bye!") == ["Yes, it is.", "Bye!"]


def test_abbreviations_initials_and_decimals_do_not_end_sentences() -> None:
    text = "Dr. Smith met J. Doe at 3.5 p.m. today in the U.S. office. Then they left."
    chunks = feed_all(text, step=1)
    assert chunks == [
        "Dr. Smith met J. Doe at 3.5 p.m. today in the U.S. office.",
        "Then they left.",
    ]


def test_long_text_without_punctuation_is_cut_at_spaces() -> None:
    text = " ".join(["word"] * 100)
    chunks = feed_all(text, settings=ChunkerSettings(max_chars=60))
    assert all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks) == text


def test_markdown_and_emoji_are_removed() -> None:
    assert clean_for_speech("**Great** news 🎉 `code`") == "Great news code"
    assert feed_all("## Title\n- item one. ") == ["Title item one."]


def test_flush_drops_punctuation_only_rest() -> None:
    c = SentenceChunker()
    assert c.feed("Hello there. ") == ["Hello there."]
    assert c.feed("...") == []
    assert c.flush() == []
