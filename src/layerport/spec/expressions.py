"""Dims derived from a layer's parameters, written as formulas and evaluated safely.

torch's layouts need sizes such as ``num_layers x directions`` or
``directions x hidden_size``: a ``Tensor`` dim may be a formula over the
layer's parameters, such as ``"num_layers * (2 if bidirectional else 1)"``.

A formula is parsed with Python's own parser (``ast.parse(..., mode="eval")``)
and then evaluated here, node by node, over a small whitelist: integer
literals, names, ``+``, ``-``, ``*``, ``//``, unary ``-``, parentheses, and
``A if FLAG else B`` where ``FLAG`` names a boolean or integer parameter (an
integer is true unless 0, as in Python: ``proj_size if proj_size else
hidden_size`` is torch's LSTM convention that 0 means none), and ``max(A, B,
...)`` and ``min(A, B, ...)`` (a reflection pad needs an input longer than its
wider side: ``max(left, right) + 1``). Nothing is
passed to ``eval``: a plugin's string can only ever compute an integer. The
formula's text is what ``show`` prints, without torch.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
}


# The only calls a formula may make.
_FUNCTIONS = {"max": max, "min": min}


class FormulaError(ValueError):
    """A formula uses something outside the whitelist, or a name it may not use."""


def parse_formula(text: str) -> ast.expr:
    """The formula's expression tree, checked against the whitelist; ``FormulaError`` if not."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise FormulaError(f"{text!r} is not a formula: {error.msg}") from None
    for node in ast.walk(tree):
        allowed = (
            isinstance(node, (ast.BinOp, ast.Name, ast.Load, ast.USub))
            or type(node) in _OPERATORS
            or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub))
            or (isinstance(node, ast.IfExp) and isinstance(node.test, ast.Name))
            or (isinstance(node, ast.Constant) and type(node.value) is int)
            or _is_function_call(node)
        )
        if not allowed:
            raise FormulaError(
                f"{text!r} uses {type(node).__name__}; formulas take integers, names, "
                "+ - * //, parentheses, max(...), min(...) and 'A if PARAMETER else B'"
            )
    return tree


def _is_function_call(node: ast.AST) -> bool:
    """``max(A, B)`` or ``min(A, B)``: a known function, two arguments or more, no keywords."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and len(node.args) >= 2
        and not node.keywords
        and not any(isinstance(argument, ast.Starred) for argument in node.args)
    )


def formula_names(tree: ast.expr) -> tuple[set[str], set[str]]:
    """Every name a formula uses, and the names it uses as ``if`` flags (not ``max`` or ``min``)."""
    functions = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    names = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and id(node) not in functions
    }
    flags = {
        node.test.id
        for node in ast.walk(tree)
        if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Name)
    }
    return names, flags


def evaluate(tree: ast.expr, values: Mapping[str, int | bool]) -> int:
    """The formula's value for ``values`` (names to integers or flags)."""
    if isinstance(tree, ast.Constant):
        assert type(tree.value) is int  # parse_formula admits no other constant
        return tree.value
    if isinstance(tree, ast.Name):
        return int(values[tree.id])
    if isinstance(tree, ast.UnaryOp):
        return -evaluate(tree.operand, values)
    if isinstance(tree, ast.IfExp):
        assert isinstance(tree.test, ast.Name)
        branch = tree.body if values[tree.test.id] else tree.orelse
        return evaluate(branch, values)
    if isinstance(tree, ast.Call):
        assert isinstance(tree.func, ast.Name)  # parse_formula admits max and min only
        return int(_FUNCTIONS[tree.func.id](evaluate(argument, values) for argument in tree.args))
    assert isinstance(tree, ast.BinOp)
    left, right = evaluate(tree.left, values), evaluate(tree.right, values)
    if isinstance(tree.op, ast.FloorDiv) and right == 0:
        raise ZeroDivisionError("a formula divides by zero")
    return int(_OPERATORS[type(tree.op)](left, right))


def substituted(
    text: str, values: Mapping[str, int | bool], formulas: Mapping[str, str] | None = None
) -> str:
    """The formula with each name in ``values`` replaced by its value, each name in
    ``formulas`` by that formula, other names kept.

    For a file's symbolic dims: a Conv1d's output length ``(length + 2 * padding
    - kernel_size) // stride + 1`` becomes ``(length + 2 * 1 - 3) // 2 + 1`` for
    its parameters, which names the one free dim and says how the size follows.
    A flag's ``A if FLAG else B`` keeps only the branch taken. A composed
    model's output length is its layers' formulas substituted into each other
    (``layerport.model.compose``): ``length`` of a pooling layer becomes the
    convolution's ``(seq - 3) // 1 + 1`` before it. A formula with no name
    left is folded to its value.
    """
    replacements: Mapping[str, str] = formulas or {}

    class Substitute(ast.NodeTransformer):
        def visit_Call(self, node: ast.Call) -> ast.AST:
            node.args = [self.visit(argument) for argument in node.args]  # not the function's name
            return node

        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id in values:
                return ast.Constant(int(values[node.id]))
            if node.id in replacements:
                return parse_formula(replacements[node.id])
            return node

        def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
            assert isinstance(node.test, ast.Name)
            if node.test.id in values:
                return self.visit(node.body if values[node.test.id] else node.orelse)
            return self.generic_visit(node)

    tree = Substitute().visit(parse_formula(text))
    names, _ = formula_names(tree)
    return str(evaluate(tree, {})) if not names else ast.unparse(tree)
