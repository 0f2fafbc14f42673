"""A safe evaluator for Countdown answers: an AST whitelist, exact rational arithmetic, no eval().

Accepted: integer literals, + - * /, unary minus, parentheses. Everything else (names, calls, `**`,
floats, comparisons, attribute access) is rejected before any arithmetic runs, so `44**19**35`
returns an error at once instead of computing for ever. Literals are bounded in size.
"""

from __future__ import annotations

import ast
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200
MAX_LITERAL_DIGITS = 12

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class UnsafeExpression(ValueError):
    """The text is not a plain integer arithmetic expression."""


def parse_expression(text: str) -> ast.expr:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpression(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    if not text.isascii():
        raise UnsafeExpression("non-ASCII characters in expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(f"not an expression: {exc.msg}") from None
    _check(tree.body)
    return tree.body


def _check(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left)
        _check(node.right)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        if len(str(node.value)) > MAX_LITERAL_DIGITS:
            raise UnsafeExpression(f"integer literal with more than {MAX_LITERAL_DIGITS} digits")
    else:
        raise UnsafeExpression(f"{type(node).__name__} is not allowed")


def literals(node: ast.expr) -> list[int]:
    """The integer literals of a checked expression, in order."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a checked expression; ZeroDivisionError on division by zero."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        value = evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    return _BINARY[type(node.op)](evaluate(node.left), evaluate(node.right))
