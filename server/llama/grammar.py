"""GBNF grammars into llama.cpp, only within what its parser survives.

llama.cpp parses a grammar with one C++ stack frame pair per nested group: measured here
at ~450 bytes a level, 30,000 nested groups overflowed an 8 MiB thread stack and killed
the process. `sampler.grammar_sampler` is the one place a grammar reaches llama.cpp, and it
checks the text here first: size, nesting, repetition counts and token ids.
"""

from __future__ import annotations

# Far above any hand-written or schema-generated grammar Hearth has seen (tool grammars
# for a dozen tools are ~20 KiB), far below what takes llama.cpp long to parse.
MAX_GRAMMAR_BYTES = 512 * 1024
# ~450 KiB of C stack: safe on a 512 KiB thread stack, let alone the usual 8 MiB.
MAX_NESTING = 1000
# llama.cpp's own MAX_REPETITION_THRESHOLD: it refuses larger counts itself (and silently
# treats a larger maximum as unbounded); refusing here says so plainly.
MAX_REPETITION = 2000


class GrammarError(ValueError):
    """The grammar is refused: it does not parse, or it is over a limit (the message
    says which)."""


def check_grammar(text: str, n_vocab: int) -> None:
    """Raise GrammarError when the GBNF text is over a limit. Linear in its length."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"it is {size} bytes long; the limit is {MAX_GRAMMAR_BYTES}")
    if "\0" in text:
        raise GrammarError("it contains a NUL character")
    depth = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":  # comment to the end of the line
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c in '"[':  # literal or character class; a backslash escapes one character
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise GrammarError(f"it nests groups deeper than {MAX_NESTING} levels")
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == "{":
            j = text.find("}", i)
            end = n if j < 0 else j
            for part in text[i + 1 : end].split(","):
                part = part.strip()
                if part.isdigit() and int(part) > MAX_REPETITION:
                    raise GrammarError(
                        f"it repeats an item {part} times; the limit is {MAX_REPETITION}"
                    )
            i = end
        elif c == "<" and text.startswith("<[", i):
            j = text.find("]", i)
            digits = text[i + 2 : j if j >= 0 else n].strip()
            if digits.isdigit() and int(digits) >= n_vocab:
                raise GrammarError(
                    f"it names token {digits}, outside the vocabulary (0..{n_vocab - 1})"
                )
            i = n if j < 0 else j
        i += 1
