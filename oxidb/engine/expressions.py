"""
Aggregation expressions (engine.md 5.2, extended with MongoDB's operators).

L{compile_expression} validates an expression once and returns a function
from a document to a value. Inside the evaluator a missing field is the
L{MISSING} marker, not C{null}, as in MongoDB: C{$type} reports
C{"missing"}, C{$ifNull} replaces it, and comparisons order it before
every value, C{null} included (so C{{"$eq": ["$nope", null]}} is false).
The functions returned by L{compile_expression} turn a final L{MISSING}
into C{null}, since every stage writes a field it computes (engine.md 5.3).

The v0.15 rules are kept where engine.md 5.2 pins them:

  - C{"$a.b"} reads an objects-only path; C{"$$ROOT"} and C{"$$CURRENT"}
    (optionally followed by C{.path}) are the whole document.
  - C{$add}, C{$multiply} (any number of operands), C{$subtract} and
    C{$divide} (exactly two) compute in f64, give C{null} for any
    non-number operand and for a division by zero, and turn integral
    results into integers.
  - Arrays, objects of several keys and objects whose single key does not
    start with C{$} are literals, not evaluated. Only in I{nested} mode
    (C{$replaceRoot}/C{$replaceWith}) are they evaluated as MongoDB does:
    an array's elements and an object's values are expressions.

Every other operator follows MongoDB: a single-key object C{{"$op":
args}} whose key is not a known operator is an error (C{unknown expression
operator: $op}); a unary operator takes its operand bare or in a
one-element array; C{null} or missing operands give C{null} where MongoDB
does, and an operand of a wrong type is an error naming the operator and
the type found (C{$abs only supports numeric types, not string}). Numeric
results follow the engine's rule (integral floats become integers).

Bounds: the expression's nesting depth is checked against
C{limits.query_max_depth}, each operator's argument list against
C{limits.query_max_array}, and a C{$concat} result against
C{limits.agg_max_bytes}; recursion at run time follows the compiled
nesting, so it is bounded too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from oxidb.engine.governor import DEFAULT_LIMITS, QueryLimits
from oxidb.engine.paths import get_parts
from oxidb.engine.values import check_depth, compact_json, compare, is_number, normalize_number, to_float
from oxidb.errors import AggregationLimitError, InvalidPipelineError


class _Missing:
    """The value of a field that is not there (a singleton: L{MISSING})."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

Expression = Callable[[Any], Any]
"""A compiled expression: document -> JSON value (or L{MISSING} inside the evaluator)."""

# --- values -----------------------------------------------------------------------


def type_name(value: Any) -> str:
    """MongoDB's C{$type} name of a JSON value (or of L{MISSING})."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "bool"
    if kind is int:
        return "int" if -(2**31) <= value < 2**31 else "long"
    if kind is float:
        return "double"
    if kind is str:
        return "string"
    if kind is list:
        return "array"
    return "object"


def is_nullish(value: Any) -> bool:
    """C{null} or missing."""
    return value is None or value is MISSING


def truthy(value: Any) -> bool:
    """MongoDB's truth: false, null, missing and zero are false; all else (even C{""}, C{[]}) true."""
    if value is MISSING or value is None or value is False:
        return False
    return not (is_number(value) and value == 0)


def compare_values(a: Any, b: Any) -> int:
    """-1, 0 or 1: engine.md 2.1 order, with L{MISSING} before everything."""
    if a is MISSING or b is MISSING:
        return (a is not MISSING) - (b is not MISSING)
    return compare(a, b)


def _fail(message: str) -> InvalidPipelineError:
    return InvalidPipelineError(message)


# --- operators ----------------------------------------------------------------------

Evaluator = Callable[[Any, tuple[Expression, ...]], Any]
"""C{evaluate(doc, operands)} of one operator."""


def _legacy_arithmetic(op: str) -> Evaluator:
    def evaluate(doc: Any, operands: tuple[Expression, ...]) -> Any:
        values = []
        for operand in operands:
            value = operand(doc)
            if not is_number(value):
                return None
            values.append(to_float(value))
        if op == "$add":
            result = 0.0
            for value in values:
                result += value
        elif op == "$multiply":
            result = 1.0
            for value in values:
                result *= value
        elif op == "$subtract":
            result = values[0] - values[1]
        else:
            if values[1] == 0:
                return None
            result = values[0] / values[1]
        return normalize_number(result)

    return evaluate


def _numbers(op: str, values: Sequence[Any]) -> list[int | float] | None:
    """The operands as numbers; None if any is null or missing; an error for another type."""
    out: list[int | float] = []
    nullish = False
    for value in values:
        if is_nullish(value):
            nullish = True
        elif is_number(value):
            out.append(value)
        else:
            raise _fail(f"{op} only supports numeric types, not {type_name(value)}")
    return None if nullish else out


