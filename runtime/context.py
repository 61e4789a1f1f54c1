"""The one rule about context length that the pipeline and the engine both enforce."""
from __future__ import annotations

from qvl_compile.errors import QvlError


def check_fits(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    """Raise QvlError unless at least one new token is asked for and prompt + new tokens fit `context` (None: no
    limit)."""
    if max_new_tokens < 1:
        raise QvlError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if context and prompt_tokens + max_new_tokens > context:
        raise QvlError(f"prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the context of "
                       f"{context} tokens")
