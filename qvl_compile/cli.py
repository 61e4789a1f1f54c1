"""`qvl-compile`: the command line. It owns the terminal: logging setup, tables, exit codes.

Export-side commands import torch lazily, so `qvl-compile --help` and the runtime work without it.
"""
from __future__ import annotations

import functools
import logging
import signal
import sys
import time
from pathlib import Path

import click

from qvl_compile.errors import QvlError

log = logging.getLogger("qvl_compile")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def quiet_libraries() -> None:
    """torch and transformers configure their own loggers and progress bars on import; calm them."""
    if logging.getLogger().level <= logging.DEBUG:
        return
    for noisy in ("torch", "torch.onnx", "onnxscript", "onnx_ir", "transformers", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def handle_errors(func):
    """Known failures end in one readable line and exit 1; --debug shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except QvlError as exc:
            if debug:
                raise
            _fail(str(exc))
        except ImportError as exc:
            if debug:
                raise
            _fail(f"{exc}; this command needs the export extra: pip install 'qvl-compile[export]' torch==2.13.0")
        except KeyboardInterrupt:
            _fail("interrupted; no partial output was left behind")
        except Exception as exc:
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)")

    return wrapper


class OneLineErrors(click.Group):
    """Usage errors (a missing argument, a bad option value) as one `error:` line and exit 2, like the rest."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra) or 0
        except click.UsageError as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # bare `qvl-compile`: help
                exc.show()
                sys.exit(exc.exit_code)
            command = exc.ctx.command_path if exc.ctx else "qvl-compile"
            click.echo(f"error: {exc.format_message()} (see {command} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            _fail("aborted")


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="qvl-compile")
def main(debug: bool, quiet: bool) -> None:
    """Rewrite and re-export Qwen3-VL to ONNX; run it without PyTorch."""
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C: temporary folders are removed
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--random", "random_weights", is_flag=True,
              help="The tiny seeded random model instead of the trained one (smaller; used by parity tests).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights (with --random).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not a checkpoint folder.")
@click.option("--model-type", default="qwen3_vl", show_default=True, help="The model family's config model_type.")
@handle_errors
def tiny(out_dir: Path, random_weights: bool, seed: int, force: bool, model_type: str) -> None:
    """Write the embedded default model: a small Qwen3-VL trained on the shapes suite (docs/task-suite.md)."""
    from qvl_compile.registry import family_named

    quiet_libraries()
    family = family_named(model_type)
    family.write_tiny(out_dir, seed=seed, force=force, trained=not random_weights)
    what = "trained" if family.ships_trained_tiny and not random_weights else f"random (seed {seed})"
    click.echo(f"wrote the tiny {what} {family.display_name} checkpoint to {out_dir}")


@main.command("random")
@click.argument("arch", metavar="ARCH")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--vision-only", is_flag=True, help="Write only the vision tower's weights (for vision exports).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not a checkpoint folder.")
@click.option("--model-type", default=None, help="The model family's config model_type (default: the family "
              "whose released sizes include ARCH, else qwen3_vl).")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="Decoder layers to write (real width, reduced depth; default: the architecture's).")
@handle_errors
def random_checkpoint(arch: str, out_dir: Path, seed: int, vision_only: bool, force: bool, model_type: str | None,
                      layers: int | None) -> None:
    """Random weights for a released architecture: ARCH is 2b, 4b, 8b, 30b-a3b or a folder with config.json.

    Real-size work without downloading weights: the architecture is exact, the weights are noise.
    """
    from qvl_compile.config import ModelConfig
    from qvl_compile.registry import families, family_named

    quiet_libraries()
    by_size = {size: f for f in families().values() for size in f.random_architectures}
    if model_type:
        family = family_named(model_type)
    elif Path(arch, "config.json").is_file():  # an architecture folder: its own config says the family
        family = family_named(ModelConfig.from_dir(arch).model_type)
    else:
        family = by_size.get(arch.lower(), family_named("qwen3_vl"))
    family.write_random(arch, out_dir, seed=seed, vision_only=vision_only, force=force, layers=layers)
    click.echo(f"wrote random-weight {arch} checkpoint to {out_dir}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--component", type=click.Choice(["vision", "decoder", "all"]), default="all", show_default=True,
              help="Which graphs to write: the vision encoder, the text decoder, or both.")