def _number_result(value: int | float) -> Any:
    return value if type(value) is int else normalize_number(value)


def _mod(doc: Any, operands: tuple[Expression, ...]) -> Any:
    numbers = _numbers("$mod", [operand(doc) for operand in operands])
    if numbers is None:
        return None
    a, b = numbers
    if b == 0:
        raise _fail("can't $mod by zero")
    if type(a) is int and type(b) is int:
        remainder = abs(a) % abs(b)
        return -remainder if a < 0 else remainder
    return _number_result(math.fmod(to_float(a), to_float(b)))


def _unary_number(op: str, fn: Callable[[Any], Any]) -> Evaluator:
    def evaluate(doc: Any, operands: tuple[Expression, ...]) -> Any:
        numbers = _numbers(op, [operands[0](doc)])
        if numbers is None:
            return None
        (value,) = numbers
        if type(value) is int:
            return fn(value)
        if not math.isfinite(value):
            return None
        return _number_result(float(fn(value)))

    return evaluate


def _round(doc: Any, operands: tuple[Expression, ...]) -> Any:
    value = operands[0](doc)
    place: Any = 0 if len(operands) == 1 else operands[1](doc)
    if is_nullish(value) or is_nullish(place):
        return None
    if not is_number(value):
        raise _fail(f"$round only supports numeric types, not {type_name(value)}")
    if not is_number(place) or place != int(place) or not -20 <= place <= 100:
        raise _fail("$round requires 'place' to be an integer between -20 and 100")
    place = int(place)
    if type(value) is int:
        return value if place >= 0 else round(value, place)
    return _number_result(round(value, place))


def _comparison(test: Callable[[int], bool]) -> Evaluator:
    def evaluate(doc: Any, operands: tuple[Expression, ...]) -> Any:
        return test(compare_values(operands[0](doc), operands[1](doc)))

    return evaluate


def _cmp(doc: Any, operands: tuple[Expression, ...]) -> Any:
    return compare_values(operands[0](doc), operands[1](doc))


def _and(doc: Any, operands: tuple[Expression, ...]) -> Any:
    return all(truthy(operand(doc)) for operand in operands)


def _or(doc: Any, operands: tuple[Expression, ...]) -> Any:
    return any(truthy(operand(doc)) for operand in operands)


def _not(doc: Any, operands: tuple[Expression, ...]) -> Any:
    return not truthy(operands[0](doc))


def _cond(doc: Any, operands: tuple[Expression, ...]) -> Any:
    return operands[1](doc) if truthy(operands[0](doc)) else operands[2](doc)


def _if_null(doc: Any, operands: tuple[Expression, ...]) -> Any:
    for operand in operands[:-1]:
        value = operand(doc)
        if not is_nullish(value):
            return value
    return operands[-1](doc)


def _string_of(op: str, value: Any) -> str:
    """A string operand: null/missing as C{""}, numbers as their JSON text."""
    if is_nullish(value):
        return ""
    if type(value) is str:
        return value
    if is_number(value):
        return compact_json(value)
    raise _fail(f"{op} can't convert from type {type_name(value)} to string")


def _case(op: str, fn: Callable[[str], str]) -> Evaluator:
    def evaluate(doc: Any, operands: tuple[Expression, ...]) -> Any:
        return fn(_string_of(op, operands[0](doc)))

    return evaluate


def _integer_argument(op: str, what: str, value: Any) -> int:
    if not is_number(value) or value != int(value) or value < 0:
        raise _fail(f"{op} requires {what} to be a non-negative integer, found: {type_name(value)}")
    return int(value)


def _substr_cp(doc: Any, operands: tuple[Expression, ...]) -> Any:
    text = _string_of("$substrCP", operands[0](doc))
    start = _integer_argument("$substrCP", "the starting index", operands[1](doc))
    count = _integer_argument("$substrCP", "the length", operands[2](doc))
    return text[start : start + count]


def _str_len_cp(doc: Any, operands: tuple[Expression, ...]) -> Any:
    value = operands[0](doc)
    if type(value) is not str:
        raise _fail(f"$strLenCP requires a string argument, found: {type_name(value)}")
    return len(value)


def _split(doc: Any, operands: tuple[Expression, ...]) -> Any:
    value, separator = operands[0](doc), operands[1](doc)
    if is_nullish(value):
        return None
    if type(value) is not str:
        raise _fail(
            f"$split requires an expression that evaluates to a string as a first argument, found: {type_name(value)}"
        )
    if type(separator) is not str:
        raise _fail(
            "$split requires an expression that evaluates to a string as a second argument, found: "
            + type_name(separator)
        )
    if not separator:
        raise _fail("$split requires a non-empty separator")
    return value.split(separator)


