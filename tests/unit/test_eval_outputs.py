"""results JSON / log.txt lines (authors' format) / markdown table."""

from __future__ import annotations

import hashlib
import json

from pipeline.eval.outputs import (
    checkpoint_id,
    corruption_detail_lines,
    final_lines,
    log_text,
    markdown_table,
    summary_lines,
    write_all,
)


def _res(mode: str, clean: float, pgd: float, aa: float | None, corr: str | None = None) -> dict:
    r = {"mode": mode, "clean_acc": clean, "pgd20_acc": pgd, "aa_acc": aa, "aa_version": "standard",
         "n_examples": 100, "corruptions": None}
    if corr:
        r["corruptions"] = {"source": corr, "per_corruption": {"fog": {1: 0.5, 5: 0.25}},
                            "per_severity": {1: 0.5, 5: 0.25}, "mean": 0.375}
    return r


def test_summary_lines_match_the_authors_format():
    assert summary_lines("SLF", _res("SLF", 0.81234, 0.4567, 0.40126)) == [
        "SLF standard acc: 81.23", "SLF PGD20 acc: 45.67", "SLF robust acc: 40.13"]
    lines = summary_lines("AFF", _res("AFF", 0.8, 0.5, None, corr="files"))
    assert lines[2:] == ["AFF mean corruption acc: 37.50", "AFF corruption severity-1 acc: 50.00",
                         "AFF corruption severity-5 acc: 25.00"]
    gen = summary_lines("AFF", _res("AFF", 0.8, 0.5, None, corr="generated"))
    assert all(ln.endswith("[generated]") for ln in gen[2:]) and len(gen) == 5


def test_final_lines_for_mode_all_and_q6_fix():
    rs = [_res("SLF", 0.8, 0.4, 0.3), _res("ALF", 0.7, 0.5, 0.4), _res("AFF", 0.9, 0.6, 0.5)]
    assert final_lines(rs) == ["mean robust accuracy: 40.00", "mean standard accuracy: 80.00"]
    no_aa = [_res("SLF", 0.8, 0.4, None), _res("ALF", 0.6, 0.5, None)]
    assert final_lines(no_aa) == ["mean standard accuracy: 70.00"]  # no NameError, no gating
    text = log_text("/ck.pt", rs)
    assert text.splitlines()[0] == "Finetuning checkpoint: /ck.pt"
    assert text.splitlines()[-1] == "mean standard accuracy: 80.00"


def test_corruption_detail_lines():
    assert corruption_detail_lines(_res("X", 1, 1, 1, corr="files")) == [
        "fog-1, Acc: 0.5000", "fog-5, Acc: 0.2500", "Severity: 1, Acc: 0.5000", "Severity: 5, Acc: 0.2500"]


def test_markdown_table_marks_generated():
    md = markdown_table([_res("SLF", 0.8, 0.4, 0.3, corr="generated")])
    row = md.splitlines()[2]
    assert row.startswith("| SLF | 80.00 | 40.00 | 30.00 | standard | 37.50 | 50.00 | n/a | 25.00 | generated |")


def test_write_all_and_checkpoint_id(tmp_path):
    ck = tmp_path / "enc.pt"
    ck.write_bytes(b"weights")
    cid = checkpoint_id(ck)
    assert cid["sha256"] == hashlib.sha256(b"weights").hexdigest()[:12]
    rs = [_res("SLF", 0.8, 0.4, 0.3, corr="generated"), _res("ALF", 0.6, 0.5, 0.2, corr="generated")]
    paths = write_all(tmp_path / "out", str(ck), rs)
    data = json.loads(paths["json"].read_text())
    assert data["results"][1]["mode"] == "ALF" and data["mean"]["clean_acc"] == 0.7
    assert data["results"][0]["corruptions"]["per_severity"] == {"1": 0.5, "5": 0.25}
    assert "mean corruption accuracy: 37.50 [generated]" in paths["log"].read_text()
    assert "[SLF]" in paths["corruptions_log"].read_text()
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_markdown_table_states_the_attack_eps():
    # issue 10: a results table must say at which radius PGD-20 / AutoAttack were run
    r8, r4 = _res("SLF", 0.8, 0.4, 0.3), _res("ALF", 0.7, 0.5, 0.4)
    r8["eps"], r4["eps"] = 8 / 255, 4 / 255
    lines = markdown_table([r8, r4]).splitlines()
    assert lines[0].rstrip().endswith("| attack eps (L-inf) |")
    assert lines[2].endswith("| 8/255 |") and lines[3].endswith("| 4/255 |")
