"""OpenAI message content -> the runtime's conversation: text parts, and media decoded from data: URLs.

`image_url` and `video_url` parts (the latter as vLLM names it) carry `data:<mime>;base64,...` URLs. Remote
http(s) URLs are never fetched. Local files (`file://` URLs or plain paths) are read only when the operator
named a media directory, and only from inside it. Decoding is bounded: pixels per image, frames per video,
media per request; every refusal names the message and part it came from.
"""
from __future__ import annotations

import base64
import binascii
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from qvl_compile.errors import QvlError
from qvl_compile.runtime.preprocess import to_rgb
from qvl_compile.serve.protocol import ApiError


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 4096 * 4096
    max_video_frames: int = 256  # decoded frames, before sampling
    max_media: int = 16  # images and videos in one request
    media_dir: Path | None = None  # local files allowed under here; None: none


def _payload(url, where: str, limits: MediaLimits) -> tuple[bytes | None, Path | None]:
    """-> (bytes of a data: URL, or the path of an allowed local file)."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{where}: expected a URL string, got {url!r}", "messages")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, f"{where}: expected a data:<mime>;base64,<data> URL", "messages")
        try:
            return base64.b64decode(data, validate=True), None
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data: URL is not valid base64", "messages") from None
    try:
        parsed = urlparse(url)
    except ValueError:
        raise ApiError(400, f"{where}: not a valid URL", "messages") from None
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        raise ApiError(400, f"{where}: remote media URLs are not fetched by this server; send the bytes as a "
                            "data: URL", "messages", "remote_media_refused")
    if scheme not in ("", "file"):
        raise ApiError(400, f"{where}: expected a data: URL, got the scheme {scheme!r}", "messages")
    if limits.media_dir is None:
        raise ApiError(400, f"{where}: local files are refused (the server was started without --media-dir); "
                            "send the bytes as a data: URL", "messages", "local_media_refused")
    path = Path(unquote(parsed.path) if scheme == "file" else url)
    root = limits.media_dir.resolve()
    try:
        resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
        inside = resolved.is_relative_to(root) and resolved.is_file()
    except (ValueError, OSError):  # a NUL byte, a name too long
        inside = False
    if not inside:
        raise ApiError(400, f"{where}: expected a file under the media directory, got {url!r}", "messages",
                       "local_media_refused")
    return None, resolved


def decode_image(url, where: str, limits: MediaLimits) -> Image.Image:
    data, path = _payload(url, where, limits)
    try:
        image = Image.open(io.BytesIO(data) if data is not None else path)
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise ApiError(400, f"{where}: the image has {width}x{height} pixels, more than the limit of "
                                f"{limits.max_image_pixels}", "messages", "image_too_large")
        image.load()
    except ApiError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise ApiError(400, f"{where}: not a decodable image", "messages") from None
    return to_rgb(image)  # alpha composited over white, as the runtime does for files


def decode_video(url, where: str, limits: MediaLimits, config):
    from qvl_compile.runtime.video import read_video

    data, path = _payload(url, where, limits)
    try:
        if path is not None:
            return read_video(path, config, max_frames=limits.max_video_frames, max_pixels=limits.max_image_pixels)
        with tempfile.NamedTemporaryFile(suffix=".video") as tmp:
            tmp.write(data)
            tmp.flush()
            return read_video(tmp.name, config, max_frames=limits.max_video_frames, max_pixels=limits.max_image_pixels)
    except QvlError as exc:
        message = str(exc).split(": ", 1)[-1] if path is None else str(exc)  # not the temporary file's name
        raise ApiError(400, f"{where}: {message}", "messages") from None


def _url(part: dict, field: str, where: str):
    value = part.get(field)
    return value.get("url") if isinstance(value, dict) else value


def to_conversation(messages: list, limits: MediaLimits, video_config_loader) -> list[dict]:
    """OpenAI messages -> runtime conversation (runtime/conversation.py), media decoded."""
    out, media = [], 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where}: expected an object, got {type(message).__name__}", "messages")
        role = message.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role: expected system, developer, user or assistant, got {role!r}",
                           "messages")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"{where}.content: expected a string or a list of parts, got "
                                f"{type(content).__name__}", "messages")
        parts = []
        for number, part in enumerate(content):
            at = f"{where}.content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ApiError(400, f"{at}.text: expected a string, got {type(text).__name__}", "messages")
                parts.append({"type": "text", "text": text})
            elif kind in ("image_url", "video_url"):
                if role != "user":
                    raise ApiError(400, f"{at}: media are accepted in user turns only, got one in a {role} turn",
                                   "messages")
                media += 1
                if media > limits.max_media:
                    raise ApiError(400, f"{at}: more than {limits.max_media} images and videos in one request",
                                   "messages", "too_many_media")
                url = _url(part, kind, at)
                if kind == "image_url":
                    parts.append({"type": "image", "image": decode_image(url, at, limits)})
                else:
                    parts.append({"type": "video", "video": decode_video(url, at, limits, video_config_loader())})
            else:
                raise ApiError(400, f"{at}.type: expected text, image_url or video_url, got {kind!r}", "messages")
        out.append({"role": role, "content": parts})
    return out