def _trim(doc: Any, operands: tuple[Expression, ...]) -> Any:
    value = operands[0](doc)
    chars: Any = None if len(operands) == 1 else operands[1](doc)
    if is_nullish(value):
        return None
    if type(value) is not str:
        raise _fail(f"$trim requires its input to be a string, got {type_name(value)}")
    if len(operands) > 1:
        if is_nullish(chars):
            return None
        if type(chars) is not str:
            raise _fail(f"$trim requires 'chars' to be a string, got {type_name(chars)}")
        return value.strip(chars)
    return value.strip()


def _size(doc: Any, operands: tuple[Expression, ...]) -> Any:
    value = operands[0](doc)
    if type(value) is not list:
        raise _fail(f"The argument to $size must be an array. Type of the argument was: {type_name(value)}")
    return len(value)


def _array_elem_at(doc: Any, operands: tuple[Expression, ...]) -> Any:
    array, index = operands[0](doc), operands[1](doc)
    if is_nullish(array) or is_nullish(index):
        return None
    if type(array) is not list:
        raise _fail(f"$arrayElemAt's first argument must be an array, but is {type_name(array)}")
    if not is_number(index) or index != int(index):
        raise _fail(f"$arrayElemAt's second argument must be an integer, but is {type_name(index)}")
    position = int(index)
    if not -len(array) <= position < len(array):
        return MISSING
    return array[position]


def _in(doc: Any, operands: tuple[Expression, ...]) -> Any:
    value, array = operands[0](doc), operands[1](doc)
    if type(array) is not list:
        raise _fail(f"$in requires an array as a second argument, found: {type_name(array)}")
    return any(compare_values(value, item) == 0 for item in array)


def _type(doc: Any, operands: tuple[Expression, ...]) -> Any:
    return type_name(operands[0](doc))


#: Operators taking a list of operands: C{name: (evaluate, fewest, most)}
#: (C{most} None: any number).
_OPERATORS: dict[str, tuple[Evaluator, int, int | None]] = {
    "$mod": (_mod, 2, 2),
    "$abs": (_unary_number("$abs", abs), 1, 1),
    "$ceil": (_unary_number("$ceil", math.ceil), 1, 1),
    "$floor": (_unary_number("$floor", math.floor), 1, 1),
    "$round": (_round, 1, 2),
    "$eq": (_comparison(lambda c: c == 0), 2, 2),
    "$ne": (_comparison(lambda c: c != 0), 2, 2),
    "$gt": (_comparison(lambda c: c > 0), 2, 2),
    "$gte": (_comparison(lambda c: c >= 0), 2, 2),
    "$lt": (_comparison(lambda c: c < 0), 2, 2),
    "$lte": (_comparison(lambda c: c <= 0), 2, 2),
    "$cmp": (_cmp, 2, 2),
    "$and": (_and, 0, None),
    "$or": (_or, 0, None),
    "$not": (_not, 1, 1),
    "$cond": (_cond, 3, 3),
    "$ifNull": (_if_null, 2, None),
    "$toLower": (_case("$toLower", str.lower), 1, 1),
    "$toUpper": (_case("$toUpper", str.upper), 1, 1),
    "$substrCP": (_substr_cp, 3, 3),
    "$strLenCP": (_str_len_cp, 1, 1),
    "$split": (_split, 2, 2),
    "$size": (_size, 1, 1),
    "$arrayElemAt": (_array_elem_at, 2, 2),
    "$in": (_in, 2, 2),
    "$type": (_type, 1, 1),
}

_LEGACY = ("$add", "$multiply", "$subtract", "$divide")

#: Operators whose argument is an object of named parameters: name ->
#: (required, optional), in evaluation order.
_NAMED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "$cond": (("if", "then", "else"), ()),
    "$trim": (("input",), ("chars",)),
}

OPERATORS = frozenset(_OPERATORS) | frozenset(_LEGACY) | {"$literal", "$concat", "$trim"}
"""Every expression operator."""


# --- compilation ----------------------------------------------------------------------


