"""Hangul in matplotlib: NanumGothic, as bundled by the koreanize-matplotlib package.

The package's own import runs code that needs `distutils` (gone in Python 3.12), so this finds its
font file without importing it.
"""
from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

FONT_FILE = "NanumGothic.ttf"


def font_path() -> Path | None:
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "fonts" / FONT_FILE
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def use_korean_font() -> str | None:
    """Register NanumGothic with matplotlib and make it the default family; returns its name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager

    path = font_path()
    if path is None:
        log.warning("koreanize-matplotlib's NanumGothic was not found; Hangul labels may render as boxes")
        return None
    for extra in sorted(path.parent.glob("NanumGothic*.ttf")):
        font_manager.fontManager.addfont(str(extra))  # Bold too, for titles
    name = font_manager.FontProperties(fname=str(path)).get_name()
    # DejaVu Sans first, NanumGothic for what it lacks (Hangul): matplotlib falls back per glyph in text,
    # and mathtext (log-axis ticks use U+2212) takes the first family, which NanumGothic would fail.
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", name]
    matplotlib.rcParams["mathtext.fontset"] = "dejavusans"
    matplotlib.rcParams["axes.unicode_minus"] = False
    return name
