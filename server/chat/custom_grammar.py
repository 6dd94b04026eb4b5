"""A custom tool's input grammar (OpenAI's `format: {"type": "grammar"}`, Lark or regex
syntax) as GBNF rules, so the sampler enforces it the way it enforces JSON schemas.

Regular expressions are read by Python's own regex parser (`re._parser`, the syntax `re`
accepts, close to the Rust syntax OpenAI documents); Lark grammars by Lark's own grammar
loader, whose EBNF trees are written out directly (not Lark's compiled BNF, which turns
`x*` into left recursion that llama.cpp refuses). What GBNF cannot say is refused with a
message naming it: lookarounds, backreferences, word boundaries, anchors inside a pattern,
atomic groups, possessive repeats, Lark's %declare and imports other than `common`.

`\\d`, `\\w` and `\\s` are their ASCII classes: every string generated matches the pattern,
though not every string the pattern matches can be generated.
"""

from __future__ import annotations

import re
import re._constants as sre
import re._parser as sre_parse
from collections.abc import Callable, Iterable
from typing import Any

from lark import Token, Tree
from lark.exceptions import LarkError
from lark.grammar import NonTerminal, Terminal
from lark.lexer import PatternRE
from lark.load_grammar import _literal_to_pattern, load_grammar

from server.llama.grammar import MAX_REPETITION

# A definition longer than any hand-written grammar needs; bounds the loaders' work.
MAX_DEFINITION_CHARS = 64 * 1024
# Lark templates instantiate a rule per distinct argument list; a recursive template
# could ask for them without end.
MAX_TEMPLATE_INSTANCES = 256

_IMPORT = re.compile(r"^\s*%import\s+([\w.]*)", re.MULTILINE)
_DECLARE = re.compile(r"^\s*%declare\b", re.MULTILINE)

_CLASSES = {
    sre.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre.CATEGORY_SPACE: [(0x20, 0x20), (0x09, 0x0D)],
    sre.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}
_NEGATED = {
    sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT,
    sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE,
    sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
}
# A double-quoted string whose backslash escapes any character but a newline.
_ESCAPED_STRING = '"\\x22" ([^\\x22\\x5C\\x0A] | "\\x5C" [^\\x0A])* "\\x22"'
_LARK_FLAGS = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}


class CustomGrammarError(ValueError):
    """The definition cannot be a grammar here (the message says why)."""


def input_rules(syntax: str, definition: str, prefix: str) -> str:
    """GBNF rules whose rule `{prefix}root` matches exactly what `definition` allows; every
    rule name starts with `prefix`, so several tools' rules live in one grammar."""
    if not isinstance(definition, str) or not definition.strip():
        raise CustomGrammarError("the grammar definition is empty")
    if len(definition) > MAX_DEFINITION_CHARS:
        raise CustomGrammarError(
            f"the grammar definition is {len(definition)} characters; "
            f"the limit is {MAX_DEFINITION_CHARS}"
        )
    if syntax == "regex":
        return f"{prefix}root ::= {regex_expression(definition)}\n"
    if syntax == "lark":
        return _LarkWriter(definition, prefix).write()
    raise CustomGrammarError(f"unknown grammar syntax {syntax!r}: expected 'lark' or 'regex'")


# --- regular expressions ------------------------------------------------------------------


def regex_expression(pattern: str, flags: int = 0) -> str:
    """One GBNF expression matching what the (whole) pattern matches."""
    try:
        parsed = sre_parse.parse(pattern, flags)
    except re.error as e:
        raise CustomGrammarError(f"the regular expression does not parse: {e}") from None
    except RecursionError:
        raise CustomGrammarError("the regular expression nests too deeply") from None
    items = list(parsed)
    # Anchors at the very start and end say what the grammar says anyway: the whole input.
    while (
        items
        and items[0][0] is sre.AT
        and items[0][1]
        in (
            sre.AT_BEGINNING,
            sre.AT_BEGINNING_STRING,
        )
    ):
        items.pop(0)
    while items and items[-1][0] is sre.AT and items[-1][1] in (sre.AT_END, sre.AT_END_STRING):
        items.pop()
    try:
        return _sequence(items, parsed.state.flags)
    except RecursionError:
        raise CustomGrammarError("the regular expression nests too deeply") from None


def _sequence(items: Iterable[tuple[Any, Any]], flags: int) -> str:
    out: list[str] = []
    literal: list[int] = []  # a run of literal characters, written as one GBNF string
    for op, av in items:
        if op is sre.LITERAL and not (flags & re.IGNORECASE and _has_case(av)):
            literal.append(av)
            continue
        if literal:
            out.append(_string(literal))
            literal = []
        out.append(_item(op, av, flags))
    if literal:
        out.append(_string(literal))
    return " ".join(out) if out else '""'