class _Compiler:
    def __init__(self, limits: QueryLimits, nested: bool) -> None:
        self.limits = limits
        self.nested = nested

    def compile(self, spec: Any) -> Expression:
        kind = type(spec)
        if kind is str and spec.startswith("$"):
            return self.reference(spec)
        if kind is dict:
            if len(spec) == 1:
                ((key, arguments),) = spec.items()
                if key.startswith("$"):
                    return self.operator(key, arguments)
            if self.nested:
                return self.object(spec)
        elif kind is list and self.nested:
            items = tuple(self.compile(item) for item in spec)
            return lambda doc: [_json(item(doc)) for item in items]
        return lambda doc: spec

    def reference(self, spec: str) -> Expression:
        if spec.startswith("$$"):
            name, _, rest = spec[2:].partition(".")
            if name not in ("ROOT", "CURRENT"):
                raise _fail(f"use of undefined variable: {name}")
            if not rest:
                return lambda doc: doc
            spec = "$" + rest
        parts = tuple(spec[1:].split("."))

        def read(doc: Any) -> Any:
            found, value = get_parts(doc, parts)
            return value if found else MISSING

        return read

    def object(self, spec: dict[str, Any]) -> Expression:
        for key in spec:
            if key.startswith("$"):
                raise _fail(f"an expression object's field names may not start with '$': {key}")
        fields = tuple((key, self.compile(value)) for key, value in spec.items())

        def build(doc: Any) -> Any:
            out = {}
            for key, field in fields:
                value = field(doc)
                if value is not MISSING:
                    out[key] = value
            return out

        return build

    def operands(self, op: str, arguments: Any, fewest: int, most: int | None) -> tuple[Expression, ...]:
        items = arguments if type(arguments) is list else [arguments]
        if len(items) > self.limits.query_max_array:
            raise _fail(f"{op} has more than {self.limits.query_max_array} arguments")
        if len(items) < fewest or (most is not None and len(items) > most):
            if most == fewest:
                wanted = f"exactly {fewest}"
            elif most is None:
                wanted = f"at least {fewest}"
            else:
                wanted = f"{fewest} to {most}"
            raise _fail(f"{op} requires {wanted} argument{'' if wanted.endswith(' 1') else 's'}, got {len(items)}")
        return tuple(self.compile(item) for item in items)

    def named(self, op: str, arguments: dict[str, Any]) -> tuple[Expression, ...]:
        required, optional = _NAMED[op]
        for key in arguments:
            if key not in required and key not in optional:
                raise _fail(f"unrecognized parameter to {op}: {key}")
        compiled = []
        for key in required:
            if key not in arguments:
                raise _fail(f"missing '{key}' parameter to {op}")
            compiled.append(self.compile(arguments[key]))
        compiled.extend(self.compile(arguments[key]) for key in optional if key in arguments)
        return tuple(compiled)

    def operator(self, op: str, arguments: Any) -> Expression:
        if op == "$literal":
            return lambda doc: arguments
        if op in _LEGACY:
            if type(arguments) is not list:
                raise _fail(f"{op} requires an array")
            if op in ("$subtract", "$divide") and len(arguments) != 2:
                raise _fail(f"{op} requires exactly 2 arguments")
            operands = self.operands(op, arguments, 0, None)
            return _bind(_legacy_arithmetic(op), operands)
        if op == "$concat":
            return self.concat(self.operands(op, arguments, 0, None))
        if op in _NAMED and type(arguments) is dict:
            evaluate: Evaluator = _trim if op == "$trim" else _cond
            return _bind(evaluate, self.named(op, arguments))
        if op == "$trim":
            raise _fail("$trim requires an object as an argument")
        entry = _OPERATORS.get(op)
        if entry is None:
            raise _fail(f"unknown expression operator: {op}")
        evaluate, fewest, most = entry
        return _bind(evaluate, self.operands(op, arguments, fewest, most))

    def concat(self, operands: tuple[Expression, ...]) -> Expression:
        max_bytes = self.limits.agg_max_bytes

        def evaluate(doc: Any) -> Any:
            parts = []
            total = 0
            for operand in operands:
                value = operand(doc)
                if is_nullish(value):
                    return None
                if type(value) is not str:
                    raise _fail(f"$concat only supports strings, not {type_name(value)}")
                total += len(value)
                if total > max_bytes:
                    raise AggregationLimitError("$concat", "memory", f"{max_bytes} bytes")
                parts.append(value)
            return "".join(parts)

        return evaluate


def _bind(evaluate: Evaluator, operands: tuple[Expression, ...]) -> Expression:
    return lambda doc: evaluate(doc, operands)


def _json(value: Any) -> Any:
    """A final value: L{MISSING} becomes C{null}."""
    return None if value is MISSING else value


def compile_raw(spec: Any, limits: QueryLimits = DEFAULT_LIMITS, *, nested: bool = False) -> Expression:
    """
    Compile C{spec}; the function returned may give L{MISSING}. C{nested}:
    evaluate arrays and plain objects as MongoDB does (see the module
    docstring). Raises L{InvalidPipelineError} for a malformed expression
    and L{oxidb.errors.TooLargeError} past the nesting depth.
    """
    check_depth(spec, "expression", limits.query_max_depth)
    return _Compiler(limits, nested).compile(spec)


def compile_expression(spec: Any, limits: QueryLimits = DEFAULT_LIMITS, *, nested: bool = False) -> Expression:
    """L{compile_raw}, with a missing result given as C{null}."""
    raw = compile_raw(spec, limits, nested=nested)
    return lambda doc: _json(raw(doc))
