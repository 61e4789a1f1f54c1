"""The table of bad inputs: each is tried through the CLI (exit code, one `error:` line) and the Python API.

Used by tests/test_bad_inputs_runtime.py (torch-free), tests/test_bad_inputs_export.py (needs torch), and
run as a script to write docs/validation.md:

    python tests/bad_inputs.py docs/validation.md     # needs torch: builds the tiny model and its exports
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tiny_facts import RAW_CONFIG

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "runtime" / "samples" / "red-house.png"
LONG_PROMPT = "hello world " * 700  # about 4,200 tokens of the tiny tokenizer: over its 4,096 context


@dataclass(frozen=True)
class Context:
    """What the cases start from: `tmp` to write broken copies into, an fp32 export of the tiny model,
    and (with torch) the tiny checkpoint and a vision export of another checkpoint (seed 5)."""
    tmp: Path
    export: Path
    tiny: Path | None = None
    other_vision_export: Path | None = None


@dataclass(frozen=True)
class BadInput:
    id: str
    area: str  # "export" or "runtime"
    what: str  # the input, in words, for the table
    args: Callable[[Context], list[str]]  # CLI arguments after `qvl-compile`
    expect: str  # a fragment of the one error line ("" when the input is accepted)
    api: Callable[[Context], object] | None = None  # the same input through the Python API
    exit_code: int = 1  # 2: rejected by click while parsing the command line
    needs: tuple[str, ...] = field(default=())  # Context fields that must be set
    api_expect: str | None = None  # the API's message fragment, where it differs from the CLI's

    @property
    def api_message(self) -> str:
        return self.expect if self.api_expect is None else self.api_expect


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qvl_compile.cli", *map(str, args)], capture_output=True, text=True)


# -- broken inputs, built on demand in ctx.tmp ---------------------------------------------------------

def copy_of(src: Path, ctx: Context, name: str) -> Path:
    dest = ctx.tmp / name
    if not dest.exists():
        shutil.copytree(src, dest)
    return dest


def edited_checkpoint(ctx: Context, name: str, edit: Callable[[dict], None]) -> Path:
    folder = copy_of(ctx.tiny, ctx, name)
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def export_without(ctx: Context, name: str) -> Path:
    folder = copy_of(ctx.export, ctx, f"export-without-{name}")
    (folder / name).unlink(missing_ok=True)
    return folder


def export_truncated(ctx: Context, name: str) -> Path:
    folder = copy_of(ctx.export, ctx, f"export-truncated-{name}")
    path = folder / name
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    return folder


def export_with_flipped_byte(ctx: Context, name: str) -> Path:
    """Same size, different content: only the sha256 check (--verify-hashes) can see it."""
    folder = copy_of(ctx.export, ctx, f"export-flipped-{name}")
    path = folder / name
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last initializer's raw data: the proto still parses
    path.write_bytes(bytes(data))
    return folder


def export_with_mixed_manifest(ctx: Context) -> Path:
    folder = copy_of(ctx.export, ctx, "export-mixed-manifest")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["vision"]["source_sha256"] = "0" * 64  # as if merged from another export's manifest
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def export_with_foreign_vision(ctx: Context) -> Path:
    """vision.onnx copied in from an export of another checkpoint of the same architecture (same size)."""
    folder = copy_of(ctx.export, ctx, "export-foreign-vision")
    shutil.copy2(ctx.other_vision_export / "vision.onnx", folder / "vision.onnx")
    return folder


def text_file(ctx: Context, name: str, content: str) -> Path:
    path = ctx.tmp / name
    path.write_text(content)
    return path


def still_image(ctx: Context) -> Path:
    path = ctx.tmp / "still.png"
    shutil.copyfile(SAMPLE_IMAGE, path)
    return path


def png_declaring(ctx: Context, width: int, height: int) -> Path:
    """A PNG header claiming width x height pixels (no real pixel data): Pillow's size guard must refuse it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path = ctx.tmp / f"declared-{width}x{height}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def image_in_mode(ctx: Context, mode: str, size: tuple[int, int] = (60, 44), suffix: str = "png") -> Path:
    from PIL import Image

    path = ctx.tmp / f"image-{mode}-{size[0]}x{size[1]}.{suffix}"
    with Image.open(SAMPLE_IMAGE) as sample:
        sample.convert("RGB").resize(size).convert(mode).save(path)
    return path


