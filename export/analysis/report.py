"""Render an analysis (study.analyze's dict) as a terminal table, Markdown, or JSON."""
from __future__ import annotations

import json
from typing import Any

OUTCOMES = ("ok", "baked-in shape", "wrong at first shape", "run failed", "load failed", "export failed")


def verdict(report: dict[str, Any]) -> str:
    """One line: is it clean, and if not, what is left. The rewrite targets dynamo (torch.export), so for
    the rewritten tower only the dynamo probes decide; the others are reported alongside."""
    deciding = ["dynamo"] if report["rewritten"] and "dynamo" in report["exporters"] else report["exporters"]
    probes = [p for p in report["probes"] if p["exporter"] in deciding]
    bad = [p for p in probes if p["outcome"] != "ok"]
    modules = len({p["module"] for p in probes if p["module"]})
    others = [p for p in report["probes"] if p["exporter"] not in deciding and p["outcome"] != "ok"]
    aside = f" ({len(others)} {others[0]['exporter']} probes fail; the rewrite targets dynamo)" if others else ""
    if not bad:
        return (f"clean: all {modules} modules and the whole model export with {', '.join(deciding)}, load in "
                f"ONNX Runtime, and match PyTorch at both shapes{aside}")
    whole = ", ".join(f"{e}: {o}" for e, o in report["summary"]["whole_model"].items() if e in deciding)
    return f"{len(bad)} of {len(probes)} {'/'.join(deciding)} probes fail; whole model: {whole}{aside}"


def _rows(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each section."""
    exporters = report["exporters"]
    by_type = report["summary"]["by_type"]
    summary = []
    for type_name, per in by_type.items():
        count = max(c["modules"] for c in per.values())
        cells = [f"{per[e]['exported']}/{per[e]['runs']}/{per[e]['ok']}" if e in per else "-" for e in exporters]
        summary.append([type_name, str(count), *cells])
    total = {e: {k: sum(per.get(e, {}).get(k, 0) for per in by_type.values()) for k in ("exported", "runs", "ok")}
             for e in exporters}
    modules = sum(max(c["modules"] for c in per.values()) for per in by_type.values())
    summary.append(["all modules", str(modules),
                    *[f"{total[e]['exported']}/{total[e]['runs']}/{total[e]['ok']}" for e in exporters]])
    whole = [[p["exporter"], p["outcome"], p["failed_step"] or "-", p["error"] or "-", p["note"] or "-"]
             for p in report["probes"] if p["module"] == ""]
    failures = [[p["module"], p["type"], p["exporter"], p["outcome"], p["error"] or "-"]
                for p in report["probes"] if p["module"] and p["outcome"] != "ok"]
    warnings: dict[str, int] = {}
    for p in report["probes"]:
        for w in p["tracer_warnings"]:
            warnings[w] = warnings.get(w, 0) + 1
    constructs = [[c["where"], c["function"], c["kind"], c["code"]] for c in report["constructs"]]
    skipped = [[s["module"], s["type"], s["reason"]] for s in report["skipped"]]
    return [
        ("Modules by type: exported / ran in ONNX Runtime / matched PyTorch at both shapes",
         ["type", "count", *exporters], summary),
        ("Whole model", ["exporter", "outcome", "failed step", "error", "note"], whole),
        ("Modules that did not pass", ["module", "type", "exporter", "outcome", "error"], failures),
        ("TracerWarnings (location: message, probes that raised it)", ["warning", "probes"],
         [[w, str(n)] for w, n in warnings.items()]),
        ("Data-dependent constructs in the code that runs", ["location", "function", "construct", "code"],
         constructs),
        ("Not probed", ["module", "type", "reason"], skipped),
    ]


def _header(report: dict[str, Any]) -> list[str]:
    v = report["versions"]
    return [f"model: {report['model']} from {report['model_dir']}, attention {report.get('attention', 'sdpa')}",
            f"versions: torch {v['torch']}, transformers {v['transformers']}, onnxruntime {v['onnxruntime']}",
            f"shapes: first grid_thw {report['grids']['first']}, second {report['grids']['second']}; "
            f"{report['seconds']} s",
            f"verdict: {verdict(report)}"]


def as_table(report: dict[str, Any], width: int = 160) -> str:
    out = _header(report)
    for title, header, rows in _rows(report):
        out += ["", f"== {title} =="]
        if not rows:
            out.append("(none)")
            continue
        cols = [min(max(len(str(r[i])) for r in [header, *rows]), 60) for i in range(len(header))]
        for row in [header, *rows]:
            line = "  ".join(str(c)[:60].ljust(w) for c, w in zip(row, cols))
            out.append(line[:width].rstrip())
    return "\n".join(out)


def as_markdown(report: dict[str, Any]) -> str:
    out = ["# Export analysis of the Qwen3-VL vision tower", ""] + [f"- {line}" for line in _header(report)]
    for title, header, rows in _rows(report):
        out += ["", f"## {title}", ""]
        if not rows:
            out.append("(none)")
            continue
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for row in rows:
            out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |")
    return "\n".join(out) + "\n"


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2)
    return as_markdown(report) if fmt == "markdown" else as_table(report)
