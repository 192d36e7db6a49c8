"""What a program printed, read as an answer: its last printed value, the value after a label
("Total: 7"), written the way the grader reads answers (LaTeX), and plain numbers for the
rounding check.

Programs print Python's, sympy's and numpy's text: ``3*pi/2``, ``2 - 5*I``, ``(1+2j)``,
``Matrix([[1, 2], [3, 4]])``, ``[1. 2. 3.]``, ``np.float64(2.5)``, ``{x: 2, y: -3}``. The grader
reads LaTeX (math-verify), where ``pi`` is p times i and ``[1, 9]`` an interval, so printed
text is parsed with :func:`ast.parse` (parsing only: nothing printed is ever evaluated here)
and written back as LaTeX from a fixed list of forms; anything else is compared as printed.
"""
from __future__ import annotations

import ast
import math
import re

MAX_ANSWER_CHARS = 2000  # longer printed text is not an answer we try to read as math
MAX_ANSWER_LINES = 50  # a value printed over several lines (numpy, Matrix) joined back into one

_OPENERS, _CLOSERS = "([{", ")]}"

# sympy's printed names and what they are in LaTeX.
_CONSTANTS = {"pi": r"\pi", "E": "e", "I": "i", "oo": r"\infty", "inf": r"\infty", "infinity": r"\infty"}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
          "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "Gamma", "Delta", "Theta",
          "Lambda", "Xi", "Pi", "Sigma", "Phi", "Psi", "Omega"}
_FUNCTIONS = {"sin": r"\sin", "cos": r"\cos", "tan": r"\tan", "cot": r"\cot", "sec": r"\sec", "csc": r"\csc",
              "asin": r"\arcsin", "acos": r"\arccos", "atan": r"\arctan", "sinh": r"\sinh", "cosh": r"\cosh",
              "tanh": r"\tanh", "log": r"\ln", "ln": r"\ln", "log10": r"\log_{10}", "log2": r"\log_{2}"}
# Wrappers whose one argument is the value: sympy, numpy (2.x reprs scalars as np.float64(2.5)),
# mpmath, fractions and decimal.
_WRAPPERS = {"Integer", "Float", "float", "int", "float16", "float32", "float64", "float128", "longdouble",
             "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "mpf", "Decimal",
             "N", "nsimplify", "simplify", "S", "sympify", "Symbol", "bool_", "str_"}
# sympy's (and Python's) printed calls as LaTeX, by name and number of arguments.
_CALLS = {("Rational", 2): r"\frac{{{0}}}{{{1}}}", ("Fraction", 2): r"\frac{{{0}}}{{{1}}}",
          ("sqrt", 1): r"\sqrt{{{0}}}", ("cbrt", 1): r"\sqrt[3]{{{0}}}", ("root", 2): r"\sqrt[{1}]{{{0}}}",
          ("real_root", 2): r"\sqrt[{1}]{{{0}}}", ("exp", 1): "e^{{{0}}}", ("log", 2): r"\log_{{{1}}}({0})",
          ("Abs", 1): r"\left|{0}\right|", ("binomial", 2): r"\binom{{{0}}}{{{1}}}", ("Eq", 2): "{0} = {1}",
          ("Interval", 2): "[{0}, {1}]", ("complex", 2): "{0} + {1}i",
          **{(name, 1): latex + "({0})" for name, latex in _FUNCTIONS.items()}}
_MATRICES = {"Matrix", "ImmutableMatrix", "MutableDenseMatrix", "ImmutableDenseMatrix", "DenseMatrix", "matrix"}
_ARRAYS = {"array"}
# A label before the value: "Total: 7", "x = 3", "The answer is 7", "... is approximately 2.5".
_LABEL_WORDS = re.compile(r"(?<=\s)(?:is|are|was|equals|approximately|approx\.?|≈|~)\s+", re.IGNORECASE)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# What may follow a printed number and still leave it the value: a percent or degree sign, or
# after a blank a few words of unit ("60.98 meters", "1.26 m/s"); never "*x" or "x" glued on.
_UNIT_TAIL = re.compile(r"\s*(?:%|°[CF]?)?(?:\s+[A-Za-zµΩ°²³/.^-]+){0,3}\.?\s*")
# numpy prints arrays with blanks between elements: "[1. 2. 3.]", "[[1 2]\n [3 4]]", "[0.5+1.j -1. ]";
# its negative numbers are glued to their sign, where sympy's "x - 1" has a blank after it.
_NUMPY_GAP = re.compile(r"(?<=[\w.\]])\s+(?=[-+]?(?:[\d.]|inf\b|nan\b)|\[|True\b|False\b)")


