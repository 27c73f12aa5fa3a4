"""The table `repre compare` prints, in its three formats: aligned text (a long text cut in its middle), a
Markdown table and a LaTeX tabular (booktabs). A table is its column names and its parts, each a note above
its rows (labels and a text per column)."""

from __future__ import annotations

import re
from dataclasses import dataclass

LABEL_WIDTH, CELL_WIDTH = 64, 48  # characters of text; a longer text is cut in its middle


@dataclass
class Part:
    """A part of the table: a note above it (or None), and its rows' labels and cells (a text per column)."""

    note: str | None
    labels: list[str]
    cells: list[list[str]]


def _text_table(names: list[str], parts: list[Part]) -> str:
    labels = [label for part in parts for label in part.labels]
    rows = [row for part in parts for row in part.cells]
    label_width = min(LABEL_WIDTH, max((len(label) for label in labels), default=0))
    widths = [min(CELL_WIDTH, max([len(name)] + [len(row[i]) for row in rows])) for i, name in enumerate(names)]
    lines = [_line("", names, label_width, widths)]
    for part in parts:
        lines += [part.note] if part.note else []
        lines += [_line(label, row, label_width, widths) for label, row in zip(part.labels, part.cells, strict=True)]
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    """One line; a backslash and a pipe escaped (a bare pipe would split the cell)."""
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def _markdown_table(names: list[str], parts: list[Part]) -> str:
    lines = ["| | " + " | ".join(map(_markdown_cell, names)) + " |", "|---" * (len(names) + 1) + "|"]
    for part in parts:
        lines += [f"| **{_markdown_cell(part.note)}** |" + " |" * len(names)] if part.note else []
        lines += [f"| {_markdown_cell(label)} | " + " | ".join(map(_markdown_cell, row)) + " |"
                  for label, row in zip(part.labels, part.cells, strict=True)]
    return "\n".join(lines)


# what LaTeX would read otherwise (| < > print as other glyphs in the default font encoding)
LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                 "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def _latex_cell(text: str) -> str:
    """Escaped; a number's minus sign and a ratio's "x" typeset as math ("(-0.0116)", "(x1.54)": a text hyphen
    and a letter otherwise)."""
    escaped = "".join(LATEX_ESCAPES.get(ch, ch) for ch in " ".join(text.split()))
    escaped = re.sub(r"(?<![\w.])-(?=\d)", lambda _: "$-$", escaped)
    return re.sub(r"(?<=\()x(?=\d)", lambda _: r"$\times$", escaped)


def _latex_table(names: list[str], parts: list[Part]) -> str:
    lines = [r"\begin{tabular}{" + "l" * (len(names) + 1) + "}", r"\toprule",
             " & " + " & ".join(map(_latex_cell, names)) + r" \\"]
    for part in parts:
        lines.append(r"\midrule")
        if part.note:  # across the columns
            lines.append(rf"\multicolumn{{{len(names) + 1}}}{{l}}{{\emph{{{_latex_cell(part.note)}}}}} \\")
        lines += [" & ".join([_latex_cell(label), *map(_latex_cell, row)]) + r" \\"
                  for label, row in zip(part.labels, part.cells, strict=True)]
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"])


RENDERERS = {"text": _text_table, "markdown": _markdown_table, "latex": _latex_table}  # `table`'s formats


def _line(label: str, cells: list[str], label_width: int, widths: list[int]) -> str:
    parts = [_cut(label, label_width).ljust(label_width)]
    parts += [_cut(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)]
    return "  ".join(parts).rstrip()


def _cut(text: str, width: int) -> str:
    """`text` on one line, cut in its middle to `width` (a path's end and a list's last items stay)."""
    text = " ".join(text.split("\n"))
    if len(text) <= width:
        return text
    head = (width - 2) // 2
    return text[:head] + ".." + text[len(text) - (width - 2 - head):]
