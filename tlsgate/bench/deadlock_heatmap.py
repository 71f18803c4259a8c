"""``deadlock.png``: the matrix as a heat map, one panel per method (needs matplotlib).

Rows are mode × TLS × HTTP × client, columns body sizes; the colour is the final outcome and
the text repeats it (``403 5.0s`` for a freeze, ``↻`` when curl retried over HTTP/1.1).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from tlsgate.bench.deadlock import OUTCOMES, RETRY_PREFIX, Report, Result, size_label


def _grid(results: list[Result], sizes: list[int]) -> tuple[list[str], list[list[Result]]]:
    """Row labels and rows of results; rows that are n/a throughout are left out."""
    rows: dict[tuple, dict[int, Result]] = {}
    for result in results:
        rows.setdefault(result.cell.row, {})[result.cell.size] = result
    rows = {row: cells for row, cells in rows.items()
            if any(cell.outcome != "n/a" for cell in cells.values())}
    labels = [f"{mode} · TLS {tls} · {'h2' if http == '2' else 'h1'} · {client}"
              for mode, tls, http, client in rows]
    return labels, [[cells[size] for size in sizes] for cells in rows.values()]


def _cell_text(result: Result, short: dict[str, str]) -> str:
    text = short[result.outcome]
    if result.froze and result.outcome in ("freeze→403", "error"):
        text += f" {result.seconds:.1f}s"
    return ("↻" + text) if result.http11_retry else text


def _panel(axis, method: str, results: list[Result], sizes: list[int], colours: dict,
           short: dict[str, str], *, show_rows: bool) -> None:
    labels, grid = _grid(results, sizes)
    index = {outcome: number for number, outcome in enumerate(OUTCOMES)}
    values = [[index[result.outcome] for result in row] for row in grid]
    axis.imshow(values, cmap=ListedColormap([colours[o] for o in OUTCOMES]), vmin=0,
                vmax=len(OUTCOMES) - 1, aspect="auto", interpolation="nearest")
    for y, row in enumerate(grid):
        for x, result in enumerate(row):
            dark = result.outcome not in ("n/a",)
            axis.text(x, y, _cell_text(result, short), ha="center", va="center", fontsize=7,
                      color="white" if dark else "#555555")
    axis.set_title(method, fontsize=10)
    axis.set_xticks(range(len(sizes)), [size_label(size) for size in sizes], fontsize=7)
    axis.xaxis.tick_top()
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.tick_params(axis="y", labelleft=show_rows, length=0)
    axis.tick_params(axis="x", length=0)
    for y in range(len(labels)):         # a line between row groups of one mode × TLS
        if y and grid[y][0].cell.row[:2] != grid[y - 1][0].cell.row[:2]:
            axis.axhline(y - 0.5, color="white", linewidth=2)


def draw(report: Report, path: Path, colours: dict[str, str], short: dict[str, str]) -> None:
    by_method: dict[str, list[Result]] = {}
    for result in report.results:
        by_method.setdefault(result.cell.method, []).append(result)
    sizes = list(report.options.sizes)
    rows = len(_grid(report.results, sizes)[0])
    figure, axes = plt.subplots(1, len(by_method), squeeze=False, sharey=True,
                                figsize=(3.5 + 0.85 * len(sizes) * len(by_method),
                                         1.6 + 0.2 * rows))
    for number, (method, results) in enumerate(by_method.items()):
        _panel(axes[0][number], method, results, sizes, colours, short,
               show_rows=number == 0)
    handles = [Patch(color=colours[o], label=o) for o in OUTCOMES]
    handles.append(Patch(color="white", label=f"↻ = {RETRY_PREFIX.rstrip('→')}, retried h1"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7,
                  frameon=False)
    figure.suptitle(f"tlsgate deadlock matrix (on_demand_timeout = "
                    f"{report.options.timeout:g} s; rows that are n/a throughout left out)",
                    fontsize=11)
    figure.tight_layout(rect=(0, 0.03, 1, 0.97))
    figure.savefig(path, dpi=150)
    plt.close(figure)