def video_without_frames(ctx: Context) -> Path:
    import av

    path = ctx.tmp / "no-frames.avi"  # AVI keeps the stream header even with no packets
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def audio_only(ctx: Context) -> Path:
    import wave

    path = ctx.tmp / "audio-only.wav"
    with wave.open(str(path), "wb") as sound:
        sound.setnchannels(1), sound.setsampwidth(2), sound.setframerate(8000)
        sound.writeframes(b"\0\0" * 800)
    return path


# -- the API side of runtime cases -----------------------------------------------------------------------

def pipeline_generate(export: Path, prompt: str = "Describe.", images=(), video=None, max_new_tokens: int = 2,
                      stop=None, verify_hashes: bool = False):
    from qvl_compile.runtime.pipeline import Pipeline

    return Pipeline(export, verify_hashes=verify_hashes).generate(prompt, images=list(images), video=video,
                                                                   max_new_tokens=max_new_tokens, greedy=True, stop=stop)


def export_api(model: Path, out: Path, **options):
    from qvl_compile.export.pipeline import export_model

    return export_model(model, out, component="vision", **options)


def gen(export: Path, *extra: object) -> list[str]:
    return ["generate", str(export), *map(str, extra)] + (["--prompt", "Describe."] if "--prompt" not in extra else [])


