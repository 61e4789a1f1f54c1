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
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not a checkpoint folder.")
@click.option("--model-type", default="qwen3_vl", show_default=True, help="The model family's config model_type.")
@handle_errors
def tiny(out_dir: Path, seed: int, force: bool, model_type: str) -> None:
    """Write the embedded default: a tiny seeded random checkpoint of the family (Qwen3-VL by default)."""
    from qvl_compile.registry import family_named

    quiet_libraries()
    family = family_named(model_type)
    family.write_tiny(out_dir, seed=seed, force=force)
    click.echo(f"wrote tiny {family.display_name} checkpoint (seed {seed}) to {out_dir}")


@main.command("random")
@click.argument("arch", metavar="ARCH")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
@click.option("--vision-only", is_flag=True, help="Write only the vision tower's weights (for vision exports).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not a checkpoint folder.")
@click.option("--model-type", default="qwen3_vl", show_default=True, help="The model family's config model_type.")
@handle_errors
def random_checkpoint(arch: str, out_dir: Path, seed: int, vision_only: bool, force: bool, model_type: str) -> None:
    """Random weights for a released architecture: ARCH is 2b, 4b, 8b or a folder with config.json.

    Real-size work without downloading weights: the architecture is exact, the weights are noise.
    """
    from qvl_compile.registry import family_named

    quiet_libraries()
    family_named(model_type).write_random(arch, out_dir, seed=seed, vision_only=vision_only, force=force)
    click.echo(f"wrote random-weight {arch} checkpoint to {out_dir}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--component", type=click.Choice(["vision", "decoder", "all"]), default="all", show_default=True)
@click.option("--quant", type=click.Choice(["int4", "fp32"]), default="int4", show_default=True,
              help="Decoder weights (the vision graph is fp32).")
@click.option("--block-size", default=32, show_default=True, help="INT4 block size along the input dim.")
@click.option("--accuracy-level", default=1, show_default=True, type=click.IntRange(0, 4),
              help="MatMulNBits accuracy_level: 0/1 keep fp32 activations; 4 quantizes them to int8 "
                   "(faster on CPU, less exact: see the README).")
@click.option("--quantize-lm-head/--no-quantize-lm-head", default=True, show_default=True)
@click.option("--quantize-embedding/--no-quantize-embedding", default=True, show_default=True,
              help="INT4 embedding table (GatherBlockQuantized; shares the lm_head's bytes when the checkpoint "
                   "ties them). --no-quantize-embedding keeps it float32 (+1.2 GB at 2B size).")
@click.option("--vision-quant", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Vision weights: int8 (onnxruntime dynamic quantization) is about 2x faster on CPU, "
                   "cosine >= 0.999 against fp32 (checked at export).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR even if it is not an export of ours.")
@handle_errors
def export(model_dir: Path, out_dir: Path, component: str, quant: str, block_size: int, accuracy_level: int,
           quantize_lm_head: bool, quantize_embedding: bool, vision_quant: str, force: bool) -> None:
    """Export MODEL_DIR (a Qwen3-VL checkpoint) to ONNX graphs in OUT_DIR."""
    from qvl_compile.export.decoder_options import QuantOptions
    from qvl_compile.export.pipeline import export_model

    quiet_libraries()
    start = time.perf_counter()
    options = QuantOptions(mode=quant, block_size=block_size, accuracy_level=accuracy_level,
                           quantize_lm_head=quantize_lm_head, quantize_embedding=quantize_embedding)
    from qvl_compile.export.vision_quant import VisionQuantOptions

    manifest = export_model(model_dir, out_dir, component=component, quant=options, force=force,
                            vision_quant=VisionQuantOptions(mode=vision_quant))
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
    click.echo(f"{'case':<28} {'t,h,w':<28} {'output':<17} {'max abs err':>11} {'max rel err':>11} {'tol':>7} "
               f"{'cosine':>8}  result")
    for row in rows:
        thw = ";".join(",".join(map(str, g)) for g in row.grid)
        max_abs = "-" if row.max_abs != row.max_abs else f"{row.max_abs:.2e}"  # NaN: not measured
        cosine = "-" if row.cosine != row.cosine else f"{row.cosine:.5f}"
        click.echo(f"{row.name:<28} {thw:<28} {row.output:<17} {max_abs:>11} {row.max_rel:>11.2e} "
                   f"{row.tolerance:>7.0e} {cosine:>8}  {'pass' if row.passed else 'FAIL'}")
    failed = [r for r in rows if not r.passed]
    click.echo("max rel err = max |onnx - torch| / max |torch| (greedy tokens: 0 when identical)")
    if failed:
        _fail(f"{len(failed)} of {len(rows)} parity checks failed")
    click.echo(f"all {len(rows)} parity checks passed")


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
@handle_errors
def golden(out_dir: Path, kinds: tuple[str, ...], force: bool) -> None:
    """Write the tiny model's PyTorch goldens (the repository's copy lives in golden/data).

    Rebuilds the tiny checkpoint from its seed, exports it, and records transformers' outputs with the
    inputs, versions and tolerances of every case.
    """
    from qvl_compile.golden.generate import ALL_KINDS, generate_goldens

    quiet_libraries()
    start = time.perf_counter()
    index = generate_goldens(out_dir, kinds=kinds or ALL_KINDS, force=force)
    for kind, reason in index["generator"]["skipped"].items():
        click.echo(f"skipped {kind}: {reason}", err=True)
    click.echo(f"wrote {len(index['cases'])} golden cases and {len(index['graphs'])} graph summaries to {out_dir} "
               f"in {time.perf_counter() - start:.1f} s")


@main.command()
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The user's message.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="An image file (repeatable).")
@click.option("--video", type=click.Path(path_type=Path), help="A video file (decoded with PyAV).")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of the checkpoint's sampling defaults.")
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--threads", default=0, show_default=True, help="onnxruntime intra-op threads (0: one per core).")
@click.option("--json", "as_json", is_flag=True, help='Print {"text": ..., "token_ids": [...]} instead of streaming.')
@click.option("--verify-hashes", is_flag=True,
              help="Check every file's sha256 against the manifest before loading (sizes are always checked).")
@handle_errors
def generate(export_dir: Path, prompt: str, images: tuple[Path, ...], video: Path | None, max_new_tokens: int,
             greedy: bool, seed: int | None, threads: int, as_json: bool, verify_hashes: bool) -> None:
    """Generate text from an export folder with onnxruntime only (no torch)."""
    import json

    from qvl_compile.runtime.pipeline import Pipeline

    pipe = Pipeline(export_dir, intra_op_threads=threads, verify_hashes=verify_hashes)
    ids, shown = [], ""
    for token, text in pipe.stream(prompt, images=list(images), video=video, max_new_tokens=max_new_tokens,
                                   greedy=greedy, seed=seed):
        ids.append(token)
        if not as_json and text.startswith(shown):
            click.echo(text[len(shown):], nl=False)
            shown = text
    if as_json:
        click.echo(json.dumps({"text": text if ids else "", "token_ids": ids}))
    else:
        click.echo(text[len(shown):] if text.startswith(shown) else "")


if __name__ == "__main__":
    main(prog_name="qvl-compile")