@click.option("--quant", type=click.Choice(["int4", "fp32"]), default="int4", show_default=True,
              help="Text decoder weights (the vision graph's are chosen by --vision-quant).")
@click.option("--block-size", default="auto", show_default=True,
              help="INT4 block size along the input dim: 16, 32, 64, 128 or 256. auto: 128 for Qwen3-VL with a "
                   "hidden size of 1024 or more (every released size: same task accuracy as 32, faster decode and "
                   "prefill, see the README), else 32; 32 for the MoE family.")
@click.option("--accuracy-level", default=4, show_default=True, type=click.IntRange(0, 4),
              help="MatMulNBits accuracy_level: 4 quantizes activations to int8 (same task accuracy, 3.5x "
                   "faster decode here: see the README); 0/1 keep fp32 activations (logits exact to the weights).")
@click.option("--quantize-lm-head/--no-quantize-lm-head", default=True, show_default=True,
              help="Quantized output projection (with --quant int4, at --lm-head-bits); --no-quantize-lm-head "
                   "keeps it float32.")
@click.option("--lm-head-bits", type=click.Choice(["auto", "4", "8"]), default="auto", show_default=True,
              help="Bits per weight of the quantized output projection (and of a table tied to it). auto: 8 at "
                   "accuracy level 4 for Qwen3-VL (keeps grounding's box digits: see the README), else 4 (the MoE "
                   "family; other levels, where onnxruntime has no fast 8-bit kernel).")
@click.option("--quantize-embedding/--no-quantize-embedding", default=True, show_default=True,
              help="Quantized embedding table (GatherBlockQuantized; shares the lm_head's bytes and bits when the "
                   "checkpoint ties them). --no-quantize-embedding keeps it float32 (+1.2 GB at 2B size).")
@click.option("--fuse-rms-norm/--no-fuse-rms-norm", default=True, show_default=True,
              help="RMSNorm chains as onnxruntime's (Skip)SimplifiedLayerNormalization in the decoder.")
@click.option("--fused-rotary/--no-fused-rotary", default=False, show_default=True,
              help="Rotary (interleaved M-RoPE) as onnxruntime's MRotaryEmbedding, one node per q and k per layer "
                   "(measured 0.95x the elementwise form's decode speed at 2B size: see the README).")
@click.option("--kv-cache", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Decoder KV cache: int8 keeps keys and values as int8 with per-channel scales calibrated at "
                   "export (a quarter of the bytes read per token at long context: see the README).")
@click.option("--prefill", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="int8: also write decoder_prefill.onnx, the decoder with int8 projection weights for onnxruntime's "
                   "integer GEMM, which reads prompts of 8 tokens or more (prefill 0.4x the 4-bit graph's time at 2B "
                   "size: see the README); about 1.4 GB more at 2B size.")
@click.option("--vision-quant", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Vision weights: int8 (onnxruntime dynamic quantization) is about 2x faster on CPU, "
                   "cosine >= 0.998 against PyTorch (checked at export).")
@click.option("--vision-int8-weights", type=click.Choice(["auto", "s8", "u8"]), default="auto", show_default=True,
              help="int8 vision weights: s8 is fastest where the CPU has VNNI or AMX and saturates on x86 without "
                   "them; u8 never saturates; auto picks s8 where this machine has them, else u8.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not an export of ours.")
