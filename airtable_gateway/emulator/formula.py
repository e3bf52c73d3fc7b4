"""A subset of Airtable's formula language, enough for ``filterByFormula``.

Supported: ``{Field name}`` and bare ``Field`` references, string ('...' or "...") and number literals,
``= != < > <= >=``, ``& + - * /``, parentheses, and the functions in ``FUNCTIONS`` (AND, OR, NOT, IF,
BLANK, TRUE, FALSE, FIND, SEARCH, LEN, LOWER, UPPER, REPT, REGEX_MATCH, REGEX_EXTRACT, REGEX_REPLACE,
DATETIME_PARSE, IS_BEFORE, ...). Dates are ISO text, so they compare as text; a date and a date-time are
never equal. A parse error, an unknown field or an unknown function raises ``FormulaError`` (the API
answers 422 INVALID_FILTER_BY_FORMULA); an error while evaluating one record (a division by zero, a text
that is not a number) makes that record's result an error value, which, as in Airtable, does not match.

Bounded, so that one filter cannot stall the emulator: a formula is at most ``MAX_FORMULA_LENGTH``
characters, nests at most ``MAX_NESTING`` levels and its tree is at most ``MAX_DEPTH`` deep; regular
expressions run on RE2 (linear time, no catastrophic backtracking; Airtable's REGEX functions use RE2
syntax too); a text value is at most ``MAX_TEXT_LENGTH`` characters (longer is an error value); numbers
are doubles as in Airtable and ``ROUND`` keeps at most ``MAX_ROUND_DIGITS`` decimals; and :func:`select`
gives up with ``FormulaError`` (so 422) once evaluating a filter over a table has taken
``TIME_BUDGET_SECONDS``.
"""

import dataclasses
import datetime
import functools
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import re2

Value = Any  # None (blank), bool, int, float, str or a list of them
T = TypeVar("T")

MAX_FORMULA_LENGTH = 16_384
# Both well within Python's recursion limit (1000 frames): the parser and evaluation recurse.
MAX_NESTING = 50  # parentheses, function calls and signs inside one another
MAX_DEPTH = 200  # levels of the parsed tree: ``1+1+1+...`` adds one per operator
MAX_TEXT_LENGTH = 100_000  # Airtable's own limit for a long text cell
MAX_PATTERN_LENGTH = 2_000
MAX_ROUND_DIGITS = 15  # a double has no more decimals to round
MIN_ROUND_DIGITS = -308
MAX_EXACT_INTEGER = 2**53  # beyond, a double cannot tell integers apart
TIME_BUDGET_SECONDS = 1.0


class FormulaError(Exception):
    """The formula text cannot be used: the message says why."""


class EvaluationError(Exception):
    """The formula gives #ERROR for one record."""


class FormulaTooCostly(FormulaError):
    """Evaluating the formula took longer than its time budget."""


@dataclass(frozen=True, slots=True)
class Literal:
    value: Value


@dataclass(frozen=True, slots=True)
class FieldRef:
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple["Node", ...]


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: "Node"
    right: "Node"


@dataclass(frozen=True, slots=True)
class Negate:
    operand: "Node"


Node = Literal | FieldRef | Call | Binary | Negate

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<field>\{(?:[^}\\]|\\.)*\})
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>\d+(?:\.\d*)?|\.\d+)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|!=|=|<|>|&|\+|-|\*|/|\(|\)|,)
    )""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(.)")