def last_printed_value(stdout: str) -> str | None:
    """The last printed line, with the lines above it that a value printed over several lines
    (a numpy matrix, a long Matrix) needs to close its brackets, joined into one line."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    taken = [lines.pop()]
    while lines and len(taken) < MAX_ANSWER_LINES and _unclosed(" ".join(taken)) < 0:
        taken.insert(0, lines.pop())
    return " ".join(taken)


def _unclosed(text: str) -> int:
    """Opening minus closing brackets (negative: it closes brackets opened above it)."""
    return sum(text.count(c) for c in _OPENERS) - sum(text.count(c) for c in _CLOSERS)


def answer_candidates(printed: str) -> list[str]:
    """The printed value, then the value after its label, when it has one ("Area: 6.0" -> "6.0",
    "The answer is 7." -> "7"). The last label counts: "Hypotenuse: 5.0, Area: 6.0" -> "6.0"."""
    candidates = [printed.strip()]
    value = printed
    colon = _last_top_level(value, ":")
    if colon is not None:
        value = value[colon + 1:]
        candidates.append(value)
    equals = _last_top_level(value, "=")
    if equals is not None:
        value = value[equals + 1:]
        candidates.append(value)
    if colon is None and equals is None:
        words = list(_LABEL_WORDS.finditer(value))
        if words:
            candidates.append(value[words[-1].end():])
    found: list[str] = []
    for candidate in candidates:
        candidate = candidate.strip().rstrip(".").strip()
        if candidate and candidate not in found:
            found.append(candidate)
    return found


def _last_top_level(text: str, mark: str) -> int | None:
    """Where ``mark`` last occurs outside brackets; "=" only as an assignment (not ==, <=, >=, !=)."""
    depth, where = 0, None
    for i, char in enumerate(text):
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif char == mark and depth == 0:
            if mark == "=" and ((i and text[i - 1] in "=<>!") or text[i + 1:i + 2] == "="):
                continue
            where = i
    return where


def printed_number(text: str) -> float | None:
    """A plain number as printed, with what may surround it ("$9,581.70", "60.98 m", "40.0%",
    "2/3", "np.float64(3.5)"); None for anything else."""
    text = text.strip()
    wrapped = re.fullmatch(r"(?:\w+\.)*\w+\((.*)\)", text)
    if wrapped and re.match(r"(?:\w+\.)*(\w+)", text).group(1) in _WRAPPERS:
        text = wrapped.group(1).strip().strip("'\"")
    text = text.lstrip("$").replace("\\$", "").strip()
    fraction = re.fullmatch(r"([-+]?\d{1,300})\s*/\s*(\d{1,300})", text)  # (int() refuses 4300+ digits)
    if fraction:
        return int(fraction.group(1)) / int(fraction.group(2)) if int(fraction.group(2)) else None
    match = _THOUSANDS.match(text) or _NUMBER.match(text)
    if match is None or not _UNIT_TAIL.fullmatch(text[match.end():]):
        return None
    try:
        value = float(match.group().replace(",", ""))
    except (OverflowError, ValueError):
        return None
    return value if math.isfinite(value) else None


def for_grader(printed: str) -> str | None:
    """What to hand the grader for a printed value: ``\\boxed{LaTeX}`` for the Python forms read
    here; prose ("The polygon has 6 sides") as printed, where the grader looks for the answer as
    in a model's text; None for Python that is not a value written as math
    (``AccumBounds(-1, 1)``, ``nan``), from which math-verify would pick a number at random."""
    latex = to_latex(printed)
    if latex is not None:
        return f"\\boxed{{{latex}}}"
    if _is_python(printed):
        return None
    return printed.strip().replace("**", "^")


def to_latex(printed: str) -> str | None:
    """``printed`` (Python, sympy or numpy text, or a number with its unit) as LaTeX; None when
    it is none of the forms read here."""
    text = printed.strip()
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    if _THOUSANDS.fullmatch(text.lstrip("$")):
        return text.lstrip("$").replace(",", "")
    for source in (_numpy_commas(text), text):  # numpy's reading first: "[1 -2]" is two numbers
        tree = _parsed(source)
        if tree is not None:
            try:
                return _Latex(source).top(tree.body)
            except (_NotMath, RecursionError):
                return None
    match = _THOUSANDS.match(text.lstrip("$")) or _NUMBER.match(text.lstrip("$"))
    if match and printed_number(text) is not None:  # a number with its unit or currency: the number
        return _number_latex(match.group().replace(",", ""))
    return None


def _parsed(source: str | None) -> ast.Expression | None:
    if source is None or len(source) > MAX_ANSWER_CHARS:
        return None
    try:
        return ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _is_python(text: str) -> bool:
    return _parsed(_numpy_commas(text.strip())) is not None or _parsed(text.strip()) is not None


def _numpy_commas(text: str) -> str | None:
    """numpy's array printing (no commas) with the commas Python would print; None if it is not one."""
    return _NUMPY_GAP.sub(", ", text) if "[" in text and "," not in text else None