@handle_errors
def export(model_dir: Path, out_dir: Path, component: str, quant: str, block_size: str, accuracy_level: int,
           quantize_lm_head: bool, lm_head_bits: str, quantize_embedding: bool, fuse_rms_norm: bool, fused_rotary: bool,
           kv_cache: str, prefill: str, vision_quant: str, vision_int8_weights: str, force: bool) -> None:
    """Export MODEL_DIR (a Qwen3-VL checkpoint) to ONNX graphs in OUT_DIR."""
    from qvl_compile.export.decoder_options import QuantOptions
    from qvl_compile.export.pipeline import export_model

    quiet_libraries()
    start = time.perf_counter()
    if block_size != "auto" and not block_size.isdigit():
        raise QvlError(f"--block-size: expected auto or one of 16, 32, 64, 128, 256, got {block_size!r}")
    options = QuantOptions(mode=quant, block_size=None if block_size == "auto" else int(block_size),
                           accuracy_level=accuracy_level,
                           quantize_lm_head=quantize_lm_head, lm_head_bits=None if lm_head_bits == "auto" else int(lm_head_bits),
                           quantize_embedding=quantize_embedding,
                           fuse_rms_norm=fuse_rms_norm, fused_rotary=fused_rotary, kv_cache=kv_cache,
                           prefill=prefill)
    from qvl_compile.export.vision_quant import VisionQuantOptions

    manifest = export_model(model_dir, out_dir, component=component, quant=options, force=force,
                            vision_quant=VisionQuantOptions(mode=vision_quant, weights=vision_int8_weights))
    for name, artifact in manifest.artifacts.items():
        size = sum(f.bytes for f in artifact.files) / 1e6
        click.echo(f"{name}: {', '.join(f.path for f in artifact.files)} ({size:.1f} MB)")
    click.echo(f"exported to {out_dir} in {time.perf_counter() - start:.1f} s")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="The source checkpoint.")
@click.option("--seed", default=1, show_default=True, help="Seed of the random pixel inputs.")
@click.option("--grid", "grids", multiple=True, help="Extra grid to check, e.g. 1x6x8,2x4x4 (repeatable).")
@handle_errors
def verify(export_dir: Path, model_dir: Path, seed: int, grids: tuple[str, ...]) -> None:
    """Compare the exported graphs with eager PyTorch on the named grid matrix; exit 1 on any failure."""
    from qvl_compile.export.grids import GRID_MATRIX, parse_grid
    from qvl_compile.export.verify import verify_export

    quiet_libraries()
    matrix = dict(GRID_MATRIX)
    for text in grids:
        try:
            matrix[f"custom {text}"] = parse_grid(text)
        except ValueError as exc:
            raise QvlError(str(exc)) from None
    rows = verify_export(export_dir, model_dir, matrix, seed=seed)
    for line in parity_table(rows):
        click.echo(line)
    failed = [r for r in rows if not r.passed]
    click.echo("max rel err = max |onnx - torch| / max |torch|; greedy tokens must be identical")
    click.echo("(shown, not required, where activations or the KV cache are quantized)")
    if failed:
        _fail(f"{len(failed)} of {len(rows)} parity checks failed")
    click.echo(f"all {len(rows)} parity checks passed")


