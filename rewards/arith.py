"""Evaluate a Countdown answer as Python's eval() would, without eval(): an AST walk, in linear time.

The paper scores an answer with `eval(answer, {"__builtins__": None}, {})` after checking that it is
made only of digits, `+ - * / ( )` and spaces and that its numbers are the given ones. Those checks
leave integer literals, `+ - * / // **`, unary signs and parentheses (a call like `(1)(2)` fails).
This module computes exactly what eval computes for those: Python ints for `+ - * // **`, a float
for `/`, Python floats after that, the same exceptions. Only a power whose result could not be a
float (over 2**8192) is refused instead of computed: eval would compute it for ever (`44**19**35`),
and any result that large fails the paper's `float(result)` check anyway.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_POWER_BITS = 8192  # beyond this, float(result) overflows: the paper's check scores it 0

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv}


class UnsafeExpression(ValueError):
    """Not an expression eval() would compute to a number here (or a power too large to compute)."""


def parse_expression(text: str) -> ast.expr:
    """The expression's AST, as eval() compiles it (leading spaces and one trailing newline allowed)."""
    try:
        return ast.parse(text.lstrip(" \t"), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeExpression(f"not an expression: {exc}") from None


def evaluate(node: ast.expr):
    """The value eval() gives; raises ArithmeticError, TypeError or UnsafeExpression where it would fail."""
    try:
        return _value(node)
    except RecursionError:
        raise UnsafeExpression("expression nested too deeply") from None


def _value(node: ast.expr):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _power(_value(node.left), _value(node.right))
    raise UnsafeExpression(f"{type(node).__name__} is not allowed")


def _power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_POWER_BITS:
            raise UnsafeExpression(f"power over 2**{MAX_POWER_BITS}: no float can hold it")
    return base**exponent  # int ** int, or a float power: constant time
