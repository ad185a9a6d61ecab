"""Checks on the training text ``input.txt`` (built by scripts/build_input.py).

The file should look like char-rnn's tiny-shakespeare: speeches separated by one blank line, each
one a speaker line (``FIRST CITIZEN:``) followed by the lines of the speech.
"""

import re
from collections import Counter
from pathlib import Path

import pytest

INPUT = Path(__file__).resolve().parent.parent / "input.txt"
SPEAKER = re.compile(r"^[A-Z][A-Z' .-]+:$")


@pytest.fixture(scope="module")
def raw() -> bytes:
    assert INPUT.is_file(), f"{INPUT} is missing; rebuild it with scripts/build_input.py"
    return INPUT.read_bytes()


@pytest.fixture(scope="module")
def text(raw: bytes) -> str:
    return raw.decode("utf-8")  # raises (and so fails) on invalid UTF-8


@pytest.fixture(scope="module")
def speeches(text: str) -> list[list[str]]:
    return [chunk.split("\n") for chunk in text.rstrip("\n").split("\n\n")]


def test_is_utf8_with_unix_newlines(raw: bytes):
    raw.decode("utf-8")
    assert b"\r" not in raw
    assert b"\t" not in raw


def test_length_is_about_1_1_million_characters(text: str):
    assert 1_000_000 <= len(text) <= 1_200_000, len(text)


def test_vocabulary_is_small_and_plain(text: str):
    vocab = set(text)
    assert 40 <= len(vocab) < 100, sorted(vocab)
    assert all(ch == "\n" or " " <= ch <= "~" for ch in vocab), sorted(ch for ch in vocab if ord(ch) > 126)
    # letters of both cases plus the usual punctuation
    assert set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n") <= vocab


def test_single_trailing_newline_and_no_trailing_spaces(text: str):
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert not text.startswith("\n")
    bad = [i for i, line in enumerate(text.split("\n"), 1) if line != line.rstrip()]
    assert not bad, f"trailing whitespace on lines {bad[:10]}"
    assert "\n\n\n" not in text, "speeches are separated by exactly one blank line"


def test_every_speech_is_a_speaker_line_then_text(speeches: list[list[str]]):
    assert len(speeches) > 5000
    not_speakers = [s[0] for s in speeches if not SPEAKER.match(s[0])]
    assert not not_speakers, not_speakers[:10]
    empty = [s[0] for s in speeches if len(s) < 2 or not all(line.strip() for line in s[1:])]
    assert not empty, f"speeches without text: {empty[:10]}"


def test_speaker_names_look_like_tiny_shakespeare(text: str, speeches: list[list[str]]):
    assert text.startswith("FIRST CITIZEN:\n")
    names = Counter(s[0][:-1] for s in speeches)
    assert len(names) > 100
    for name in ["HAMLET", "ROMEO", "JULIET", "MACBETH", "CORIOLANUS", "FIRST CITIZEN", "ALL"]:
        assert names[name] > 10, name
    # abbreviations from the source editions (Ham., Glou., 1 Clown.) were spelled out
    for abbreviation in ["HAM", "HOR", "GLOU", "EDG", "POL"]:
        assert names[abbreviation] == 0, abbreviation
    # speaker lines appear only at the start of a speech: none hide inside one
    inside = [line for s in speeches for line in s[1:] if SPEAKER.match(line) and line[:-1] in names]
    assert len(inside) < 10, inside[:10]


def test_no_gutenberg_licence_or_front_matter(text: str):
    lowered = text.lower()
    phrases = ["project gutenberg", "www.gutenberg", "gutenberg", "e-text", "dramatis personae",
               "persons represented", "by william shakespeare", "copyright"]
    found = [phrase for phrase in phrases if phrase in lowered]
    assert not found, found
    assert not re.search(r"^THE END\.?$", text, flags=re.MULTILINE)


def test_stage_directions_and_headings_removed(text: str):
    assert "[" not in text and "]" not in text and "{" not in text and "}" not in text
    headings = re.findall(r"^(?:ACT|SCENE|Act|Scene) [IVX\d]+\b.*$", text, flags=re.MULTILINE)
    assert not headings, headings[:5]
    directions = re.findall(r"^(?:Exit|Exeunt|Enter|Re-enter)\b.*$", text, flags=re.MULTILINE)
    assert len(directions) < 5, directions