def parity_table(rows) -> list[str]:
    """Rows grouped by case (name and t,h,w on their own line), one output per line: 74 columns."""
    lines = [f"{'case / output':<24}{'max abs err':>12}{'max rel err':>12}{'tol':>8}{'cosine':>9}  result"]
    case = None
    for row in rows:
        if (row.name, row.grid) != case:
            case = (row.name, row.grid)
            thw = ";".join(",".join(map(str, g)) for g in row.grid)
            lines.append(f"{row.name} ({thw})" if thw else row.name)
        max_abs = "-" if row.max_abs != row.max_abs else f"{row.max_abs:.2e}"  # NaN: not measured
        cosine = "-" if row.cosine != row.cosine else f"{row.cosine:.5f}"
        if row.exact:
            error, tol = ("same" if row.max_rel == 0 else "differ"), "exact" if row.required else "-"
        else:
            error, tol = f"{row.max_rel:.2e}", f"{row.tolerance:.0e}"
        result = "pass" if row.passed and row.required else "shown" if row.passed else "FAIL"
        lines.append(f"  {row.output:<22}{max_abs:>12}{error:>12}{tol:>8}{cosine:>9}  {result}")
    return lines


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--component", type=click.Choice(["vision"]), default="vision", show_default=True)
@click.option("--rewritten", is_flag=True, help="Walk our rewritten tower instead of transformers' stock one; "
                                                "exit 1 unless everything exports, loads and matches.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.option("--exporter", "exporters", multiple=True, type=click.Choice(["torchscript", "dynamo"]),
              help="Only these exporters (repeatable; default both).")
@click.option("--whole-only", is_flag=True, help="Only the whole model, not every submodule.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here too.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes sharing the probes (default: one per core, at most 2).")
@click.option("--attention", type=click.Choice(["sdpa", "eager"]), default="sdpa", show_default=True,
              help="transformers' attention implementation for the stock tower (the seed study used eager).")
@handle_errors
def analyze(model_dir: Path, component: str, rewritten: bool, fmt: str, exporters: tuple[str, ...],
            whole_only: bool, output: Path | None, jobs: int | None, attention: str) -> None:
    """Try every submodule of the vision tower with the TorchScript and dynamo ONNX exporters.

    Inputs come from a forward pass of the whole model (hooks); each export is loaded and run in ONNX
    Runtime and compared with PyTorch at the recorded shape and at a second one (baked-in shapes fail
    there). The report ends with the data-dependent Python constructs found in the code that runs.
    """
    from qvl_compile.export.analysis.probe import EXPORTERS
    from qvl_compile.export.analysis.report import render, verdict
    from qvl_compile.export.analysis.study import analyze as run_analysis

    quiet_libraries()
    bar = None

    def progress(done: int, total: int, label: str) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="probing", file=sys.stderr, show_pos=True)
            bar.__enter__()
        bar.update(done - bar.pos, current_item=label)

    try:
        report = run_analysis(model_dir, rewritten=rewritten, exporters=exporters or EXPORTERS,
                              modules=not whole_only, progress=progress, jobs=jobs, attention=attention)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    text = render(report, fmt)
    click.echo(text)
    if output:
        output.write_text(text + ("" if text.endswith("\n") else "\n"))
    if rewritten and not verdict(report).startswith("clean"):
        _fail(f"the rewritten tower is not clean: {verdict(report)}")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["vision", "positions", "decoder", "preprocess",
                                                                    "generate"]),
              help="Only these case kinds (repeatable; default: all).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not a golden folder.")
@click.option("--model-type", default="qwen3_vl", show_default=True, help="The model family's config model_type.")
@handle_errors
def golden(out_dir: Path, kinds: tuple[str, ...], force: bool, model_type: str) -> None:
    """Write a family's tiny-model PyTorch goldens (the repository's copies: golden/data, golden/moe).

    Writes the family's tiny checkpoint, exports it, and records transformers' outputs with the
    inputs, versions and tolerances of every case.
    """
    from qvl_compile.golden.generate import ALL_KINDS, generate_goldens
    from qvl_compile.registry import family_named

    quiet_libraries()
    start = time.perf_counter()
    family = family_named(model_type).name
    index = generate_goldens(out_dir, kinds=kinds or ALL_KINDS, force=force, family=family)
    for kind, reason in index["generator"]["skipped"].items():
        click.echo(f"skipped {kind}: {reason}", err=True)
    click.echo(f"wrote {len(index['cases'])} golden cases and {len(index['graphs'])} graph summaries to {out_dir} "
               f"in {time.perf_counter() - start:.1f} s")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The user's message.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="An image file (repeatable).")