def as_qwen2_vl(raw: dict) -> None:
    raw.update(model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"])


RUNTIME_CASES = [
    BadInput("export-missing", "runtime", "export folder that does not exist",
             lambda c: gen(c.tmp / "nope"), "does not exist",
             lambda c: pipeline_generate(c.tmp / "nope")),
    BadInput("export-not-ours", "runtime", "a folder that is not an export (no manifest.json)",
             lambda c: gen(c.tmp), "expected manifest.json",
             lambda c: pipeline_generate(c.tmp)),
    BadInput("export-missing-file", "runtime", "export with vision.onnx deleted",
             lambda c: gen(export_without(c, "vision.onnx")), "missing vision.onnx",
             lambda c: pipeline_generate(export_without(c, "vision.onnx"))),
    BadInput("export-truncated", "runtime", "export with decoder.onnx cut to half its size",
             lambda c: gen(export_truncated(c, "decoder.onnx")), "truncated or replaced",
             lambda c: pipeline_generate(export_truncated(c, "decoder.onnx"))),
    BadInput("export-changed-hash", "runtime", "decoder.onnx changed, same size, with --verify-hashes",
             lambda c: gen(export_with_flipped_byte(c, "decoder.onnx"), "--verify-hashes"), "sha256 differs",
             lambda c: pipeline_generate(export_with_flipped_byte(c, "decoder.onnx"), verify_hashes=True)),
    BadInput("export-changed-asset", "runtime", "tokenizer.json changed, same size, with --verify-hashes",
             lambda c: gen(export_with_flipped_byte(c, "tokenizer.json"), "--verify-hashes"), "sha256 differs",
             lambda c: pipeline_generate(export_with_flipped_byte(c, "tokenizer.json"), verify_hashes=True)),
    BadInput("export-mixed-manifest", "runtime", "manifest whose vision artifact names another checkpoint",
             lambda c: gen(export_with_mixed_manifest(c)), "graphs from different checkpoints",
             lambda c: pipeline_generate(export_with_mixed_manifest(c))),
    BadInput("export-foreign-graph", "runtime", "vision.onnx copied in from another checkpoint's export",
             lambda c: gen(export_with_foreign_vision(c)), "copied in from another export",
             lambda c: pipeline_generate(export_with_foreign_vision(c)), needs=("other_vision_export",)),
    BadInput("image-missing", "runtime", "--image path that does not exist",
             lambda c: gen(c.export, "--image", c.tmp / "missing.png"), "does not exist",
             lambda c: pipeline_generate(c.export, images=[c.tmp / "missing.png"])),
    BadInput("image-empty", "runtime", "an empty .png file",
             lambda c: gen(c.export, "--image", text_file(c, "empty.png", "")), "is an empty file",
             lambda c: pipeline_generate(c.export, images=[text_file(c, "empty.png", "")])),
    BadInput("image-text", "runtime", "a text file named .png",
             lambda c: gen(c.export, "--image", text_file(c, "notes.png", "not an image")), "not a readable image",
             lambda c: pipeline_generate(c.export, images=[text_file(c, "notes.png", "not an image")])),
    BadInput("image-bomb", "runtime", "a PNG declaring 20000x20000 pixels",
             lambda c: gen(c.export, "--image", png_declaring(c, 20000, 20000)), "image too large",
             lambda c: pipeline_generate(c.export, images=[png_declaring(c, 20000, 20000)])),
    BadInput("image-aspect", "runtime", "a 1x300 image (aspect ratio over 200)",
             lambda c: gen(c.export, "--image", image_in_mode(c, "RGB", (300, 1))), "aspect ratio must be at most 200",
             lambda c: pipeline_generate(c.export, images=[image_in_mode(c, "RGB", (300, 1))])),
    BadInput("image-cmyk", "runtime", "a CMYK JPEG (converted to RGB as transformers does)",
             lambda c: gen(c.export, "--image", image_in_mode(c, "CMYK", suffix="jpg")), "",
             lambda c: pipeline_generate(c.export, images=[image_in_mode(c, "CMYK", suffix="jpg")]), exit_code=0),
    BadInput("image-greyscale", "runtime", "a greyscale PNG (converted to RGB)",
             lambda c: gen(c.export, "--image", image_in_mode(c, "L")), "",
             lambda c: pipeline_generate(c.export, images=[image_in_mode(c, "L")]), exit_code=0),
    BadInput("image-palette", "runtime", "a palette PNG (converted to RGB)",
             lambda c: gen(c.export, "--image", image_in_mode(c, "P")), "",
             lambda c: pipeline_generate(c.export, images=[image_in_mode(c, "P")]), exit_code=0),
    BadInput("image-alpha", "runtime", "an RGBA PNG (alpha composited over white)",
             lambda c: gen(c.export, "--image", image_in_mode(c, "RGBA")), "",
             lambda c: pipeline_generate(c.export, images=[image_in_mode(c, "RGBA")]), exit_code=0),
    BadInput("image-one-pixel", "runtime", "a 1x1 image (scaled up to min_pixels)",
             lambda c: gen(c.export, "--image", image_in_mode(c, "RGB", (1, 1))), "",
             lambda c: pipeline_generate(c.export, images=[image_in_mode(c, "RGB", (1, 1))]), exit_code=0),
    BadInput("video-text", "runtime", "a text file named .mp4",
             lambda c: gen(c.export, "--video", text_file(c, "clip.mp4", "not a video")), "cannot decode video",
             lambda c: pipeline_generate(c.export, video=text_file(c, "clip.mp4", "not a video"))),
    BadInput("video-empty", "runtime", "an empty .mp4 file",
             lambda c: gen(c.export, "--video", text_file(c, "empty.mp4", "")), "does not exist or is empty",
             lambda c: pipeline_generate(c.export, video=text_file(c, "empty.mp4", ""))),
    BadInput("video-no-frames", "runtime", "a video container with a stream but no frames",
             lambda c: gen(c.export, "--video", video_without_frames(c)), "has no frames",
             lambda c: pipeline_generate(c.export, video=video_without_frames(c))),
    BadInput("video-audio-only", "runtime", "an audio-only file as --video",
             lambda c: gen(c.export, "--video", audio_only(c)), "holds no video stream",
             lambda c: pipeline_generate(c.export, video=audio_only(c))),
    BadInput("video-still-image", "runtime", "a PNG as --video (PyAV would open it as one frame at 25 fps)",
             lambda c: gen(c.export, "--video", still_image(c)), "expected a video, got a still image",
             lambda c: pipeline_generate(c.export, video=still_image(c))),
    BadInput("stop-empty", "runtime", "--stop ''",
             lambda c: gen(c.export, "--stop", ""), "stop: expected non-empty strings",
             lambda c: pipeline_generate(c.export, stop=[""])),
    BadInput("prompt-too-long", "runtime", "a prompt of about 4,200 tokens (context 4,096)",
             lambda c: gen(c.export, "--prompt", LONG_PROMPT), "exceeds the context of 4096 tokens",
             lambda c: pipeline_generate(c.export, LONG_PROMPT)),
    BadInput("new-tokens-too-many", "runtime", "--max-new-tokens 5000 (context 4,096)",
             lambda c: gen(c.export, "--max-new-tokens", 5000), "exceeds the context of 4096 tokens",
             lambda c: pipeline_generate(c.export, max_new_tokens=5000)),
    BadInput("new-tokens-zero", "runtime", "--max-new-tokens 0",
             lambda c: gen(c.export, "--max-new-tokens", 0), "0 is not in the range x>=1",
             lambda c: pipeline_generate(c.export, max_new_tokens=0), exit_code=2,
             api_expect="max_new_tokens must be at least 1, got 0"),
    BadInput("prompt-empty", "runtime", "an empty prompt and no media",
             lambda c: gen(c.export, "--prompt", "  "), "nothing to answer",
             lambda c: pipeline_generate(c.export, "  ")),
    BadInput("prompt-reserved", "runtime", "a prompt containing <|image_pad|>",
             lambda c: gen(c.export, "--prompt", "look <|image_pad|>"), "reserved token <|image_pad|>",
             lambda c: pipeline_generate(c.export, "look <|image_pad|>")),
]

WRONG_TENSOR = "model.language_model.layers.0.mlp.up_proj.weight"  # [intermediate, hidden] in the tiny model
_TEXT = RAW_CONFIG["text_config"]
UP_PROJ = [_TEXT["intermediate_size"], _TEXT["hidden_size"]]

EXPORT_CASES = [
    BadInput("model-missing", "export", "MODEL_DIR that does not exist",
             lambda c: ["export", c.tmp / "nope", c.tmp / "out"], "does not exist",
             lambda c: export_api(c.tmp / "nope", c.tmp / "out")),
    BadInput("model-not-checkpoint", "export", "a folder without config.json",
             lambda c: ["export", c.tmp, c.tmp / "out"], "expected config.json",
             lambda c: export_api(c.tmp, c.tmp / "out")),
    BadInput("model-bad-json", "export", "config.json that is not JSON",
             lambda c: ["export", text_file(c, "config.json", "{oops").parent, c.tmp / "out"], "not valid JSON",
             lambda c: export_api(text_file(c, "config.json", "{oops").parent, c.tmp / "out")),
    BadInput("model-other-arch", "export", "a Qwen2-VL checkpoint (model_type qwen2_vl)",
             lambda c: ["export", edited_checkpoint(c, "qwen2", as_qwen2_vl), c.tmp / "o"],
             "model_type 'qwen2_vl'", needs=("tiny",),
             api=lambda c: export_api(edited_checkpoint(c, "qwen2", as_qwen2_vl),
                                      c.tmp / "o")),
    BadInput("model-temporal-patch", "export", "vision_config.temporal_patch_size 3",
             lambda c: ["export", edited_checkpoint(c, "tp3", lambda r: r["vision_config"].update(temporal_patch_size=3)),
                        c.tmp / "o"], "only temporal_patch_size 2 is supported, got 3", needs=("tiny",),
             api=lambda c: export_api(edited_checkpoint(c, "tp3", lambda r: r["vision_config"].update(
                 temporal_patch_size=3)), c.tmp / "o")),
    BadInput("model-merge-size", "export", "vision_config.spatial_merge_size 4",
             lambda c: ["export", edited_checkpoint(c, "ms4", lambda r: r["vision_config"].update(spatial_merge_size=4)),
                        c.tmp / "o"], "only spatial_merge_size 2 is supported, got 4", needs=("tiny",),
             api=lambda c: export_api(edited_checkpoint(c, "ms4", lambda r: r["vision_config"].update(
                 spatial_merge_size=4)), c.tmp / "o")),
    BadInput("model-no-deepstack", "export", "vision_config without deepstack_visual_indexes",
             lambda c: ["export", edited_checkpoint(c, "nods", lambda r: r["vision_config"].pop("deepstack_visual_indexes")),
                        c.tmp / "o"], "missing config key (tried deepstack_visual_indexes)", needs=("tiny",),
             api=lambda c: export_api(edited_checkpoint(c, "nods", lambda r: r["vision_config"].pop(
                 "deepstack_visual_indexes")), c.tmp / "o")),
    BadInput("model-no-weights", "export", "a checkpoint with model.safetensors deleted",
             lambda c: ["export", export_without_weights(c), c.tmp / "o"], "missing weight file(s)", needs=("tiny",),
             api=lambda c: export_api(export_without_weights(c), c.tmp / "o")),
    BadInput("model-truncated-weights", "export", "model.safetensors cut to 5,000 bytes",
             lambda c: ["export", truncated_weights(c), c.tmp / "o"], "truncated", needs=("tiny",),
             api=lambda c: export_api(truncated_weights(c), c.tmp / "o")),
    BadInput("model-missing-shard", "export", "a sharded checkpoint with its second shard deleted",
             lambda c: ["export", sharded(c, "missing-shard", drop_shard=1), c.tmp / "o"],
             "missing weight file(s)", needs=("tiny",),
             api=lambda c: export_api(sharded(c, "missing-shard", drop_shard=1), c.tmp / "o")),
    BadInput("model-index-wrong-file", "export", "an index that puts a tensor in a shard that does not hold it",
             lambda c: ["export", sharded(c, "wrong-index", misplace=WRONG_TENSOR), c.tmp / "o"],
             f"names tensor {WRONG_TENSOR} in model-0000", needs=("tiny",),
             api=lambda c: export_api(sharded(c, "wrong-index", misplace=WRONG_TENSOR), c.tmp / "o")),
    BadInput("model-wrong-shape", "export", f"{WRONG_TENSOR} stored transposed",
             lambda c: ["export", sharded(c, "wrong-shape", transpose=WRONG_TENSOR), c.tmp / "o"],
             f"tensor {WRONG_TENSOR} has shape {UP_PROJ[::-1]}, the config expects {UP_PROJ}", needs=("tiny",),
             api=lambda c: export_api(sharded(c, "wrong-shape", transpose=WRONG_TENSOR), c.tmp / "o")),
    BadInput("model-wrong-dtype", "export", f"{WRONG_TENSOR} stored as int32",
             lambda c: ["export", int32_tensor(c), c.tmp / "o"], f"tensor {WRONG_TENSOR} is I32, expected one of",
             needs=("tiny",), api=lambda c: export_api(int32_tensor(c), c.tmp / "o")),
    BadInput("model-truncated-shard", "export", "the last shard of a sharded checkpoint missing its last 100 bytes",
             lambda c: ["export", sharded(c, "cut-shard", cut_last=100), c.tmp / "o"], "ends past the end of the file",
             needs=("tiny",), api=lambda c: export_api(sharded(c, "cut-shard", cut_last=100), c.tmp / "o")),
    BadInput("out-foreign", "export", "OUT_DIR exists and holds someone else's files",
             lambda c: ["export", c.tiny, foreign_folder(c), "--component", "vision"], "pass --force",
             lambda c: export_api(c.tiny, foreign_folder(c)), needs=("tiny",)),
    BadInput("out-is-file", "export", "OUT_DIR is a file",
             lambda c: ["export", c.tiny, text_file(c, "out.txt", "x")], "is a file",
             lambda c: export_api(c.tiny, text_file(c, "out.txt", "x")), needs=("tiny",), exit_code=2,
             api_expect="exists and is not a folder"),
    BadInput("block-size", "export", "--block-size 48",
             lambda c: ["export", c.tiny, c.tmp / "o", "--block-size", 48], "--block-size: expected one of 16, 32",
             needs=("tiny",)),
    BadInput("prefill-fp32", "export", "--prefill int8 --quant fp32",
             lambda c: ["export", c.tiny, c.tmp / "o", "--prefill", "int8", "--quant", "fp32"],
             "--prefill int8: expected --quant int4", needs=("tiny",)),
]


def export_without_weights(ctx: Context) -> Path:
    folder = copy_of(ctx.tiny, ctx, "no-weights")
    (folder / "model.safetensors").unlink(missing_ok=True)
    return folder


def truncated_weights(ctx: Context) -> Path:
    folder = copy_of(ctx.tiny, ctx, "truncated-weights")
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.truncate(5000)
    return folder


def sharded(ctx: Context, name: str, drop_shard: int | None = None, misplace: str | None = None,
            transpose: str | None = None, cut_last: int = 0) -> Path:
    """The tiny checkpoint as bf16 shards of about 400 KB with an index, then broken as asked."""
    import torch

    from qvl_compile.export.checkpoint_files import INDEX_NAME, CheckpointReader, TensorSpec, write_sharded

    folder = ctx.tmp / name
    if folder.exists():
        return folder
    folder.mkdir()
    reader = CheckpointReader(ctx.tiny)
    tensors = {n: reader.read(n).to(torch.bfloat16) for n in reader.header}
    if transpose:
        tensors[transpose] = tensors[transpose].T.contiguous()
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    files = write_sharded(folder, specs, lambda spec: tensors[spec.name], max_shard_bytes=400_000)
    for asset in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(ctx.tiny / asset, folder / asset)
    if drop_shard is not None:
        files[drop_shard].unlink()
    if misplace:
        index = json.loads((folder / INDEX_NAME).read_text())
        index["weight_map"][misplace] = files[0].name if index["weight_map"][misplace] != files[0].name else files[1].name
        (folder / INDEX_NAME).write_text(json.dumps(index))
    if cut_last:
        with open(files[-1], "r+b") as fh:
            fh.truncate(files[-1].stat().st_size - cut_last)
    return folder


def int32_tensor(ctx: Context) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    folder = copy_of(ctx.tiny, ctx, "int32-tensor")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[WRONG_TENSOR] = tensors[WRONG_TENSOR].to(torch.int32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def foreign_folder(ctx: Context) -> Path:
    folder = ctx.tmp / "mine"
    folder.mkdir(exist_ok=True)
    (folder / "keep.txt").write_text("precious")
    return folder


def check_cli(case: BadInput, ctx: Context) -> subprocess.CompletedProcess:
    """Run the case through the CLI; assert the exit code and, for errors, exactly one `error:` line."""
    result = cli(*case.args(ctx))
    assert result.returncode == case.exit_code, (result.returncode, result.stderr[-2000:])
    if case.exit_code:
        lines = result.stderr.strip().splitlines()  # progress logs may come first; one error line, last
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
        assert case.expect in errors[0], errors[0]
        assert "Traceback" not in result.stderr
    return result


def write_table(path: Path) -> None:
    """Build the tiny model and its exports in a temporary folder, run every case, write a Markdown table."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        assert cli("-q", "tiny", root / "tiny").returncode == 0
        from qvl_compile.families.qwen3_vl.fixtures import write_tiny_untrained

        write_tiny_untrained(root / "other", seed=5)  # the trained architecture, other weights
        assert cli("-q", "export", root / "tiny", root / "export", "--quant", "fp32").returncode == 0
        assert cli("-q", "export", root / "other", root / "other-export", "--component", "vision").returncode == 0
        rows = ["| area | input | exit | message |", "|---|---|---|---|"]
        for case in RUNTIME_CASES + EXPORT_CASES:
            case_tmp = root / "cases" / case.id
            case_tmp.mkdir(parents=True)
            ctx = Context(case_tmp, root / "export", root / "tiny", root / "other-export")
            result = check_cli(case, ctx)
            shown = result.stderr.strip().replace(str(root), "…").replace("|", "\\|") if case.exit_code else \
                "accepted (exit 0)"
            rows.append(f"| {case.area} | {case.what} | {result.returncode} | `{shown}` |")
            print(rows[-1], flush=True)
    path.write_text("# Bad inputs and their messages\n\nWritten by `python tests/bad_inputs.py docs/validation.md`: "
                    "each input through `qvl-compile` on the tiny model (`…` stands for the temporary folder).\n\n"
                    + "\n".join(rows) + "\n")


if __name__ == "__main__":
    write_table(Path(sys.argv[1]))