def _item(op: Any, av: Any, flags: int) -> str:
    if op is sre.LITERAL:
        return _class([(av, av)], flags)
    if op is sre.NOT_LITERAL:
        return _class([(av, av)], flags, negate=True)
    if op is sre.ANY:
        return "[^\\x00]" if flags & re.DOTALL else "[^\\n]"
    if op is sre.IN:
        return _in(av, flags)
    if op is sre.CATEGORY:
        return _in([(sre.CATEGORY, av)], flags)
    if op is sre.BRANCH:
        return "(" + " | ".join(_sequence(alt, flags) for alt in av[1]) + ")"
    if op is sre.SUBPATTERN:
        _number, add, remove, sub = av
        return _group(_sequence(sub, (flags | add) & ~remove))
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, sub = av
        return _repeat(_group(_sequence(sub, flags)), low, None if high == sre.MAXREPEAT else high)
    refused = {
        sre.AT: "anchors or word boundaries inside the pattern",
        sre.ASSERT: "lookaround assertions",
        sre.ASSERT_NOT: "lookaround assertions",
        sre.GROUPREF: "backreferences",
        sre.GROUPREF_EXISTS: "conditional groups",
        sre.ATOMIC_GROUP: "atomic groups",
        sre.POSSESSIVE_REPEAT: "possessive repeats",
    }
    what = refused.get(op, str(op).lower())
    raise CustomGrammarError(f"the regular expression uses {what}, which a grammar cannot enforce")


_ATOM = re.compile(r'\[(?:\\.|[^\]\\])*\]|"(?:\\.|[^"\\])*"|[A-Za-z0-9-]+')


def _group(expression: str) -> str:
    """The expression as one item a quantifier can follow: as it is when it already is one
    (a class, a string, a rule name, a whole parenthesised group), else in parentheses.
    Needless groups matter: llama.cpp counts the rules inside a repeated group, times the
    repeat, against a limit of 2000."""
    if _ATOM.fullmatch(expression):
        return expression
    if expression.startswith("(") and _closing(expression, 0) == len(expression) - 1:
        return expression
    return f"({expression})"