@click.option("--video", type=click.Path(path_type=Path), help="A video file (decoded with PyAV).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1),
              help="Stop after this many generated tokens.")
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of the checkpoint's sampling defaults.")
@click.option("--system", help="A system prompt before the user's message.")
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature (0: greedy).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling mass.")
@click.option("--top-k", type=click.IntRange(min=0), help="Sample among the k most likely tokens (0: off).")
@click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True),
              help="Divide the logits of tokens already seen (transformers' rule).")
@click.option("--stop", "stops", multiple=True, help="End the reply before this text (repeatable, up to 4).")
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--threads", default=0, show_default=True, help="onnxruntime intra-op threads (0: one per core).")
@click.option("--json", "as_json", is_flag=True, help='Print {"text": ..., "token_ids": [...]} instead of streaming.')
@click.option("--boxes", is_flag=True, help="Also print the reply's grounding boxes in the first image's pixels (JSON).")
@click.option("--draw-boxes", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the first image with the reply's boxes and labels drawn (PNG).")
@click.option("--verify-hashes", is_flag=True,
              help="Check every file's sha256 against the manifest before loading (sizes are always checked).")
@handle_errors
def generate(export_dir: Path, prompt: str, images: tuple[Path, ...], video: Path | None, max_new_tokens: int,
             greedy: bool, system: str | None, temperature: float | None, top_p: float | None, top_k: int | None,
             repetition_penalty: float | None, stops: tuple[str, ...], seed: int | None, threads: int, as_json: bool,
             boxes: bool, draw_boxes: Path | None, verify_hashes: bool) -> None:
    """Generate text from an export folder with onnxruntime only (no torch).

    The reply goes to stdout; its token count and timing to stderr.
    """
    import json

    from qvl_compile.runtime.conversation import single_turn
    from qvl_compile.runtime.pipeline import Pipeline

    if (boxes or draw_boxes) and not images:
        raise QvlError("--boxes/--draw-boxes: expected an --image (boxes are relative to the first image), got none")
    if draw_boxes and draw_boxes.suffix.lower() != ".png":
        raise QvlError(f"--draw-boxes: expected a .png file name, got {str(draw_boxes)!r}")
    pipe = Pipeline(export_dir, intra_op_threads=threads, verify_hashes=verify_hashes)
    sampling = pipe.sampling.overridden(temperature, top_p, top_k, repetition_penalty)
    started = time.perf_counter()
    prepared = pipe.prepare_messages(single_turn(prompt, list(images), video, system))
    ids, shown, text, first = [], "", "", None
    tokens = pipe.stream_prepared(prepared, max_new_tokens, sampling.greedy() if greedy else sampling, seed,
                                  list(stops) or None)  # checks its arguments before the label is shown
    if not as_json:
        click.echo("answer: ", nl=False, err=True)  # a label on stderr: stdout stays the reply alone
    for token, text in tokens:
        first = first or time.perf_counter()
        ids.append(token)
        if not as_json and text.startswith(shown):
            click.echo(text[len(shown):], nl=False)
            shown = text
    finished = time.perf_counter()
    found = _reply_boxes(text, images[0]) if (boxes or draw_boxes) else None
    if as_json:
        result = {"text": text, "token_ids": ids}
        if boxes:
            result["boxes"] = None if found is None else [b.as_dict() for b in found]
        click.echo(json.dumps(result))
    else:
        click.echo(text[len(shown):] if text.startswith(shown) else "")
        if boxes and found is not None:
            click.echo(json.dumps([b.as_dict() for b in found]))
    if draw_boxes and found is not None:
        from qvl_compile.runtime.grounding import draw_boxes as draw
        from qvl_compile.runtime.preprocess import load_image

        draw(load_image(images[0]), found).save(draw_boxes)
        click.echo(f"wrote {draw_boxes}", err=True)
    _report_timing(len(prepared.input_ids), len(ids), started, first, finished)


def _report_timing(prompt_tokens: int, generated: int, started: float, first: float | None, end: float) -> None:
    rate = (generated - 1) / (end - first) if first and generated > 1 and end > first else float("nan")
    click.echo(f"[{generated} tokens from a {prompt_tokens}-token prompt; first token after "
               f"{(first or end) - started:.2f} s, then {rate:.1f} tokens/s]", err=True)


def _reply_boxes(reply: str, image: Path):
    """The reply's boxes in `image`'s pixels, or None with a note on stderr (the text is printed as it is)."""
    from qvl_compile.runtime.grounding import boxes_in_pixels
    from qvl_compile.runtime.preprocess import load_image

    found = boxes_in_pixels(reply, load_image(image).size)
    if found is None:
        click.echo("note: the reply is not a grounding box list ([{\"bbox_2d\": [x1, y1, x2, y2], ...}]); "
                   "no boxes", err=True)
    return found


@main.command("eval")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("cases_file", metavar="CASES.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the per-task table as JSON.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one line per case: {id, task, reply, correct}.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="Stop each reply after this many generated tokens.")
@click.option("--threads", default=0, show_default=True, help="onnxruntime intra-op threads (0: one per core).")
@handle_errors
def eval_command(export_dir: Path, cases_file: Path, as_json: bool, output: Path | None, max_new_tokens: int,
                 threads: int) -> None:
    """Accuracy per task of greedy replies on labelled cases (a JSONL file; see docs/task-suite.md).

    Grounding answers are correct at IoU >= 0.5 with the true box; others by exact match after stripping
    whitespace.
    """
    import json

    from qvl_compile.runtime.evaluate import accuracy_table, pipeline_answerer, read_cases, run_cases
    from qvl_compile.runtime.pipeline import Pipeline

    cases = read_cases(cases_file)
    pipe = Pipeline(export_dir, intra_op_threads=threads)
    predictions = []
    with click.progressbar(run_cases(cases, pipeline_answerer(pipe, max_new_tokens)), length=len(cases),
                           label="evaluating", file=sys.stderr, show_pos=True) as bar:
        predictions = list(bar)
    if output:
        from qvl_compile.jsonfile import write_text_atomic

        write_text_atomic(output, "".join(json.dumps(p.as_dict()) + "\n" for p in predictions))
    table = accuracy_table(predictions)
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    click.echo(f"{'task':<12} {'correct':>7} {'total':>6} {'accuracy':>9}")
    for task, row in [*table["tasks"].items(), ("all", table["overall"])]:
        click.echo(f"{task:<12} {row['correct']:>7} {row['total']:>6} {100 * row['accuracy']:>8.1f}%")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", required=True, type=int, help="Seed of the case generator (the trainer uses 0).")
@click.option("--per-task", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--task", "tasks", multiple=True, help="Only these tasks (repeatable; default: all six).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists.")
@handle_errors
def cases(out_dir: Path, seed: int, per_task: int, tasks: tuple[str, ...], force: bool) -> None:
    """Write shapes-suite cases (PNGs and cases.jsonl) for `qvl-compile eval`."""
    from qvl_compile.export.atomic import atomic_output_dir
    from qvl_compile.tasks.shapes import TASKS, write_cases

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise QvlError(f"--task: expected one of {', '.join(TASKS)}, got {unknown[0]!r}")
    with atomic_output_dir(out_dir, force=force, marker="cases.jsonl") as tmp:
        write_cases(tmp, seed=seed, per_task=per_task, tasks=tasks or TASKS)
    click.echo(f"wrote {per_task * len(tasks or TASKS)} cases to {out_dir / 'cases.jsonl'}")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.argument("input_file", metavar="INPUT.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_file", metavar="OUTPUT.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes (Ray actors with --ray), each holding one loaded pipeline.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="onnxruntime intra-op threads per worker (CPUs per Ray actor).")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray Data: the cluster in RAY_ADDRESS, or a local Ray (needs the ray extra).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1),
              help="Reply length for cases without their own max_new_tokens.")
@click.option("--sample", is_flag=True, help="Sample with the checkpoint's defaults (default: greedy).")
@click.option("--seed", default=0, show_default=True, help="Mixed with each case's id into its sampling seed.")
@handle_errors
def batch(export_dir: Path, input_file: Path, output_file: Path, workers: int, threads: int, use_ray: bool,
          max_new_tokens: int, sample: bool, seed: int) -> None:
    """Answer every case of INPUT.jsonl into OUTPUT.jsonl, each id exactly once (resumable).

    Cases are `qvl-compile eval`'s ({"id", "prompt", "images", "video"}, optional max_new_tokens, greedy,
    seed, temperature, top_p, top_k, repetition_penalty). Ids already in OUTPUT are skipped; a bad case
    becomes a line with "error" and the batch goes on. See docs/cluster.md for Ray clusters.
    """
    from qvl_compile.manifest import check_files, read_manifest
    from qvl_compile.runtime.batch import BatchOptions, ResultLog, read_batch_cases

    cases = read_batch_cases(input_file)
    check_files(export_dir, read_manifest(export_dir).assets, hashes=not use_ray)  # Ray actors check on their nodes
    defaults = BatchOptions(max_new_tokens=max_new_tokens, greedy=not sample, seed=seed)
    run = _batch_runner(use_ray)
    with ResultLog(output_file) as results:
        pending = results.pending(cases)
        click.echo(f"{len(cases) - len(pending)} of {len(cases)} cases already in {output_file}", err=True)
        if pending:
            with click.progressbar(length=len(pending), label="answering", file=sys.stderr, show_pos=True) as bar:
                try:
                    run(export_dir, pending, results, workers, threads, defaults, on_result=lambda _: bar.update(1))
                except KeyboardInterrupt:
                    raise QvlError(f"interrupted; the results so far stay in {output_file}: rerun to resume") from None
        done = sum(case["id"] in results.done for case in cases)
        click.echo(f"wrote {done} of {len(cases)} cases to {output_file} "
                   f"({results.errors} errors this run)", err=True)


def _need_ray(part: str) -> None:
    """`ray.data` or `ray.serve` importable, or one line naming the extra (not the export extra's hint)."""
    import importlib

    try:
        importlib.import_module(part)
    except ImportError as exc:
        missing = "ray is not installed" if exc.name in ("ray", None) else f"{part}: {exc}"
        raise QvlError(f"--ray needs the ray extra: pip install 'qvl-compile[ray]' ({missing})") from None


def _batch_runner(use_ray: bool):
    if not use_ray:
        from qvl_compile.runtime.batch_local import run_local

        return run_local
    _need_ray("ray.data")
    from qvl_compile.cluster.connect import connect
    from qvl_compile.cluster.ray_batch import run_on_ray

    def run_connected(*args, **kwargs) -> None:  # Ray is joined only when there is work
        click.echo(connect(), err=True)
        run_on_ray(*args, **kwargs)

    return run_connected


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but loopback exposes the API (use --api-key).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Requests decoded together (KV slots).")
@click.option("--context", default=4096, show_default=True, type=click.IntRange(min=2),
              help="Tokens per request (prompt + reply): the KV rows of each slot, capped by the export's context.")
@click.option("--max-waiting", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests queued for a slot; beyond it the server answers 429 with Retry-After.")
@click.option("--api-key", envvar="QVL_API_KEY", help="Require Authorization: Bearer KEY (or set QVL_API_KEY).")
@click.option("--model-name", help="The model id /v1/models lists and requests name (default: the folder's name).")
@click.option("--media-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Allow image/video URLs that are local files under this folder (default: data: URLs only).")
@click.option("--max-body-mb", default=32, show_default=True, type=click.IntRange(min=1),
              help="Largest request body (413 beyond).")
@click.option("--max-image-pixels", default=4096 * 4096, show_default=True, type=click.IntRange(min=1))
@click.option("--max-video-frames", default=256, show_default=True, type=click.IntRange(min=1),
              help="Most frames decoded from one video.")
@click.option("--threads", default=0, show_default=True,
              help="onnxruntime intra-op threads (0: one per core); with --ray, CPUs per replica too.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Serve with Ray Serve replicas: the cluster in RAY_ADDRESS, or a local Ray (the ray extra).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --ray: copies of the engine behind Ray Serve's proxy.")
@handle_errors
def serve(export_dir: Path, host: str, port: int, max_batch: int, context: int, max_waiting: int, api_key: str | None,
          model_name: str | None, media_dir: Path | None, max_body_mb: int, max_image_pixels: int,
          max_video_frames: int, threads: int, use_ray: bool, replicas: int) -> None:
    """Serve EXPORT_DIR over an OpenAI-compatible API (/v1/chat/completions), with continuous batching.

    Needs the serve extra: pip install 'qvl-compile[serve]' (with --ray: 'qvl-compile[ray]').
    """
    from qvl_compile.serve.media import MediaLimits
    from qvl_compile.serve.server import ServerSettings
    from qvl_compile.serve.server import serve as run_server

    limits = MediaLimits(max_image_pixels=max_image_pixels, max_video_frames=max_video_frames, media_dir=media_dir)
    settings = ServerSettings(export_dir, host, port, max_batch, context, max_waiting, threads, api_key, model_name,
                              max_body_mb * 2**20, limits)
    announce = functools.partial(click.echo, err=True)
    if not use_ray:
        run_server(settings, announce=announce)
        return
    from qvl_compile.manifest import check_files, read_manifest

    check_files(export_dir, read_manifest(export_dir).assets)  # a bad folder fails here, not in every replica
    _need_ray("ray.serve")
    from qvl_compile.cluster.ray_serve import serve_on_ray

    serve_on_ray(settings, replicas, announce=announce)


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--system", help="A system prompt for the whole conversation.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="Most tokens per reply.")
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of the checkpoint's sampling defaults.")
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--threads", default=0, show_default=True, help="onnxruntime intra-op threads (0: one per core).")
@handle_errors
def chat(export_dir: Path, system: str | None, max_new_tokens: int, greedy: bool, seed: int | None,
         threads: int) -> None:
    """Talk to EXPORT_DIR turn by turn; replies stream as they are generated.

    Lines starting with / are commands: /image PATH and /video PATH attach media to your next message,
    /reset starts over, /quit (or end of input) leaves. Images seen before are not encoded again.
    """
    from qvl_compile.runtime.chat import ChatSession

    session = ChatSession(export_dir, system=system, max_new_tokens=max_new_tokens, greedy=greedy, seed=seed,
                          threads=threads)
    interactive = sys.stdin.isatty()
    click.echo("chat: /image PATH, /video PATH, /reset, /quit", err=True)
    try:
        while True:
            if interactive:
                click.echo("you> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if session.command(line) == "quit":
                        break
                    continue
                click.echo("assistant> ", nl=False, err=True)
                for piece in session.reply(line):
                    click.echo(piece, nl=False)
                click.echo("")
            except QvlError as exc:
                click.echo(f"error: {exc}", err=True)
    finally:
        session.close()


def _enable_debug(ctx: click.Context, param, value: bool) -> None:
    """--debug after the subcommand does what it does before it."""
    if value:
        ctx.find_root().params["debug"] = True
        logging.getLogger().setLevel(logging.DEBUG)


for _command in main.commands.values():
    _command.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, callback=_enable_debug,
                                        help="Show tracebacks and debug logs (also accepted before the command)."))


if __name__ == "__main__":
    main(prog_name="qvl-compile")
