"""Conversations: system, user and assistant turns whose content is text or parts (text, image, video).

The one shape every front end reduces to (`generate`, `chat`, the server), before the chat template sees it:

    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "What is it?"}]},
     {"role": "assistant", "content": "A cat."},
     {"role": "user", "content": "What colour?"}]

An image part holds a path or a PIL image; a video part a path or a `Video`. `split_media` returns the
template's view (media parts without their payload) and the media in the order the template renders them,
which is the order their placeholders appear in the prompt and so the order of their embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from qvl_compile.errors import QvlError
from qvl_compile.runtime.prompt import RESERVED_TOKENS

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class MediaItem:
    kind: str  # "image" or "video"
    source: object  # path, PIL image or Video


def single_turn(prompt: str, images=(), video=None, system: str | None = None) -> list[dict]:
    """`generate`'s arguments as a conversation: the images (one, or a list), then the video, then the text."""
    _check_text(prompt, "the prompt")
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if system is not None:
        _check_text(system, "the system prompt")
    parts = [{"type": "image", "image": image} for image in images]
    if video is not None:
        parts.append({"type": "video", "video": video})
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": parts + [{"type": "text", "text": prompt}]}]


def _check_text(text, where: str) -> str:
    if not isinstance(text, str):
        raise QvlError(f"{where}: expected text, got {type(text).__name__}")
    reserved = [token for token in RESERVED_TOKENS if token in text]
    if reserved:
        raise QvlError(f"{where} contains the reserved token {reserved[0]}; pass media as images or videos "
                       "(--image/--video, or image/video parts): their placeholders are inserted for you")
    return text


def split_media(messages) -> tuple[list[dict], list[MediaItem]]:
    """-> (messages for the chat template, media in prompt order). Raises QvlError naming the bad turn."""
    if not isinstance(messages, list) or not messages:
        raise QvlError("messages: expected a non-empty list of turns")
    rendered, media, has_content = [], [], False
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise QvlError(f"{where}: expected an object with role and content, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise QvlError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            has_content |= bool(content.strip()) and role == "user"
            rendered.append({"role": role, "content": _check_text(content, f"{where}.content")})
            continue
        if not isinstance(content, list):
            raise QvlError(f"{where}.content: expected text or a list of parts, got {type(content).__name__}")
        parts = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = _check_text(part.get("text"), f"{where}.content[{number}].text")
                has_content |= bool(text.strip()) and role == "user"
                parts.append({"type": "text", "text": text})
            elif kind in ("image", "video"):
                if role == "system":
                    raise QvlError(f"{where}: a system turn holds text only, got an {kind}")
                if part.get(kind) is None:
                    raise QvlError(f"{where}.content[{number}]: an {kind} part without its {kind!r} field")
                media.append(MediaItem(kind, part[kind]))
                has_content = True
                parts.append({"type": kind})
            else:
                raise QvlError(f"{where}.content[{number}].type: expected text, image or video, got {kind!r}")
        rendered.append({"role": role, "content": parts})
    if rendered[-1]["role"] != "user":
        raise QvlError(f"the last turn must be the user's, got {rendered[-1]['role']!r}")
    if not has_content:
        raise QvlError("empty prompt and no image or video: nothing to answer")
    return rendered, media
