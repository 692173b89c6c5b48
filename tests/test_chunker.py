"""Pure unit tests for the streaming TTS text chunker."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.call.chunker import ChunkerConfig, TextChunker, clean_for_speech

DEFAULT = ChunkerConfig()
# Every sentence end is a cut: isolates the boundary rules from the length rules.
EVERY_SENTENCE = ChunkerConfig(first_min_chars=0, min_chars=0)
SMALL = ChunkerConfig(first_min_chars=5, min_chars=15, max_chars=40)


def chunk(text: str, config: ChunkerConfig = DEFAULT) -> list[str]:
    """Segments of ``text`` fed one character at a time; also checks the one-delta result agrees."""
    streamed = TextChunker(config)
    per_char = [segment for ch in text for segment in streamed.feed(ch)] + streamed.flush()
    whole = TextChunker(config)
    assert per_char == whole.feed(text) + whole.flush()
    return per_char


def chunk_split(text: str, cuts: list[int], config: ChunkerConfig) -> list[str]:
    chunker = TextChunker(config)
    bounds = [0, *sorted(cuts), len(text)]
    out = [segment for a, b in itertools.pairwise(bounds) for segment in chunker.feed(text[a:b])]
    return out + chunker.flush()


# --- length rules -------------------------------------------------------------------------------------------


def test_first_segment_cut_at_first_clause_after_minimum() -> None:
    text = "Let me check that for you, one moment please. I will be right back with the answer."
    assert chunk(text) == [
        "Let me check that for you,",
        "one moment please. I will be right back with the answer.",
    ]


def test_first_segment_skips_clause_boundaries_before_minimum() -> None:
    text = "Of course, happy to help. Your table for four is booked for Friday at seven. Anything else?"
    assert chunk(text) == [
        "Of course, happy to help.",
        "Your table for four is booked for Friday at seven.",
        "Anything else?",
    ]


def test_first_segment_cut_at_em_dash_without_space() -> None:
    assert chunk("I'd be glad to help—what's your name?") == ["I'd be glad to help—", "what's your name?"]


def test_en_dash_is_a_clause_boundary_only_when_spaced() -> None:
    assert chunk("Opening hours are 9–5 – every day of the week.", SMALL) == [
        "Opening hours are 9–5 –",
        "every day of the week.",
    ]


def test_later_short_sentences_join_up_to_min_chars() -> None:
    text = "Hello there, my friend. Yes. Sure. Maybe. I think we should go now, today. OK."
    assert chunk(text) == [
        "Hello there,",
        "my friend. Yes. Sure. Maybe. I think we should go now, today.",
        "OK.",
    ]


def test_later_clause_boundaries_do_not_cut() -> None:
    text = "Right, so here we are. First, we wait; then, we see what happens next, and after that we go."
    assert chunk(text) == [
        "Right, so here we are.",
        "First, we wait; then, we see what happens next, and after that we go.",
    ]


def test_max_chars_cuts_run_on_at_last_clause_boundary() -> None:
    text = "Okay, this sentence runs on and on, and it keeps running for quite a while longer than allowed."
    segments = chunk(text, SMALL)
    assert segments == [
        "Okay,",
        "this sentence runs on and on,",  # the last clause boundary before max_chars
        "and it keeps running for quite a while",  # no clause boundary: the last word before max_chars
        "longer than allowed.",
    ]
    assert all(len(s) <= SMALL.max_chars for s in segments)


def test_max_chars_falls_back_to_a_word_never_inside_a_url() -> None:
    url = "https://example.com/a/very/long/path/that/goes/on/and/on?x=1"
    assert chunk(f"Hi. Please open {url} in your browser now.", SMALL) == [
        "Hi. Please open",  # "Hi." is under first_min_chars; a word beats a clause cut this early
        url,
        "in your browser now.",
    ]


# --- boundary rules -----------------------------------------------------------------------------------------

ABBREVIATIONS = [
    "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "Jr.", "Sr.", "vs.", "etc.", "e.g.", "i.e.",
    "a.m.", "p.m.", "U.S.", "No.", "approx.", "Inc.", "Ltd.", "DR.", "E.G.", "(e.g.",
]  # fmt: skip


@pytest.mark.parametrize("abbreviation", ABBREVIATIONS)
def test_abbreviation_does_not_end_a_sentence(abbreviation: str) -> None:
    text = f"We met {abbreviation} Brown there. Then we left."
    assert chunk(text, EVERY_SENTENCE) == [f"We met {abbreviation} Brown there.", "Then we left."]


def test_period_before_lowercase_does_not_end_a_sentence() -> None:
    text = "Bring pears etc. and plums. Room No. 5 is free. See p. 12 and Fig. 3 first. Thanks."
    assert chunk(text, EVERY_SENTENCE) == [
        "Bring pears etc. and plums.",
        "Room No. 5 is free.",
        "See p. 12 and Fig. 3 first.",
        "Thanks.",
    ]


def test_decimals_amounts_and_times_stay_whole() -> None:
    text = "We have 1,000 seats at 10:30 for $4.99 each, or 3.5 credits. Great."
    assert chunk(text, EVERY_SENTENCE) == ["We have 1,000 seats at 10:30 for $4.99 each,", "or 3.5 credits.", "Great."]


def test_amount_at_sentence_end_is_a_boundary() -> None:
    assert chunk("That costs $4.99. Shall I book it?", EVERY_SENTENCE) == ["That costs $4.99.", "Shall I book it?"]


def test_numbered_list_markers_stay_with_their_items() -> None:
    text = "Here is how:\n1. Open the app.\n2. Tap Settings.\n10. Save."
    assert chunk(text) == ["Here is how:", "1. Open the app.", "2. Tap Settings.", "10. Save."]


def test_inline_list_marker_after_a_sentence_stays_with_its_item() -> None:
    text = "Steps follow. 1. Open the app. 2. Tap it."
    assert chunk(text, EVERY_SENTENCE) == ["Steps follow.", "1. Open the app.", "2. Tap it."]
    assert chunk("Steps: 1. Open it.", EVERY_SENTENCE) == ["Steps:", "1. Open it."]


def test_number_ending_a_sentence_is_a_boundary() -> None:
    assert chunk("I counted to 10. Then I stopped.", EVERY_SENTENCE) == ["I counted to 10.", "Then I stopped."]


def test_urls_and_emails_stay_whole() -> None:
    text = "Go to example.com/path?x=1 now. Or write to help@acme.co.uk. Bye!"
    assert chunk(text, EVERY_SENTENCE) == ["Go to example.com/path?x=1 now.", "Or write to help@acme.co.uk.", "Bye!"]


def test_ellipsis_before_lowercase_continues_the_sentence() -> None:
    text = "Well... let me think. Hmm… maybe. Wait... That works."
    assert chunk(text, EVERY_SENTENCE) == ["Well... let me think.", "Hmm… maybe.", "Wait...", "That works."]


def test_closing_quote_stays_with_its_sentence() -> None:
    assert chunk('He said "yes." Then he left.', EVERY_SENTENCE) == ['He said "yes."', "Then he left."]


def test_newline_is_always_a_boundary() -> None:
    assert chunk("Sure\nOkay then") == ["Sure", "Okay then"]


def test_unspeakable_pieces_are_never_returned() -> None:
    assert chunk("   ") == []
    assert chunk("🎉 !!!") == []
    assert chunk("***\n---\n") == []
    assert chunk("Done.\n🎉🎉\n...") == ["Done."]


def test_boundary_waits_for_the_next_character() -> None:
    chunker = TextChunker()
    assert chunker.feed("Let me see that,") == []
    assert chunker.feed(" I") == ["Let me see that,"]
    assert chunker.feed(" think you want Dr.") == []
    assert chunker.feed(" Smith. He is") == []  # a sentence, but under min_chars: joined with the next
    assert chunker.feed(" in at nine and can see you at ten.") == []
    assert chunker.feed(" Bye") == ["I think you want Dr. Smith. He is in at nine and can see you at ten."]
    assert chunker.flush() == ["Bye"]


def test_empty_deltas_are_harmless() -> None:
    chunker = TextChunker()
    assert chunker.feed("") == []
    assert [s for d in ["", "Hi", "", " there.", ""] for s in chunker.feed(d)] == []
    assert chunker.flush() == ["Hi there."]
    assert chunker.flush() == []


def test_flush_resets_for_a_new_stream() -> None:
    chunker = TextChunker()
    chunker.feed("**Half a")
    assert chunker.flush() == ["Half a"]
    assert chunker.feed("- item") == []
    assert chunker.flush() == ["item"]


@pytest.mark.parametrize(
    "kwargs", [{"first_min_chars": -1}, {"min_chars": 300}, {"first_min_chars": 300}, {"max_chars": 1}]
)
def test_config_is_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="chars"):
        ChunkerConfig(**kwargs)


# --- cleaning -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**bold** and *it* and _it_ and __b__ and ***both***", "bold and it and it and b and both"),
        ("Run `pip install` now", "Run pip install now"),
        ("```python\nprint(1)\n```\nDone", "print(1) Done"),
        ("~~~\ncode\n~~~", "code"),
        ("# Heading\n## Sub heading\n#1 fan", "Heading Sub heading #1 fan"),
        ("> quoted\n> > nested", "quoted nested"),
        ("- one\n* two\n+ three\n• four\n  - nested", "one two three four nested"),
        ("-5 degrees, +1 and *not a bullet*", "-5 degrees, +1 and not a bullet"),
        ("See [the docs](https://example.com/a_(b)) now", "See the docs now"),
        ("![logo](http://x.co/logo.png) [1] [a](b c)", "logo 1 a(b c)"),
        ("| Name | Age |\n|---|:---:|\n| Ann | 30 |", "Name, Age Ann, 30"),
        ("a | b", "a b"),
        ("snake_case, 2*3, my_file.txt", "snake_case, 2*3, my_file.txt"),
        ("~~old~~ new, ~5 min", "old new, ~5 min"),
        ("a\n\n---\n\n* * *\n___\nb", "a b"),
        ("  lots   of\t\tspace \r\n\n here ", "lots of space here"),
        ("1. Step one\n2) Step two", "1. Step one 2) Step two"),
    ],
)
def test_clean_for_speech_markdown(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("Great job! 🎉👍🏽", "Great job!"),
        ("Family 👨‍👩‍👧 time ❤️ ok", "Family time ok"),
        ("Flag 🇺🇸 and keycap 1️⃣ and ⭐ star ✅", "Flag and keycap 1 and star"),
        ("Plain © text → stays", "Plain © text → stays"),
    ],
)
def test_clean_for_speech_emoji(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw) == spoken


def test_markdown_split_across_deltas_is_stripped() -> None:
    chunker = TextChunker(EVERY_SENTENCE)
    deltas = ["Use *", "*Sett", "ings*", "* or [the ", "docs](http", "s://x.co/a", ") 🎉", "\u200d", "🎉. Ok"]
    assert [s for d in deltas for s in chunker.feed(d)] + chunker.flush() == ["Use Settings or the docs .", "Ok"]


# --- properties ---------------------------------------------------------------------------------------------

FRAGMENTS = [
    "Hello", "there", "Dr.", "e.g.", "U.S.", "No.", "3.5", "$4.99", "1,000", "10:30", "a.m.", "etc.",
    "1.", "12.", "**", "*", "_", "__", "`", "```", "~~", "~", "# ", "## ", "> ", "- ", "* ", "+ ",
    "[link](http://x.co/a_(b))", "![i](u)", "[", "](", ")", "|", "| a | b |", "|---|", "!", "?", ".", "...",
    "…", ",", ";", ":", "—", " – ", "\n", "\n\n", "\n1. ", "  ", "\t", "🎉", "👍🏽", "👨‍👩‍👧", "🇺🇸", "\u200d",
    "example.com/path?x=1", "help@acme.co.uk", "The", "quick", "brown", "fox", "and", "then",
]  # fmt: skip
ALPHABET = "aZ1 .,!?\n*_`#>-|[]()…—🎉\u200d"

texts = st.lists(st.sampled_from(FRAGMENTS) | st.text(ALPHABET, max_size=4), max_size=40).map(" ".join) | st.lists(
    st.sampled_from(FRAGMENTS) | st.text(ALPHABET, max_size=4), max_size=40
).map("".join)
configs = st.sampled_from([DEFAULT, SMALL, EVERY_SENTENCE, ChunkerConfig(first_min_chars=3, min_chars=8, max_chars=12)])


@settings(max_examples=400, deadline=None)
@given(text=texts, config=configs, data=st.data())
def test_any_split_gives_the_same_segments(text: str, config: ChunkerConfig, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    whole = TextChunker(config)
    assert chunk_split(text, cuts, config) == whole.feed(text) + whole.flush()


@settings(max_examples=400, deadline=None)
@given(text=texts, config=configs)
def test_segments_lose_and_duplicate_nothing(text: str, config: ChunkerConfig) -> None:
    segments = chunk(text, config)
    joined = "".join("".join(segments).split())
    cleaned = "".join(clean_for_speech(text).split())
    # Only a trailing piece with nothing to say (punctuation, emoji leftovers) may be left out.
    assert cleaned.startswith(joined)
    assert not any(ch.isalnum() for ch in cleaned[len(joined) :])
    for segment in segments:
        assert segment == segment.strip()
        assert "\n" not in segment
        assert "  " not in segment
        assert any(ch.isalnum() for ch in segment)


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.text("abcdefghij", min_size=1, max_size=8), min_size=1, max_size=60))
def test_segments_respect_max_chars_for_plain_words(words: list[str]) -> None:
    config = ChunkerConfig(first_min_chars=5, min_chars=15, max_chars=30)
    assert all(len(segment) <= config.max_chars for segment in chunk(" ".join(words), config))


@pytest.mark.parametrize(
    ("deltas", "released"),
    [
        (["Are you open on", " Sundays? "], ["Are you open on Sundays?"]),  # "? ": decided without the next word
        (["Wow, that is great! "], ["Wow, that is great!"]),
        (["Good question, let me see; "], ["Good question,"]),  # a clause mark and a space
        (["We open at nine. "], []),  # a dot waits for the next word: "etc. and" is not a sentence end
        (["We open at nine?"], []),  # no space yet: '?"' or "?x=1" could follow
    ],
)
def test_a_sentence_is_released_as_soon_as_the_next_character_cannot_change_the_cut(
    deltas: list[str], released: list[str]
) -> None:
    chunker = TextChunker()
    assert [segment for delta in deltas for segment in chunker.feed(delta)] == released


def test_an_early_cut_swallows_the_held_space() -> None:
    chunker = TextChunker()
    assert chunker.feed("Is it open? ") == []  # shorter than the first segment's minimum
    assert chunker.feed("Yes, it is open today? ") == ["Is it open? Yes,"]
    assert chunker.feed("\nNext line.") == ["it is open today?"]
    assert chunker.flush() == ["Next line."]