def _closing(text: str, start: int) -> int:
    """Where the parenthesis opened at `start` closes (GBNF strings and classes skipped)."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < len(text) and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _repeat(item: str, low: int, high: int | None) -> str:
    for count in (low, high):
        if count is not None and count > MAX_REPETITION:
            raise CustomGrammarError(
                f"it repeats an item {count} times; the limit is {MAX_REPETITION}"
            )
    if (low, high) == (0, 1):
        return f"{item}?"
    if high is None:
        return {0: f"{item}*", 1: f"{item}+"}.get(low, f"{item}{{{low},}}")
    return f"{item}{{{low}}}" if low == high else f"{item}{{{low},{high}}}"


def _in(items: list[tuple[Any, Any]], flags: int) -> str:
    negate = bool(items) and items[0][0] is sre.NEGATE
    ranges: list[tuple[int, int]] = []
    complements: list[Any] = []  # \D, \W, \S inside a class
    for op, av in items[1:] if negate else items:
        if op is sre.LITERAL:
            ranges.append((av, av))
        elif op is sre.RANGE:
            ranges.append(av)
        elif op is sre.CATEGORY and av in _CLASSES:
            ranges.extend(_CLASSES[av])
        elif op is sre.CATEGORY and av in _NEGATED:
            complements.append(_NEGATED[av])
        else:
            raise CustomGrammarError(f"the character class holds {op} {av}, which is not supported")
    if not complements:
        return _class(ranges, flags, negate)
    if negate:
        raise CustomGrammarError("a negated class holding \\D, \\W or \\S is not supported")
    parts = [_class(_CLASSES[c], 0, negate=True) for c in complements]
    if ranges:
        parts.insert(0, _class(ranges, flags))
    return "(" + " | ".join(parts) + ")"


def _class(ranges: list[tuple[int, int]], flags: int, negate: bool = False) -> str:
    if flags & re.IGNORECASE:
        ranges = ranges + [r for lo, hi in ranges for r in _other_case(lo, hi)]
    body = "".join(
        _char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in sorted(set(ranges))
    )
    return f"[{'^' if negate else ''}{body}]"


def _other_case(lo: int, hi: int) -> list[tuple[int, int]]:
    """The other case of the letters in [lo, hi] (ASCII ranges whole; others per letter)."""
    out = []
    for a, z, shift in ((0x41, 0x5A, 0x20), (0x61, 0x7A, -0x20)):
        if lo <= z and hi >= a:
            out.append((max(lo, a) + shift, min(hi, z) + shift))
    if hi < 0x80 or hi - lo > 256:
        return out
    for cp in range(max(lo, 0x80), hi + 1):
        other = chr(cp).swapcase()
        if len(other) == 1 and other != chr(cp):
            out.append((ord(other), ord(other)))
    return out


def _has_case(cp: int) -> bool:
    swapped = chr(cp).swapcase()
    return len(swapped) == 1 and swapped != chr(cp)


def _string(codepoints: list[int]) -> str:
    return '"' + "".join(_char(cp) for cp in codepoints) + '"'


def _char(cp: int) -> str:
    """A character as GBNF writes it in a string or a class: letters and digits as they
    are, everything else escaped (GBNF knows no `\\-` or `\\^`, only \\x, \\u, \\U)."""
    if cp < 0x80 and chr(cp).isalnum():
        return chr(cp)
    if cp < 0x100:
        return f"\\x{cp:02X}"
    if cp < 0x10000:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


# --- Lark ---------------------------------------------------------------------------------


class _LarkWriter:
    """One Lark grammar's rules, reachable from `start`, as GBNF. In rule context every
    terminal may be followed by what %ignore names, as Lark's lexer skips it there."""

    def __init__(self, definition: str, prefix: str) -> None:
        for match in _IMPORT.finditer(definition):
            module = match.group(1)
            if module != "common" and not module.startswith("common."):
                raise CustomGrammarError(
                    f"%import {module or '?'}: only Lark's common terminals can be imported"
                )
        if _DECLARE.search(definition):
            raise CustomGrammarError("%declare names terminals no grammar can produce")
        try:
            grammar, _ = load_grammar(definition, "<custom tool grammar>", [], False)
        except LarkError as e:
            raise CustomGrammarError(f"the Lark grammar does not load: {e}") from None
        except RecursionError:
            raise CustomGrammarError("the Lark grammar nests too deeply") from None
        self.prefix = prefix
        self.rules = {name: (params, tree) for name, params, tree, _options in grammar.rule_defs}
        self.terminals = {name: tree for name, (tree, _priority) in grammar.term_defs}
        if "start" not in self.rules:
            raise CustomGrammarError("the Lark grammar has no 'start' rule")
        self.ignore: list[str] = list(grammar.ignore)
        self.written: dict[str, str] = {}  # GBNF rule name -> its body
        self.pending: list[tuple[str, Callable[[], str]]] = []
        self.instances: dict[tuple[str, tuple[str, ...]], str] = {}

    def write(self) -> str:
        self.written[f"{self.prefix}root"] = self._rule_ref("start")
        if self.ignore:
            self.written[f"{self.prefix}ig"] = self._ignored()
        while self.pending:
            name, body = self.pending.pop()
            if name not in self.written:
                self.written[name] = "..."  # reserved: a rule referring to itself is fine
                self.written[name] = body()
        return "".join(f"{name} ::= {body}\n" for name, body in self.written.items())

    def _ignored(self) -> str:
        # An ignored X+ (common.WS) becomes X* rather than (X+)*: the same strings, one way.
        alternatives = []
        for name in self.ignore:
            tree = self.terminals.get(name)
            if tree is None:
                raise CustomGrammarError(f"%ignore names {name}, which is not defined")
            inner = _only_plus(tree)
            alternatives.append(
                self._expr(inner, False, {}) if inner is not None else self._terminal_ref(name)
            )
        return "(" + " | ".join(alternatives) + ")*"

    def _rule_ref(self, name: str) -> str:
        if name not in self.rules:
            raise CustomGrammarError(f"rule {name!r} is used but not defined")
        params, tree = self.rules[name]
        if params:
            raise CustomGrammarError(f"template {name!r} is used without arguments")
        ref = f"{self.prefix}r-{name.replace('_', '-')}"
        self.pending.append((ref, lambda: self._expr(tree, True, {})))
        return ref

    def _terminal_ref(self, name: str) -> str:
        if name not in self.terminals or self.terminals[name] is None:
            raise CustomGrammarError(f"terminal {name!r} is used but not defined")
        ref = f"{self.prefix}t-{name.replace('_', '-')}"
        tree = self.terminals[name]
        if name == "ESCAPED_STRING" and "(?<!" in str(tree):
            # common.ESCAPED_STRING ends its body with a lookbehind (no odd run of
            # backslashes before the closing quote); said without one, as JSON says it.
            self.pending.append((ref, lambda: _ESCAPED_STRING))
        else:
            self.pending.append((ref, lambda: self._expr(tree, False, {})))
        return ref

    def _token(self, expression: str, in_rule: bool) -> str:
        """A terminal where it stands: in rule context followed by what %ignore skips
        (after, not before: the input starts with a token, as Lark's parse still accepts,
        rather than with the blank line a model likes to write after the header)."""
        return f"{expression} {self.prefix}ig" if in_rule and self.ignore else expression

    def _expr(self, tree: Any, in_rule: bool, args: dict[str, str]) -> str:
        if isinstance(tree, NonTerminal):
            if tree.name in args:
                return args[tree.name]
            if not in_rule:
                raise CustomGrammarError(f"terminal definitions cannot use rule {tree.name!r}")
            return self._rule_ref(tree.name)
        if isinstance(tree, Terminal):
            return self._token(self._terminal_ref(tree.name), in_rule)
        if not isinstance(tree, Tree):
            raise CustomGrammarError(f"unexpected part of a Lark grammar: {tree!r}")
        kids = tree.children
        if tree.data == "expansions":
            alternatives = [self._expr(k, in_rule, args) for k in kids]
            return (
                alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"
            )
        if tree.data == "expansion":
            return " ".join(self._expr(k, in_rule, args) for k in kids) or '""'
        if tree.data in ("value", "alias"):  # an alias (`-> name`) names the tree's node only
            return self._expr(kids[0], in_rule, args)
        if tree.data == "maybe":
            return f"{_group(self._expr(kids[0], in_rule, args))}?"
        if tree.data == "expr":
            item = _group(self._expr(kids[0], in_rule, args))
            op = str(kids[1])
            if op == "~":
                low = int(kids[2])
                high = int(kids[3]) if len(kids) > 3 else low
                return _repeat(item, low, high)
            return _repeat(item, *{"?": (0, 1), "*": (0, None), "+": (1, None)}[op])
        if tree.data == "literal":
            return self._token(self._literal(kids[0]), in_rule)
        if tree.data == "range":
            lo, hi = (_lark_string(k) for k in kids)
            if len(lo) != 1 or len(hi) != 1:
                raise CustomGrammarError("a Lark range needs single characters")
            return _class([(ord(lo), ord(hi))], 0)
        if tree.data == "template_usage":
            name, *values = kids
            return self._instance(name.name, [self._expr(v, in_rule, args) for v in values])
        if isinstance(tree, Token):
            raise CustomGrammarError(f"unexpected token in a Lark grammar: {tree}")
        raise CustomGrammarError(f"unsupported Lark construct {tree.data!r}")

    def _literal(self, token: Any) -> str:
        pattern = _literal_to_pattern(token)
        flags = 0
        for flag in pattern.flags:
            if flag not in _LARK_FLAGS:
                raise CustomGrammarError(f"the Lark flag {flag!r} is not supported")
            flags |= _LARK_FLAGS[flag]
        if isinstance(pattern, PatternRE):
            return f"({regex_expression(pattern.value, flags)})"
        codepoints = [ord(c) for c in pattern.value]
        if not codepoints:
            return '""'
        return _sequence([(sre.LITERAL, cp) for cp in codepoints], flags)

    def _instance(self, name: str, values: list[str]) -> str:
        if name not in self.rules:
            raise CustomGrammarError(f"template {name!r} is used but not defined")
        params, tree = self.rules[name]
        if len(params) != len(values):
            raise CustomGrammarError(f"template {name!r} takes {len(params)} arguments")
        key = (name, tuple(values))
        if key not in self.instances:
            if len(self.instances) >= MAX_TEMPLATE_INSTANCES:
                raise CustomGrammarError("the Lark grammar instantiates too many templates")
            ref = f"{self.prefix}r-{name.replace('_', '-')}-{len(self.instances)}"
            self.instances[key] = ref
            bound = dict(zip(params, values, strict=True))
            self.pending.append((ref, lambda: self._expr(tree, True, bound)))
        return self.instances[key]


def _only_plus(tree: Any) -> Any:
    """X when a terminal's tree is just `X+`; None otherwise."""
    while isinstance(tree, Tree) and tree.data in ("expansions", "expansion", "value"):
        if len(tree.children) != 1:
            return None
        tree = tree.children[0]
    if isinstance(tree, Tree) and tree.data == "expr" and str(tree.children[1]) == "+":
        return tree.children[0]
    return None


def _lark_string(token: Any) -> str:
    return str(_literal_to_pattern(token).value)
