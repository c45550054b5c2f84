"""The Markdown tables a bench script prints, as a PNG (matplotlib, in the dev extra).

    .venv/bin/python bench/matrix_memory.py | tee matrix.md
    .venv/bin/python bench/table_png.py matrix.md -o matrix.png [--title "4 cells on 24 GiB"]

Every table in the text (consecutive `| ... |` lines) becomes one panel; other lines are ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Each table's rows of cells, without its `|---|` separator line."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            cells = [cell.strip().replace("**", "") for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def render(tables: list[list[list[str]]], out: Path, title: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [0.4 + 0.3 * len(rows) for rows in tables]
    figure, axes = plt.subplots(len(tables), 1, figsize=(12, sum(heights) + 0.5), squeeze=False, height_ratios=heights)
    for ax, rows in zip(axes[:, 0], tables, strict=True):
        ax.axis("off")
        width = max(len(row) for row in rows)
        body = [row + [""] * (width - len(row)) for row in rows[1:]]
        table = ax.table(cellText=body or [[""] * width], colLabels=rows[0] + [""] * (width - len(rows[0])), loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.auto_set_column_width(list(range(width)))
        for (row, _), cell in table.get_celld().items():
            if row == 0:
                cell.set_facecolor("#dbe5f1")
    if title:
        figure.suptitle(title)
    figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", type=Path, help="A bench script's output (- for stdin).")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--title")
    args = parser.parse_args()
    text = sys.stdin.read() if str(args.markdown) == "-" else args.markdown.read_text(encoding="utf-8")
    tables = markdown_tables(text)
    if not tables:
        sys.exit(f"{args.markdown}: no Markdown table (lines starting with |) to draw")
    print(render(tables, args.output, args.title))


if __name__ == "__main__":
    main()
