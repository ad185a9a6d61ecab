"""Each chapter is one self-contained file, so a few functions are written in both on purpose. Such a copy
carries the line `# Copied from char_gpt.py` just above it, and this test fails when it is no longer
identical to the function of the same name in that file (the single-model-file policy of Hugging Face
transformers, at our scale)."""

import ast
import re

import pytest
from helpers import REPO

CHAPTERS = ["char_gpt.py", "char_rnn.py", "micrograd.py"]
MARKER = re.compile(r"^# Copied from (\w+\.py)\s*$")


def definitions(path):
    """{name: source text, decorators included} of every top-level function, class and assignment."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = {}
    for node in ast.parse(text).body:
        names = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                 [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        for name in names:
            found[name] = (first, "\n".join(lines[first - 1:node.end_lineno]))
    return found


def marked_copies():
    """(copy's file, name, source file) for every marker: the definition that starts on the next line."""
    out = []
    for chapter in CHAPTERS:
        path = REPO / chapter
        lines = path.read_text(encoding="utf-8").splitlines()
        starts = {first: name for name, (first, _) in definitions(path).items()}
        for i, line in enumerate(lines, start=1):
            m = MARKER.match(line)
            if m:
                assert i + 1 in starts, f"{chapter}:{i}: the marker is not right above a definition"
                out.append((chapter, starts[i + 1], m.group(1)))
    return out


COPIES = marked_copies()


def test_there_are_marked_copies():
    assert len(COPIES) >= 3


@pytest.mark.parametrize("chapter, name, source", COPIES, ids=[f"{c}:{n}" for c, n, _ in COPIES])
def test_a_marked_copy_is_identical_to_its_source(chapter, name, source):
    assert source != chapter, f"{chapter}: {name} is marked as copied from its own file"
    original = definitions(REPO / source).get(name)
    assert original, f"{source} has no {name} for {chapter}'s copy"
    assert definitions(REPO / chapter)[name][1] == original[1], (
        f"{chapter}'s {name} differs from {source}'s: change both, or drop the marker if they differ on purpose")
