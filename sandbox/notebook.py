"""A tool solution's code blocks as one program with notebook semantics: the blocks run in order
in one namespace, as the cells of a notebook run top to bottom, and (optionally) a block that
ends in a bare expression shows its value the way IPython does (``repr``, nothing for None or a
trailing ``;``). Tool solutions are written as notebook cells: many end in ``result`` rather
than ``print(result)``, and a later block uses names an earlier one defined.

The program is built here as text and runs in the sandbox like any snippet: the blocks are
parsed and run by a small driver inside the execution, so nothing of them is compiled or run in
the caller's process. A solution's blocks: :func:`data.text.code_blocks`.
"""
from __future__ import annotations

from collections.abc import Sequence

# Runs inside the sandbox as the snippet's __main__. The driver removes its own name first so
# that the blocks see a namespace as plain as a script's. A block's last statement, when it is
# an expression, is compiled in "single" mode: the interpreter then calls sys.displayhook, which
# prints repr(value) unless it is None, exactly what an interactive prompt shows.
_DRIVER = r"""
def _mathsynth_run_blocks(blocks, echo):
    import ast, linecache, re, sys
    namespace = globals()
    del namespace["_mathsynth_run_blocks"]
    for number, source in enumerate(blocks, 1):
        name = "<block %d>" % number
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        tree = ast.parse(source, name)
        shown = None
        if echo and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body[-1]
            lines = re.split(r"\r\n?|\n", source)  # the line breaks the parser counts
            after = lines[last.end_lineno - 1].encode()[last.end_col_offset:].decode(errors="replace")
            if not after.lstrip().startswith(";"):  # IPython: a trailing ";" hides the value
                shown = ast.Interactive([tree.body.pop()])
        exec(compile(tree, name, "exec"), namespace)
        if shown is not None:
            exec(compile(shown, name, "single"), namespace)
        sys.stdout.flush()
"""


def notebook_program(blocks: str | Sequence[str], echo_last_expression: bool = True) -> str:
    """One program that runs ``blocks`` as notebook cells. A single block without echo is
    returned as it is, so its tracebacks read as the plain script's."""
    cells = [blocks] if isinstance(blocks, str) else list(blocks)
    if len(cells) == 1 and not echo_last_expression:
        return cells[0]
    return f"{_DRIVER}\n\n_mathsynth_run_blocks({cells!r}, {bool(echo_last_expression)!r})\n"