class _NotMath(Exception):
    """The printed text parses as Python but is not a value written as math."""


class _Latex:
    """LaTeX for the expression forms programs print. Numbers keep their printed digits."""

    def __init__(self, source: str):
        self.source = source

    def top(self, node: ast.expr) -> str:
        # A printed list of values is the answer's values ("[1, 9]" answers "1, 9"); for
        # math-verify a bracketed pair would be an interval.
        if isinstance(node, ast.List):
            if not node.elts:
                raise _NotMath
            if (matrix := self.matrix(node)) is not None:
                return matrix
            return ", ".join(self.top(e) if isinstance(e, ast.Dict) else self.value(e) for e in node.elts)
        if isinstance(node, ast.Dict):  # sympy's solve: {x: 2, y: -3}
            if not node.keys or not all(isinstance(k, ast.Name) for k in node.keys):
                raise _NotMath
            return ", ".join(f"{self.value(k)} = {self.value(v)}" for k, v in zip(node.keys, node.values))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a repr'd string: what it says
            return self.text(node.value)
        return self.value(node)

    def value(self, node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.value(node.operand)
            if isinstance(node.operand, ast.BinOp) and isinstance(node.operand.op, (ast.Add, ast.Sub)):
                inner = f"({inner})"
            return ("-" if isinstance(node.op, ast.USub) else "") + inner
        if isinstance(node, ast.BinOp):
            return self.binary(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Tuple):
            return "(" + ", ".join(self.value(e) for e in node.elts) + ")"
        if isinstance(node, ast.List):
            if (matrix := self.matrix(node)) is not None:
                return matrix
            return "(" + ", ".join(self.value(e) for e in node.elts) + ")"
        if isinstance(node, ast.Set):
            return r"\{" + ", ".join(self.value(e) for e in node.elts) + r"\}"
        if isinstance(node, ast.Attribute):  # np.pi, math.e, sympy.pi
            return self.name(node.attr)
        raise _NotMath

    @staticmethod
    def text(printed: str) -> str:
        """A string in the printed value: what it says, read again ("'7'", "Float('3.14')")."""
        latex = to_latex(printed)
        if latex is None and _is_python(printed):
            raise _NotMath
        return latex if latex is not None else printed.strip()

    def constant(self, node: ast.Constant) -> str:
        value = node.value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool):
            return rf"\text{{{value}}}"
        if isinstance(value, complex):
            imaginary = _number_latex(self.digits(node).rstrip("jJ")) if value.imag != 1 else ""
            return f"{imaginary}i"
        if isinstance(value, (int, float)):
            return _number_latex(self.digits(node))
        raise _NotMath

    def digits(self, node: ast.expr) -> str:
        """A number as printed (str() of a huge int would refuse, a float's repr might change)."""
        return ast.get_source_segment(self.source, node) or str(node.value)

    def name(self, name: str) -> str:
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name in ("nan", "NaN", "zoo", "None"):
            raise _NotMath
        if name in _GREEK:
            return "\\" + name
        match = re.fullmatch(r"([A-Za-z]+)_?(\d+)", name)
        return f"{match.group(1)}_{{{match.group(2)}}}" if match else name

    def binary(self, node: ast.BinOp) -> str:
        left, right = self.value(node.left), self.value(node.right)
        if isinstance(node.op, ast.Add):
            return f"{left} + {right}"
        if isinstance(node.op, ast.Sub):
            grouped = isinstance(node.right, ast.UnaryOp) or isinstance(node.right, ast.BinOp) and isinstance(
                node.right.op, (ast.Add, ast.Sub))
            return f"{left} - ({right})" if grouped else f"{left} - {right}"
        if isinstance(node.op, ast.Div):
            return rf"\frac{{{left}}}{{{right}}}"
        if isinstance(node.op, ast.Pow):
            base = left if isinstance(node.left, (ast.Name, ast.Call, ast.Attribute)) or (
                isinstance(node.left, ast.Constant) and not str(left).startswith("-")) else f"({left})"
            return f"{base}^{{{right}}}"
        if isinstance(node.op, ast.Mult):
            left = self.grouped(node.left, left, (ast.Add, ast.Sub))
            right = self.grouped(node.right, right, (ast.Add, ast.Sub))
            if isinstance(node.right, ast.UnaryOp):
                right = f"({right})"
            # "5i", "3\pi", "2x": math-verify reads "5 \cdot i" as a product with a variable i.
            # Not before e: "1.5e" would read as a number's exponent.
            glued = right[:1] == "\\" or right[:1].isalpha() and right[:1] not in "eE"
            if isinstance(node.left, ast.Constant) and glued:
                return f"{left}{right}"
            return f"{left} \\cdot {right}"
        raise _NotMath

    @staticmethod
    def grouped(node: ast.expr, text: str, ops: tuple[type, ...]) -> str:
        return f"({text})" if isinstance(node, ast.BinOp) and isinstance(node.op, ops) else text

    def call(self, node: ast.Call) -> str:
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        args = node.args
        if func in _WRAPPERS and len(args) == 1:
            if isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):  # Float('3.14'), mpf('2.5')
                return self.text(args[0].value)
            return self.value(args[0])
        template = _CALLS.get((func, len(args)))
        if template is not None:
            return template.format(*(self.value(a) for a in args))
        if func == "factorial" and len(args) == 1:
            return f"{self.grouped(args[0], self.value(args[0]), (ast.BinOp,))}!"
        if func in ("FiniteSet", "Tuple") and args:
            inner = ", ".join(self.value(a) for a in args)
            return rf"\{{{inner}\}}" if func == "FiniteSet" else f"({inner})"
        if func == "Poly" and args:  # Poly(7*x**2 - 11*x + 17, x, domain='ZZ'): the polynomial
            return self.value(args[0])
        if func in _MATRICES and len(args) == 1:
            matrix = self.matrix(args[0])
            if matrix is None and isinstance(args[0], ast.List):  # Matrix([1, 2, 3]) is a column
                matrix = self.rows([[e] for e in args[0].elts])
            if matrix is None:
                raise _NotMath
            return matrix
        if func in _ARRAYS and args:
            return self.top(args[0])
        raise _NotMath

    def matrix(self, node: ast.expr) -> str | None:
        """A rectangular list of lists as a pmatrix; None for anything else."""
        if not (isinstance(node, ast.List) and node.elts and all(isinstance(r, ast.List) for r in node.elts)):
            return None
        rows = [r.elts for r in node.elts]
        if not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            return None
        return self.rows(rows)

    def rows(self, rows: list[list[ast.expr]]) -> str:
        body = r" \\ ".join(" & ".join(self.value(e) for e in row) for row in rows)
        return rf"\begin{{pmatrix}} {body} \end{{pmatrix}}"


def _number_latex(digits: str) -> str:
    """A printed number in LaTeX: "6.674e-11" -> "6.674 \\times 10^{-11}" (math-verify does not
    read e-notation); numpy's "1." -> "1.0"."""
    mantissa, _, exponent = digits.lower().partition("e")
    if mantissa.endswith("."):
        mantissa += "0"
    if not exponent:
        return mantissa
    return rf"{mantissa} \times 10^{{{int(exponent)}}}"
