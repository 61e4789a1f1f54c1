"""When a reply ends, and how much of its text may be shown while it is still growing.

A reply ends at an end-of-sequence token, at a stop string (the text before it is the reply), or at the
token budget. While streaming, text that could still turn out to begin a stop string is held back, and
so is a trailing U+FFFD (a multi-byte character whose bytes are split over tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

from qvl_compile.errors import QvlError

MAX_STOP_STRINGS = 4  # OpenAI's limit


def check_stop_strings(stop) -> tuple[str, ...]:
    """None, a string or a list of strings -> a tuple of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise QvlError(f"stop: expected a string or a list of strings, got {type(stop).__name__}")
    if len(items) > MAX_STOP_STRINGS:
        raise QvlError(f"stop: expected at most {MAX_STOP_STRINGS} strings, got {len(items)}")
    if any(not s for s in items):
        raise QvlError("stop: expected non-empty strings, got an empty one")
    return tuple(items)


@dataclass(frozen=True)
class TextState:
    text: str  # what may be shown now
    finished: bool  # a stop string was found: `text` is the whole reply


def visible_text(decoded: str, stop: tuple[str, ...], ended: bool = False) -> TextState:
    """The decoded reply so far -> the part that is safe to show, and whether a stop string ended it.
    `ended`: the reply ends here anyway (end-of-sequence token, token budget), so nothing is held back."""
    cut = min((decoded.find(s) for s in stop if s in decoded), default=-1)
    if cut >= 0:
        return TextState(decoded[:cut], True)
    if ended:
        return TextState(decoded, False)
    hold = 0
    for s in stop:  # the longest tail of `decoded` that is a proper prefix of a stop string
        for length in range(min(len(s) - 1, len(decoded)), hold, -1):
            if decoded.endswith(s[:length]):
                hold = length
                break
    shown = decoded[:len(decoded) - hold]
    while shown.endswith("\ufffd"):
        shown = shown[:-1]
    return TextState(shown, False)
