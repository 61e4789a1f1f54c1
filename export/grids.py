"""The named grid matrix: export at one grid, verify at the others."""
from __future__ import annotations

from qvl_compile.parity import random_pixels

__all__ = ["EXPORT_GRID", "GRID_MATRIX", "parse_grid", "random_pixels"]

# Grid rows are (t, h, w) in patches; h and w are multiples of the merge size 2.
EXPORT_GRID = ((1, 6, 8), (2, 4, 6))

GRID_MATRIX: dict[str, tuple[tuple[int, int, int], ...]] = {
    "smallest (2x2 patches)": ((1, 2, 2),),
    "wide 4x22": ((1, 4, 22),),
    "tall 22x6": ((1, 22, 6),),
    "larger than table 56x52": ((1, 56, 52),),
    "video t=2": ((2, 8, 12),),
    "video t=3": ((3, 6, 10),),
    "three mixed images": ((1, 8, 8), (1, 4, 14), (1, 12, 6)),
    "image + video": ((1, 10, 8), (2, 6, 6)),
}


def parse_grid(text: str) -> tuple[tuple[int, int, int], ...]:
    """'1x6x8,2x4x6' -> ((1, 6, 8), (2, 4, 6))."""
    rows = []
    for part in text.split(","):
        values = part.strip().lower().split("x")
        if len(values) != 3 or not all(v.isdigit() for v in values):
            raise ValueError(f"grid {part!r}: expected TxHxW, e.g. 1x6x8")
        rows.append(tuple(int(v) for v in values))
    return tuple(rows)
