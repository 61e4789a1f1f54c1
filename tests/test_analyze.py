"""`qvl-compile analyze` on the tiny model: the stock tower reproduces the seed's findings, the rewritten
one is clean under dynamo.

Seed findings checked here: standard layers (Linear, LayerNorm, GELU, MLP, mergers, patch embedding)
export and run; the attention (and so every block) and the whole model do not give a graph that serves
other inputs; the code that runs holds `.item()`/`.tolist()` reads and Python loops over grid values.
"""
import json
import subprocess
import sys

import pytest

from qvl_compile.export.analysis.report import render, verdict
from qvl_compile.export.analysis.study import analyze

STANDARD_LAYERS = ("Linear", "LayerNorm", "Qwen3VLVisionMLP", "Qwen3VLVisionPatchMerger", "Qwen3VLVisionPatchEmbed")


@pytest.fixture(scope="module")
def stock(tiny_dir):
    return analyze(tiny_dir)


@pytest.fixture(scope="module")
def rewritten(tiny_dir):
    return analyze(tiny_dir, rewritten=True)


def test_stock_tower_reproduces_the_seed_findings(stock, tiny_dir):
    by_type = stock["summary"]["by_type"]
    depth = 4  # the tiny model's vision blocks
    for exporter in ("torchscript", "dynamo"):
        for layer in STANDARD_LAYERS:
            counts = by_type[layer][exporter]
            assert counts["ok"] == counts["modules"] > 0, (layer, exporter, counts)
        for broken in ("Qwen3VLVisionAttention", "Qwen3VLVisionBlock"):
            assert by_type[broken][exporter]["modules"] == depth
            assert by_type[broken][exporter]["ok"] == 0, (broken, exporter, by_type[broken][exporter])
        assert stock["summary"]["whole_model"][exporter] != "ok"
    # Every failing probe names its step and error; the attention failures point at the per-frame split.
    failing = [p for p in stock["probes"] if p["outcome"] != "ok"]
    assert failing and all(p["error"] and p["failed_step"] for p in failing)
    kinds = {c["kind"].split(":")[0] for c in stock["constructs"]}
    assert {".item()", ".tolist()", "Python loop over grid values (iteration count fixed at capture)"} <= kinds
    assert all(c["where"].startswith("transformers/") and ":" in c["where"] for c in stock["constructs"])
    attention_split = [c for c in stock["constructs"] if c["function"] == "Qwen3VLVisionAttention.forward"]
    assert any("tolist" in c["code"] for c in attention_split)
    assert stock["skipped"] and all(s["type"] == "ModuleList" for s in stock["skipped"])
    assert not verdict(stock).startswith("clean")


def test_rewritten_tower_is_clean_under_dynamo(rewritten):
    dynamo = [p for p in rewritten["probes"] if p["exporter"] == "dynamo"]
    assert len(dynamo) > 40
    assert [p for p in dynamo if p["outcome"] != "ok"] == []
    whole = next(p for p in dynamo if p["module"] == "")
    assert whole["matches_second"] is True and whole["max_rel_second"] <= 1e-4
    assert rewritten["constructs"] == []
    assert verdict(rewritten).startswith("clean")


def test_before_and_after_counts(stock, rewritten):
    """The same layers pass before and after; what failed before (attention, blocks, whole model) passes after."""
    before = stock["summary"]["outcomes"]["dynamo"]
    after = rewritten["summary"]["outcomes"]["dynamo"]
    assert before.get("ok", 0) == sum(before.values()) - 8  # 4 attentions + 4 blocks
    assert after == {"ok": sum(after.values())}


def test_renderings(stock):
    markdown = render(stock, "markdown")
    assert "## Whole model" in markdown and "## Data-dependent constructs in the code that runs" in markdown
    assert json.loads(render(stock, "json"))["summary"] == stock["summary"]
    assert "verdict:" in render(stock, "table")


def test_cli_exit_codes(tiny_dir, tmp_path):
    cli = [sys.executable, "-m", "qvl_compile.cli", "analyze", str(tiny_dir), "--whole-only"]
    clean = subprocess.run(cli + ["--rewritten", "--exporter", "dynamo", "--format", "json"],
                           capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert json.loads(clean.stdout)["summary"]["whole_model"] == {"dynamo": "ok"}
    eager = subprocess.run(cli + ["--exporter", "torchscript", "--attention", "eager", "--format", "json"],
                           capture_output=True, text=True)
    assert eager.returncode == 0, eager.stderr[-2000:]
    report = json.loads(eager.stdout)
    assert report["attention"] == "eager" and report["summary"]["whole_model"]["torchscript"] != "ok"
    out = tmp_path / "report.md"
    stock = subprocess.run(cli + ["--exporter", "torchscript", "--format", "markdown", "--output", str(out)],
                           capture_output=True, text=True)
    assert stock.returncode == 0 and out.read_text().startswith("# Export analysis")
    refused = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "analyze", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: ")
