"""Result files of an evaluation: results JSON, the authors' log.txt lines, a markdown table.

One results dict per evaluated model ("mode": SLF / ALF / AFF / EVAL):

    {"mode", "clean_acc", "pgd20_acc", "aa_acc", "aa_version", "worst_case_acc",
     "corruptions": {"source": "files"|"generated", "per_corruption": {c: {s: acc}},
                     "per_severity": {s: acc}, "mean": acc} | None,
     "corruptions_source", "checkpoint": {"path", "sha256"}, "n_examples", "aa_n_examples"
     (AutoAttack's subset, eval.aa_examples), "times", "config", "warnings"}

Accuracies are fractions in [0,1] in JSON; log lines and tables print percent, two decimals,
as the authors' result/log.txt (spec §6.3).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import atomic_write_text


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_id(path: str | Path, prefix: int = 12) -> dict[str, str]:
    """{"path": absolute path, "sha256": first `prefix` hex digits} of a checkpoint file
    (an ``s3://`` URI is kept as is and hashed from its bytes)."""
    if str(path).startswith("s3://"):
        from pipeline.data.storage import read_bytes, resolve

        data = read_bytes(resolve(str(path)))
        return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()[:prefix]}
    p = Path(path)
    return {"path": str(p.resolve()), "sha256": file_sha256(p)[:prefix] if p.is_file() else ""}


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_results_json(path: str | Path, results: dict[str, Any]) -> None:
    """Atomic write (temp file + rename), keys sorted, severities as strings."""
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True, default=_json_default) + "\n")


def _source_tag(res: dict[str, Any]) -> str:
    src = (res.get("corruptions") or {}).get("source")
    return " [generated]" if src == "generated" else ""


def summary_lines(mode: str, res: dict[str, Any]) -> list[str]:
    """The authors' result/log.txt lines for one mode (spec §6.3), percent with 2 decimals.

    Generated corruptions get a " [generated]" tag on every corruption line.
    """
    lines = []
    if res.get("clean_acc") is not None:
        lines.append(f"{mode} standard acc: {_pct(res['clean_acc'])}")
    if res.get("pgd20_acc") is not None:
        lines.append(f"{mode} PGD20 acc: {_pct(res['pgd20_acc'])}")
    if res.get("aa_acc") is not None:
        lines.append(f"{mode} robust acc: {_pct(res['aa_acc'])}")
    corr = res.get("corruptions")
    if corr:
        tag = _source_tag(res)
        lines.append(f"{mode} mean corruption acc: {_pct(corr['mean'])}{tag}")
        for s, acc in sorted(corr["per_severity"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"{mode} corruption severity-{s} acc: {_pct(acc)}{tag}")
    return lines


def corruption_detail_lines(res: dict[str, Any]) -> list[str]:
    """common_corruptions/log.txt lines: "<c>-<s>, Acc: <fraction>", "Severity: s, Acc: ..."."""
    corr = res.get("corruptions")
    if not corr:
        return []
    tag = _source_tag(res)
    lines = []
    for c, per in corr["per_corruption"].items():
        for s, acc in sorted(per.items(), key=lambda kv: int(kv[0])):
            lines.append(f"{c}-{s}, Acc: {acc:.4f}{tag}")
    for s, acc in sorted(corr["per_severity"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"Severity: {s}, Acc: {acc:.4f}{tag}")
    return lines


def _mean(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return sum(v) / len(v) if v else None


def final_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """Mode ALL trailer: mean robust / standard / corruption accuracy over the modes.

    Each line is written only when every mode has that number (fixes the authors' Q6: they
    computed "mean robust accuracy" without --eval-AA and gated the standard one on it).
    """
    out = []
    for key, name in (("aa_acc", "robust"), ("clean_acc", "standard")):
        vals = [r.get(key) for r in results]
        if vals and all(v is not None for v in vals):
            out.append(f"mean {name} accuracy: {_pct(_mean(vals))}")
    corr = [(r.get("corruptions") or {}).get("mean") for r in results]
    if corr and all(v is not None for v in corr):
        tag = _source_tag(results[0])
        out.append(f"mean corruption accuracy: {_pct(_mean(corr))}{tag}")
    return out


def log_text(checkpoint: str, results: Sequence[dict[str, Any]], *, header: str = "Finetuning") -> str:
    """Full result/log.txt: checkpoint line, per-mode lines, and the ALL trailer if > 1 mode."""
    lines = [f"{header} checkpoint: {checkpoint}"]
    for r in results:
        lines += summary_lines(r["mode"], r)
    if len(results) > 1:
        lines += final_lines(results)
    return "\n".join(lines) + "\n"


def eps_label(eps: Any) -> str:
    """An L-inf radius on [0, 1] pixels as the papers write it: ``8/255`` (else the number)."""
    if eps is None:
        return "-"
    k = float(eps) * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{float(eps):.6g}"


def _n_label(r: dict[str, Any]) -> str:
    """``200`` or ``200 (AA 100)`` when AutoAttack ran on a subset."""
    n, n_aa = r.get("n_examples", ""), r.get("aa_n_examples")
    return f"{n} (AA {n_aa})" if n_aa is not None and n_aa != n else f"{n}"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """| mode | clean | PGD-20 | AA (version) | corruption mean | CS-1 | CS-3 | CS-5 | source | n | eps |"""
    head = ("| mode | clean % | PGD-20 % | AA % | AA version | corr. mean % | CS-1 % | CS-3 % | CS-5 % "
            "| corr. source | n | attack eps (L-inf) |")
    sep = "|" + "---|" * 12
    rows = [head, sep]
    for r in results:
        corr = r.get("corruptions") or {}
        ps = {int(k): v for k, v in (corr.get("per_severity") or {}).items()}
        rows.append(
            f"| {r['mode']} | {_pct(r.get('clean_acc'))} | {_pct(r.get('pgd20_acc'))} | "
            f"{_pct(r.get('aa_acc'))} | {r.get('aa_version') or '-'} | {_pct(corr.get('mean'))} | "
            f"{_pct(ps.get(1))} | {_pct(ps.get(3))} | {_pct(ps.get(5))} | "
            f"{corr.get('source', '-')} | {_n_label(r)} | {eps_label(r.get('eps'))} |"
        )
    return "\n".join(rows) + "\n"


def write_all(out_dir: str | Path, checkpoint: str, results: Sequence[dict[str, Any]], *,
              header: str = "Finetuning") -> dict[str, Path]:
    """Write results.json (list under "results" + per-mode files), log.txt, results.md."""
    out = Path(out_dir)
    paths = {"json": out / "results.json", "log": out / "log.txt", "md": out / "results.md"}
    summary = {"checkpoint": checkpoint, "results": list(results)}
    if len(results) > 1:
        summary["mean"] = {
            "clean_acc": _mean([r.get("clean_acc") for r in results]),
            "aa_acc": _mean([r.get("aa_acc") for r in results]),
        }
    write_results_json(paths["json"], summary)
    atomic_write_text(paths["log"], log_text(checkpoint, results, header=header))
    atomic_write_text(paths["md"], markdown_table(results))
    detail = [ln for r in results for ln in ([f"[{r['mode']}]"] + corruption_detail_lines(r))
              if r.get("corruptions")]
    if detail:
        paths["corruptions_log"] = out / "common_corruptions" / "log.txt"
        atomic_write_text(paths["corruptions_log"], "\n".join(detail) + "\n")
    return paths