_BLANK_TO_END = re.compile(r"\s*\Z")
_COMPARISONS = ("=", "!=", "<", ">", "<=", ">=")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if _BLANK_TO_END.match(text, position):
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise FormulaError(f"unexpected character {text[position:].strip()[0]!r}")
        tokens.append(_Token(match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.position = 0
        self.nesting = 0  # parentheses, calls and signs open: the parser's own recursion

    def enter(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise FormulaError(f"the formula nests deeper than {MAX_NESTING} levels")

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise FormulaError("the formula ends too early")
        self.position += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.kind != "op" or token.text != text:
            raise FormulaError(f"expected {text!r}, found {token.text!r}")

    def at_op(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text in texts

    def parse(self) -> Node:
        if not self.tokens:
            raise FormulaError("the formula is empty")
        node = self.comparison()
        if (token := self.peek()) is not None:
            raise FormulaError(f"unexpected {token.text!r}")
        return node

    def comparison(self) -> Node:
        return self.left_to_right(self.concatenation, *_COMPARISONS)

    def concatenation(self) -> Node:
        return self.left_to_right(self.additive, "&")

    def additive(self) -> Node:
        return self.left_to_right(self.multiplicative, "+", "-")

    def multiplicative(self) -> Node:
        return self.left_to_right(self.unary, "*", "/")

    def left_to_right(self, operand: Callable[[], Node], *operators: str) -> Node:
        """One precedence level: ``operand (operator operand)*``, grouped from the left."""
        node = operand()
        while self.at_op(*operators):
            op = self.take().text
            node = Binary(op, node, operand())
        return node

    def unary(self) -> Node:
        if self.at_op("-", "+"):
            sign = self.take().text
            self.enter()
            operand = self.unary()
            self.nesting -= 1
            return Negate(operand) if sign == "-" else operand
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            number = float(token.text)
            if not math.isfinite(number):
                raise FormulaError(f"the number {token.text[:20]}... is too large")
            return Literal(_number(int(number)) if number.is_integer() and "." not in token.text else number)
        if token.kind == "string":
            return Literal(_ESCAPE.sub(r"\1", token.text[1:-1]))
        if token.kind == "field":
            return FieldRef(_ESCAPE.sub(r"\1", token.text[1:-1]))
        if token.kind == "name":
            if self.at_op("("):
                return self.call(token.text)
            if token.text.upper() in ("TRUE", "FALSE"):
                return Literal(token.text.upper() == "TRUE")
            return FieldRef(token.text)
        if token.kind == "op" and token.text == "(":
            self.enter()
            node = self.comparison()
            self.expect(")")
            self.nesting -= 1
            return node
        raise FormulaError(f"unexpected {token.text!r}")

    def call(self, name: str) -> Node:
        self.expect("(")
        self.enter()
        args: list[Node] = []
        if not self.at_op(")"):
            args.append(self.comparison())
            while self.at_op(","):
                self.take()
                args.append(self.comparison())
        self.expect(")")
        self.nesting -= 1
        return Call(name.upper(), tuple(args))


def parse(text: str) -> Node:
    """Parse a formula; raises FormulaError for text that is not a formula, is too long or too deep, or
    calls an unknown function."""
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_LENGTH} characters")
    node = _Parser(_tokenize(text)).parse()
    _check_depth(node)
    _check_calls(node)
    return node


def _children(node: Node) -> tuple[Node, ...]:
    match node:
        case Call(_, args):
            return args
        case Binary(_, left, right):
            return (left, right)
        case Negate(operand):
            return (operand,)
    return ()


def _check_depth(node: Node) -> None:
    """Refuse a tree deeper than MAX_DEPTH (``1+1+1+...`` nests one level per operator), without
    recursing: evaluation recurses, and must stay far from Python's recursion limit."""
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormulaError(f"the formula nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in _children(current))


def field_names(node: Node) -> set[str]:
    """The field names a formula refers to."""
    match node:
        case FieldRef(name):
            return {name}
        case Call(_, args):
            return set().union(*(field_names(arg) for arg in args)) if args else set()
        case Binary(_, left, right):
            return field_names(left) | field_names(right)
        case Negate(operand):
            return field_names(operand)
    return set()


def _check_calls(node: Node) -> None:
    match node:
        case Call(name, args):
            if name not in FUNCTIONS:
                raise FormulaError(f"Unknown function names: {name}")
            low, high = FUNCTIONS[name][1]
            if len(args) < low or (high is not None and len(args) > high):
                raise FormulaError(f"wrong number of arguments to {name}")
            for arg in args:
                _check_calls(arg)
        case Binary(_, left, right):
            _check_calls(left)
            _check_calls(right)
        case Negate(operand):
            _check_calls(operand)


@dataclass(frozen=True, slots=True)
class Context:
    """What a formula sees of one record."""

    record_id: str
    value_of: Callable[[str], Value]
    deadline: float = math.inf  # time.monotonic() past which evaluating gives up (FormulaTooCostly)


def evaluate(node: Node, context: Context) -> Value:
    match node:
        case Literal(value):
            return value
        case FieldRef(name):
            return context.value_of(name)
        case Negate(operand):
            return -to_number(evaluate(operand, context))
        case Binary(op, left, right):
            _check_time(context)
            return _binary(op, evaluate(left, context), evaluate(right, context))
        case Call(name, args):
            _check_time(context)
            function = FUNCTIONS[name][0]
            return function(args, context)
    raise EvaluationError(f"cannot evaluate {node!r}")


def _check_time(context: Context) -> None:
    if context.deadline != math.inf and time.monotonic() > context.deadline:
        raise FormulaTooCostly(f"evaluating the formula takes longer than {TIME_BUDGET_SECONDS:g} s")


def matches(node: Node, context: Context) -> bool:
    """Whether a record passes a filter formula: a truthy result; an error value never passes."""
    try:
        return is_truthy(evaluate(node, context))
    except EvaluationError:
        return False


def select(node: Node, candidates: Iterable[T], context_of: Callable[[T], Context]) -> list[T]:
    """The candidates the formula matches; ``FormulaTooCostly`` once evaluating has taken
    ``TIME_BUDGET_SECONDS`` in all."""
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    return [
        candidate
        for candidate in candidates
        if matches(node, dataclasses.replace(context_of(candidate), deadline=deadline))
    ]


# --- values -----------------------------------------------------------------------------------------------


def is_blank(value: Value) -> bool:
    return value is None or value == "" or value == [] or value is False


def is_truthy(value: Value) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return not is_blank(value) and value != 0


def to_text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return ", ".join(to_text(item) for item in value)
    if isinstance(value, dict):
        return str(value.get("name") or value.get("filename") or value.get("id") or "")
    return str(value)


def _number(value: int | float) -> int | float:
    """A number as Airtable holds it, a finite double: an integer beyond 2**53 becomes a float, and
    one past a double's range (or NaN) is an error value, so no arithmetic grows without bound."""
    if isinstance(value, int):
        if -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER:
            return value
        try:
            value = float(value)
        except OverflowError:
            raise EvaluationError("a number past a double's range") from None
    if not math.isfinite(value):
        raise EvaluationError("a number past a double's range")
    return value


def to_number(value: Value) -> float | int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return _number(value)
    text = to_text(value).strip().replace(",", "")
    try:
        number = float(text)
    except ValueError:
        raise EvaluationError(f"{text!r} is not a number") from None
    return _number(int(number)) if number.is_integer() else _number(number)  # "inf", "nan", "1e400": errors


def _integer(value: Value, low: int, high: int) -> int:
    """A count or position: a number truncated and held within ``low..high``."""
    return int(max(low, min(high, to_number(value))))


def _text(value: str) -> str:
    """A text result, refused (an error value) past MAX_TEXT_LENGTH: no formula grows without bound."""
    if len(value) > MAX_TEXT_LENGTH:
        raise EvaluationError(f"a text longer than {MAX_TEXT_LENGTH} characters")
    return value


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float)


def _as_comparable_numbers(left: Value, right: Value) -> tuple[float, float] | None:
    """Both sides as numbers when one side is a number and the other converts to one."""
    if not (_is_number(left) or _is_number(right)):
        return None
    try:
        return float(to_number(left)), float(to_number(right))
    except EvaluationError:
        return None


def _equal(left: Value, right: Value) -> bool:
    if is_blank(left) or is_blank(right):
        return (is_blank(left) or left == 0) and (is_blank(right) or right == 0)
    numbers = _as_comparable_numbers(left, right)
    if numbers is not None:
        return numbers[0] == numbers[1]
    return to_text(left) == to_text(right)


def _ordered(op: str, a: Any, b: Any) -> bool:
    if op == "<":
        return bool(a < b)
    if op == ">":
        return bool(a > b)
    if op == "<=":
        return bool(a <= b)
    return bool(a >= b)


def _compare(op: str, left: Value, right: Value) -> bool:
    numbers = _as_comparable_numbers(left, right)
    if numbers is not None:
        return _ordered(op, *numbers)
    return _ordered(op, to_text(left), to_text(right))


def _arithmetic(op: str, left: Value, right: Value) -> float | int:
    a, b = to_number(left), to_number(right)
    if op == "+":
        return _number(a + b)
    if op == "-":
        return _number(a - b)
    if op == "*":
        return _number(a * b)
    if b == 0:
        raise EvaluationError("division by zero")
    result = a / b
    return _number(int(result)) if result.is_integer() else _number(result)


def _binary(op: str, left: Value, right: Value) -> Value:
    if op == "=":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in _COMPARISONS:
        return _compare(op, left, right)
    if op == "&":
        return _text(to_text(left) + to_text(right))
    return _arithmetic(op, left, right)


# --- functions --------------------------------------------------------------------------------------------

Args = Sequence[Node]
Function = Callable[[Args, Context], Value]


def _values(args: Args, context: Context) -> list[Value]:
    return [evaluate(arg, context) for arg in args]


def _and(args: Args, context: Context) -> Value:
    return all(is_truthy(value) for value in _values(args, context))


def _or(args: Args, context: Context) -> Value:
    return any(is_truthy(value) for value in _values(args, context))


def _not(args: Args, context: Context) -> Value:
    return not is_truthy(evaluate(args[0], context))


def _xor(args: Args, context: Context) -> Value:
    return sum(is_truthy(value) for value in _values(args, context)) % 2 == 1


def _if(args: Args, context: Context) -> Value:
    if is_truthy(evaluate(args[0], context)):
        return evaluate(args[1], context)
    return evaluate(args[2], context) if len(args) > 2 else None


def _find(args: Args, context: Context, *, ignore_case: bool) -> Value:
    values = _values(args, context)
    needle, haystack = to_text(values[0]), to_text(values[1])
    start = _integer(values[2], 1, len(haystack) + 1) - 1 if len(values) > 2 else 0
    if ignore_case:
        needle, haystack = needle.lower(), haystack.lower()
    position = haystack.find(needle, start) + 1
    if position == 0 and ignore_case:
        return None  # SEARCH gives a blank value when it finds nothing; FIND gives 0
    return position


def _text_function(transform: Callable[[str], Value]) -> Function:
    def function(args: Args, context: Context) -> Value:
        result = transform(to_text(evaluate(args[0], context)))
        return _text(result) if isinstance(result, str) else result

    return function


def _left(args: Args, context: Context) -> Value:
    text, count = _values(args, context)
    return to_text(text)[: _integer(count, 0, MAX_TEXT_LENGTH)]


def _right(args: Args, context: Context) -> Value:
    text, count = _values(args, context)
    count = _integer(count, 0, MAX_TEXT_LENGTH)
    return to_text(text)[-count:] if count else ""


def _mid(args: Args, context: Context) -> Value:
    text, start, count = _values(args, context)
    begin = _integer(start, 1, MAX_TEXT_LENGTH + 1) - 1
    return to_text(text)[begin : begin + _integer(count, 0, MAX_TEXT_LENGTH)]


def _concatenate(args: Args, context: Context) -> Value:
    return _text("".join(to_text(value) for value in _values(args, context)))


def _rept(args: Args, context: Context) -> Value:
    text, count = _values(args, context)
    piece, times = to_text(text), _integer(count, 0, MAX_TEXT_LENGTH + 1)
    if len(piece) * times > MAX_TEXT_LENGTH:
        raise EvaluationError(f"a text longer than {MAX_TEXT_LENGTH} characters")
    return piece * times


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the client's error value, not a line on stderr


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> "re2._Regexp[str]":
    """A compiled RE2 pattern: matching takes time linear in the text, whatever the pattern."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise EvaluationError(f"a regular expression longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        raise EvaluationError(f"invalid regular expression: {reason!s}") from None


def _regex_arguments(args: Args, context: Context) -> list[str]:
    return [to_text(value) for value in _values(args, context)]


def _regex_match(args: Args, context: Context) -> Value:
    text, pattern = _regex_arguments(args, context)
    return _regex(pattern).search(text) is not None


def _regex_extract(args: Args, context: Context) -> Value:
    """The first match; no match is an error value, as in Airtable."""
    text, pattern = _regex_arguments(args, context)
    found = _regex(pattern).search(text)
    if found is None:
        raise EvaluationError("REGEX_EXTRACT found no match")
    return found.group(0)


def _regex_replace(args: Args, context: Context) -> Value:
    text, pattern, replacement = _regex_arguments(args, context)
    try:
        return _text(_regex(pattern).sub(replacement, text))
    except (re2.error, IndexError, ValueError) as error:  # a replacement naming a group that is not there
        raise EvaluationError(f"invalid replacement: {error}") from None


def _number_function(transform: Callable[[float | int], Value]) -> Function:
    def function(args: Args, context: Context) -> Value:
        return transform(to_number(evaluate(args[0], context)))

    return function


def _round(args: Args, context: Context) -> Value:
    values = _values(args, context)
    number = to_number(values[0])
    digits = _integer(values[1], MIN_ROUND_DIGITS, MAX_ROUND_DIGITS) if len(values) > 1 else 0
    scale = 10.0**digits
    scaled = abs(number) * scale
    if scaled >= MAX_EXACT_INTEGER:
        return number  # nothing below that digit left to round
    result = math.copysign(math.floor(scaled + 0.5) / scale, number)  # half away from zero, as Airtable
    return _number(int(result)) if result.is_integer() else result


def _mod(args: Args, context: Context) -> Value:
    value, divisor = (to_number(v) for v in _values(args, context))
    if divisor == 0:
        raise EvaluationError("division by zero")
    return math.fmod(value, divisor) if isinstance(value, float) or isinstance(divisor, float) else value % divisor


def _datetime_parse(args: Args, context: Context) -> Value:
    """An ISO date (``YYYY-MM-DD``) or date-time (UTC, ``...T..:..:...000Z``), so comparisons order dates."""
    text = to_text(evaluate(args[0], context)).strip()
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EvaluationError(f"{text!r} is not an ISO date") from None
    if len(text) == 10:
        return moment.date().isoformat()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _date_order(args: Args, context: Context) -> tuple[str, str]:
    first, second = (_datetime_parse((arg,), context) for arg in args)
    return str(first), str(second)


FUNCTIONS: dict[str, tuple[Function, tuple[int, int | None]]] = {
    "AND": (_and, (1, None)),
    "OR": (_or, (1, None)),
    "NOT": (_not, (1, 1)),
    "XOR": (_xor, (1, None)),
    "IF": (_if, (2, 3)),
    "BLANK": (lambda args, context: None, (0, 0)),
    "TRUE": (lambda args, context: True, (0, 0)),
    "FALSE": (lambda args, context: False, (0, 0)),
    "RECORD_ID": (lambda args, context: context.record_id, (0, 0)),
    "FIND": (lambda args, context: _find(args, context, ignore_case=False), (2, 3)),
    "SEARCH": (lambda args, context: _find(args, context, ignore_case=True), (2, 3)),
    "LEN": (_text_function(len), (1, 1)),
    "LOWER": (_text_function(str.lower), (1, 1)),
    "UPPER": (_text_function(str.upper), (1, 1)),
    "TRIM": (_text_function(str.strip), (1, 1)),
    "T": (lambda args, context: v if isinstance(v := evaluate(args[0], context), str) else "", (1, 1)),
    "VALUE": (lambda args, context: to_number(evaluate(args[0], context)), (1, 1)),
    "LEFT": (_left, (2, 2)),
    "RIGHT": (_right, (2, 2)),
    "MID": (_mid, (3, 3)),
    "CONCATENATE": (_concatenate, (1, None)),
    "REPT": (_rept, (2, 2)),
    "REGEX_MATCH": (_regex_match, (2, 2)),
    "REGEX_EXTRACT": (_regex_extract, (2, 2)),
    "REGEX_REPLACE": (_regex_replace, (3, 3)),
    "ABS": (_number_function(abs), (1, 1)),
    "INT": (_number_function(lambda number: _number(math.floor(number))), (1, 1)),
    "ROUND": (_round, (1, 2)),
    "MOD": (_mod, (2, 2)),
    "DATETIME_PARSE": (_datetime_parse, (1, 1)),
    "IS_BEFORE": (lambda args, context: operator.lt(*_date_order(args, context)), (2, 2)),
    "IS_AFTER": (lambda args, context: operator.gt(*_date_order(args, context)), (2, 2)),
}
