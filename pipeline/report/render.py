"""Render a collected run/sweep into ``report.md`` and a self-contained ``report.html``.

Both files come from one list of sections (heading + blocks: paragraphs, tables, images), so
they never disagree. The HTML is rendered by jinja2 from ``templates/report.html.j2``
(autoescaped); it embeds every PNG as a base64 data URI and carries its CSS inline: it can be
mailed or opened offline, with no external asset and no link. The markdown refers to
the PNGs next to it. Everything is written atomically into ``<dir>/report/`` (or ``out_dir``).

Core module: no Ray (versions of ray/torch are read from package metadata, not imported).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import importlib.metadata
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from pipeline.config import atomic_write_text
from pipeline.report.collect import (
    ASSUMED_GREEDY_SHARE,
    EVAL_MODES,
    Collected,
    ReportRow,
    RunRecord,
    config_hash_of,
    median_images_per_s,
)
from pipeline.report.cost import (
    DEFAULT_MFU,
    IMAGENET32_TRAIN_IMAGES,
    PriceTable,
    Projection,
    RCSSchedule,
    arch_name,
    project_full_run,
)
from pipeline.report.plots import (
    SpeedupPoint,
    first_accuracy,
    plot_loss_curves,
    plot_run_curves,
    plot_selection_overhead,
    plot_speedup_vs_robustness,
)
from pipeline.report.speedup import assumed_sel_share

NA = "n/a"
SECTION_TITLES = (
    "Summary",
    "Speed-up vs robustness",
    "Loss curves",
    "Selection overhead",
    "Cost projection: full ImageNet-32 run",
    "Environment and provenance",
)
# Preference for the robustness axis: AutoAttack beats PGD-20; SLF is the cheapest fine-tuning.
ACC_ORDER = tuple((m, k) for k in ("aa_acc", "pgd20_acc") for m in EVAL_MODES)
# RCS ImageNet-32 defaults (official-code-spec §5.5): warm-up 20, every 10, 200 epochs, k 0.05.
IN32_EPOCHS, IN32_WARMUP, IN32_INTERVAL, IN32_FRACTION = 200, 20, 10, 0.05


# ----------------------------------------------------------------------------------------------
# Blocks and formatting
# ----------------------------------------------------------------------------------------------


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    filename: str
    alt: str


Block = Union[str, Table, Image, list]  # str = paragraph, list[str] = bullet list


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def fmt(x: Optional[float], nd: int = 2, suffix: str = "") -> str:
    """Number or "n/a"."""
    return NA if x is None else f"{x:.{nd}f}{suffix}"


def fmt_money(x: Optional[float]) -> str:
    """Two decimals, but keep two significant digits for the cents-or-less costs of tiny runs."""
    if x is None:
        return NA
    return f"{x:,.2f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2g}"


def fmt_duration(s: Optional[float]) -> str:
    if s is None:
        return NA
    return f"{s:.1f} s" if s < 3600 else f"{s / 3600:.2f} h"


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def modes_present(rows: Sequence[ReportRow]) -> list[str]:
    """Fine-tuning modes with results in any row; SLF alone when none (so columns read n/a)."""
    found = [m for m in EVAL_MODES if any(m in r.evals for r in rows)]
    return found or ["SLF"]


RANDOM_NAME = "random encoder (untrained)"
NEAR_RANDOM_POINTS = 2.0  # warn when SLF clean accuracy is within this of the random encoder's


def with_random_row(rows: Sequence[ReportRow], random: Optional[ReportRow]) -> list[ReportRow]:
    """``rows`` with the random-encoder row first (an n/a row when it was not evaluated)."""
    if random is None:
        random = ReportRow(RANDOM_NAME, "not evaluated", False, False, None, None, None, None,
                           None, None, None, None, None, None, None, "", {}, None)
    return [random, *rows]


def near_random_warnings(rows: Sequence[ReportRow], random: Optional[ReportRow]) -> list[str]:
    """One line per run whose SLF clean accuracy is within 2 points of (or below) random's."""
    base = (random.evals.get("SLF", {}) if random else {}).get("clean_acc")
    if base is None:
        return []
    out = []
    for r in rows:
        acc = r.evals.get("SLF", {}).get("clean_acc")
        if acc is not None and acc - base < NEAR_RANDOM_POINTS:
            out.append(f"WARNING: {r.name}: SLF clean accuracy {acc:.2f} % is within "
                       f"{NEAR_RANDOM_POINTS:g} points of the random encoder's {base:.2f} %: "
                       f"pre-training learned (almost) nothing a linear probe can use.")
    return out


def summary_table(rows: Sequence[ReportRow], currency: str = "USD") -> Table:
    """Per run: settings, time, hours, cost, speed-ups, accuracies (percent) per mode."""
    modes = modes_present(rows)
    headers = ["Run", "Status", "k", "Warm-up", "Every", "Epochs", "Wall", "Worker-h", "GPU-h",
               f"Cost ({currency})", "Speed-up (measured)", "Speed-up (ideal)"]
    extra = sorted({k for r in rows for ev in r.evals.values() for k in ev
                    if k.startswith("pgd20_") and k.endswith("_acc") and k != "pgd20_acc"},
                   key=lambda k: int(k.split("_")[1]))  # more PGD-20 radii, when evaluated
    for m in modes:
        headers += [f"{m} SA", f"{m} PGD-20"]
        headers += [f"{m} PGD-20@{k.split('_')[1]}" for k in extra]
        headers += [f"{m} AA"]
    headers.append("Corruption acc")
    out = []
    for r in rows:
        k = "full" if not r.rcs_enabled and r.run is not None else fmt(r.fraction, 2)
        if r.run is not None and r.run.summary.get("random_init"):
            k = NA
        cells = [
            r.name,
            r.status or NA,
            k,
            NA if r.warmup is None else str(r.warmup),
            NA if r.interval is None else str(r.interval),
            NA if r.epochs is None else str(r.epochs),
            fmt_duration(r.wall_time_s),
            fmt(r.worker_hours, 4),
            fmt(r.gpu_hours, 4),
            fmt_money(r.cost.cost if r.cost else None),
            fmt(r.measured.value if r.measured else None, 2, "x"),
            fmt(r.ideal, 2, "x"),
        ]
        for m in modes:
            ev = r.evals.get(m, {})
            cells += [fmt(ev.get("clean_acc")), fmt(ev.get("pgd20_acc"))]
            cells += [fmt(ev.get(k)) for k in extra]
            cells += [fmt(ev.get("aa_acc"))]
        corr = next(((m, r.evals[m]["mean_corruption_acc"]) for m in EVAL_MODES
                     if r.evals.get(m, {}).get("mean_corruption_acc") is not None), None)
        cells.append(NA if corr is None else f"{corr[1]:.2f} ({corr[0]})")
        out.append(cells)
    return Table(headers, out)


def _point_label(r: ReportRow) -> str:
    if r.is_baseline or not r.rcs_enabled:
        return "full data"
    return f"k={fmt(r.fraction, 2)}, W={r.warmup}"


def speedup_section(rows: Sequence[ReportRow], out: Path) -> tuple[Section, dict[str, Path]]:
    sec = Section(SECTION_TITLES[1])
    # The (mode, metric) most rows have, so the points are comparable; among those AutoAttack
    # before PGD-20, then the mode with the highest mean accuracy (the one that learned most:
    # a linear probe of a short run can sit at chance while full fine-tuning does not).
    def vals(mk: tuple[str, str]) -> list[float]:
        return [r.evals[mk[0]][mk[1]] for r in rows if r.evals.get(mk[0], {}).get(mk[1]) is not None]

    def rank(mk: tuple[str, str]) -> tuple[int, bool, float]:
        v = vals(mk)
        return len(v), mk[1] == "aa_acc", sum(v) / len(v) if v else 0.0

    counts = {mk: len(vals(mk)) for mk in ACC_ORDER}
    best = max(ACC_ORDER, key=rank)
    if counts[best] == 0:
        sec.blocks.append(f"{NA}: no evaluation results (eval/<MODE>/results.json) yet.")
        return sec, {}
    mode, key = best
    metric = {"aa_acc": "AutoAttack", "pgd20_acc": "PGD-20"}[key]
    points, table = [], []
    for r in rows:
        acc = first_accuracy(r.evals, [best])
        if acc is None:
            continue
        if r.is_baseline:
            sp, src = 1.0, "baseline"
        elif r.measured is not None and r.measured.value is not None:
            sp, src = r.measured.value, "measured"
        elif r.ideal is not None:
            sp, src = r.ideal, "ideal"
        else:
            continue
        points.append(SpeedupPoint(_point_label(r), sp, acc[2], r.is_baseline))
        table.append([r.name, _point_label(r), f"{sp:.2f}x", src, f"{acc[2]:.2f}"])
    if not points:
        sec.blocks.append(f"{NA}: no run has both an accuracy and a speed-up.")
        return sec, {}
    path = plot_speedup_vs_robustness(points, out / "speedup_vs_robustness.png",
                                      ylabel=f"{mode} {metric} accuracy (%)")
    sec.blocks.append(f"{mode} {metric} accuracy against speed-up (measured where a baseline "
                      "exists, else ideal); the full-data baseline sits at 1x.")
    sec.blocks.append(Image(path.name, "speed-up vs robustness"))
    sec.blocks.append(Table(["Run", "Setting", "Speed-up", "Source", f"{mode} {metric} (%)"], table))
    return sec, {"speedup_vs_robustness": path}


def loss_section(c: Collected, out: Path) -> tuple[Section, dict[str, Path]]:
    sec = Section(SECTION_TITLES[2])
    runs = {r.name: r.run.metrics for r in c.rows if r.run is not None and r.run.metrics}
    if not runs:
        sec.blocks.append(f"{NA}: no metrics.jsonl.")
        return sec, {}
    figs = {"loss_curves": plot_loss_curves(runs, out / "loss_curves.png")}
    sec.blocks.append(Image(figs["loss_curves"].name, "loss parts per epoch"))
    if c.kind == "run":
        main = c.rows[-1]
        if main.run is not None and main.run.metrics:
            figs["run_curves"] = plot_run_curves(main.run.metrics, out / "run_curves.png", title=main.name)
            sec.blocks.append(Image(figs["run_curves"].name, "loss and learning rate"))
    return sec, figs


def _selections(run: RunRecord) -> list[tuple[int, float]]:
    """(epoch, seconds) of each selection: summary.json's list, else metrics.jsonl."""
    sels = (run.summary.get("rcs") or {}).get("selections") or []
    if sels:
        return [(int(s.get("epoch", 0)), float(s.get("time_s") or 0.0)) for s in sels]
    return [(int(r["epoch"]), float(r["selection_time_s"])) for r in run.metrics if r.get("selection_time_s")]


def selection_section(rows: Sequence[ReportRow], out: Path) -> tuple[Section, dict[str, Path]]:
    sec = Section(SECTION_TITLES[3])
    rcs_rows = [r for r in rows if r.run is not None and r.rcs_enabled]
    if not rcs_rows:
        sec.blocks.append(f"{NA}: no run with RCS enabled.")
        return sec, {}
    table = []
    for r in rcs_rows:
        sels = _selections(r.run)
        total = sum(t for _, t in sels)
        wall = r.wall_time_s
        table.append([
            r.name,
            str(len(sels)),
            ", ".join(str(e) for e, _ in sels) or NA,
            fmt(total, 1, " s") if sels else NA,
            fmt(total / len(sels), 1, " s") if sels else NA,
            NA if r.sel_share is None else f"{r.sel_share:.2f} ({r.sel_share_source})",
            fmt(100 * total / wall, 1, "%") if (sels and wall) else NA,
        ])
    sec.blocks.append(Table(["Run", "Selections", "Epochs", "Total", "Mean", "Share of a full epoch",
                             "Of wall time"], table))
    runs = {r.name: r.run.metrics for r in rcs_rows if r.run.metrics}
    figs: dict[str, Path] = {}
    if runs:
        figs["selection_overhead"] = plot_selection_overhead(runs, out / "selection_overhead.png")
        sec.blocks.insert(0, Image(figs["selection_overhead"].name, "selection overhead"))
    return sec, figs


def _reference_row(rows: Sequence[ReportRow]) -> Optional[ReportRow]:
    """The run whose throughput and model the projection uses: baseline, else first with metrics."""
    cands = [r for r in rows if r.run is not None]
    for r in cands:
        if r.is_baseline and median_images_per_s(r.run):
            return r
    for r in cands:
        if median_images_per_s(r.run):
            return r
    return cands[0] if cands else None


def _hours(x: float) -> str:
    """One decimal for big numbers, three significant digits for the small ones of tiny runs."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _proj_row(label: str, p: Projection) -> list[str]:
    return [
        label,
        f"{p.images_per_s_per_gpu:,.1f}",
        NA if p.mfu is None else f"{100 * p.mfu:.1f}%",
        _hours(p.gpu_hours_per_epoch),
        f"{p.epoch_equivalents:.1f}",
        _hours(p.gpu_hours),
        fmt_money(p.cost_per_epoch),
        fmt_money(p.cost),
    ]


def projection_section(
    rows: Sequence[ReportRow],
    prices: Optional[PriceTable],
    gpu_type: str,
    precision: str = "bf16",
    mfu: float = DEFAULT_MFU,
    images: int = IMAGENET32_TRAIN_IMAGES,
    epochs: int = IN32_EPOCHS,
) -> Section:
    """FLOP-model and measured-throughput projections of a full ImageNet-32 run."""
    sec = Section(SECTION_TITLES[4])
    table_prices = prices or PriceTable()
    ref = _reference_row(rows)
    run = ref.run if ref else None
    model = (run.config.get("model") if run else None) or {}
    arch = arch_name(model) if model else "wrn28-10"
    loss_mode = str((run.cfg("loss.mode") if run else None) or "acl")
    mode = "acl" if loss_mode == "dynacl" else loss_mode
    steps = int((run.cfg("attack.steps") if run else None) or 5)
    k = next((r.fraction for r in rows if r.rcs_enabled and r.fraction), None) or IN32_FRACTION
    share = assumed_sel_share(1, steps, ASSUMED_GREEDY_SHARE)  # IN-32 scores with 1-step PGD
    rcs = RCSSchedule(k, IN32_WARMUP, IN32_INTERVAL, share)
    cur = table_prices.currency
    headers = ["Scenario", "img/s per device", "MFU", "device-h/epoch", "Epoch-equiv.",
               "device-h/run", f"Cost/epoch ({cur})", f"Cost/run ({cur})"]
    out: list[list[str]] = []
    notes: list[str] = []
    for a in dict.fromkeys([arch, "wrn28-10"]):  # the run's model, and the IN-32 recipe's
        for sched, tag in ((None, "full data"), (rcs, f"RCS k={k:g}, W={IN32_WARMUP}, every {IN32_INTERVAL}")):
            try:
                p = project_full_run(images, epochs, a, mode, gpu_type, mfu=mfu, rcs=sched,
                                     pgd_steps=steps, precision=precision, prices=table_prices)
            except ValueError as e:
                notes.append(f"FLOP model for {a} on {gpu_type}: {NA} ({e})")
                break
            out.append(_proj_row(f"FLOP model: {a} {mode.upper()}, {gpu_type} {precision} "
                                 f"@ {100 * mfu:.0f}% MFU, {tag}", p))
    ips = median_images_per_s(run) if run else None
    if run is not None and ips:
        s = run.summary
        workers = max(int(s.get("num_workers") or 1), 1)
        per_dev = ips / workers  # images_per_s in metrics.jsonl is the whole run's
        if s.get("use_gpu"):
            hw = str(s.get("gpu_type") or "GPU")
            price = table_prices.gpu_price(hw) if prices else None
            dev = f"{hw} GPU"
        else:
            hw = "CPU"
            cpus = float(s.get("cpus_per_worker") or 1.0)
            price = table_prices.cpu_core_hour * cpus if prices else None
            dev = f"CPU worker ({cpus:g} cores)"
        try:
            p = project_full_run(images, epochs, arch, mode, hw, measured_images_per_s=per_dev,
                                 pgd_steps=steps, precision=precision, prices=table_prices,
                                 price_per_hour=price)
            out.append(_proj_row(f"Measured: {ref.name}, {arch}, {per_dev:,.1f} img/s per {dev}, full data", p))
        except ValueError as e:
            notes.append(f"measured projection: {NA} ({e})")
    else:
        notes.append(f"Measured projection: {NA} (no images_per_s in metrics.jsonl).")
    sec.blocks.append(
        f"{images:,} images x {epochs} epochs. FLOP model (anchors §E): ACL = 2 views x (T PGD steps "
        f"x 3F + 6F), AIR +3F, T = {steps}; RCS epoch equivalents = W + (E-W)k + n_sel x "
        f"{share:.2f} (assumed selection share). Device-hours are GPU-hours on GPUs, worker-hours on CPU."
    )
    sec.blocks.append(Table(headers, out))
    sec.blocks.extend(_scaling_blocks(arch, mode, steps, gpu_type, mfu, run))
    src = "none (built-in peaks, no prices)" if prices is None else f"{prices.source} (as of {prices.as_of or NA})"
    notes.append(f"Prices: {src}. They are placeholders: edit cluster/prices.yaml for your account.")
    sec.blocks.append(notes)
    return sec


def _scaling_blocks(arch: str, mode: str, steps: int, gpu_type: str, mfu: float, run: Any) -> list[Block]:
    """Multi-GPU efficiency 1 -> 8 -> 64 GPUs (weak scaling, ``pipeline.report.scaling``): the
    run's model and WRN-28-10; compute from the run's measured GPU throughput when it ran on a
    GPU, else from the FLOP model."""
    from pipeline.report.scaling import Interconnect, project_scaling

    ic = Interconnect()
    s = run.summary if run is not None else {}
    ips = median_images_per_s(run) if run is not None else None
    measured = ips / max(int(s.get("num_workers") or 1), 1) if (ips and s.get("use_gpu")) else None
    headers = ["Model", "GPUs", "Batch/GPU (global)", "Compute/step", "Grad all-reduce", "Gather",
               "Efficiency (no overlap / overlapped)"]
    rows: list[list[str]] = []
    for a, batch in dict.fromkeys([(arch, 512), ("wrn28-10", 256)]):
        try:
            proj = project_scaling(a, mode, per_gpu_batch=batch, pgd_steps=steps, gpu_type=gpu_type, mfu=mfu,
                                   measured_images_per_s=measured if a == arch else None, interconnect=ic)
        except (KeyError, ValueError):
            continue
        for r in proj:
            rows.append([a, str(r["gpus"]), f"{r['per_gpu_batch']} ({r['global_batch']})",
                         f"{r['compute_s'] * 1e3:.1f} ms", f"{r['grad_allreduce_s'] * 1e3:.2f} ms",
                         f"{r['gather_s'] * 1e3:.2f} ms",
                         f"{100 * r['efficiency_no_overlap']:.1f} % / {100 * r['efficiency_overlapped']:.1f} %"])
    if not rows:
        return []
    basis = "the run's measured GPU img/s" if measured else f"the FLOP model ({gpu_type} bf16 at {100 * mfu:.0f} % MFU)"
    return [
        f"Multi-GPU scaling ({mode.upper()}, weak scaling, loss.gather on): compute per step from {basis}; "
        f"gradient all-reduce of 4 bytes x parameters, all-gather of the projections (global batch x "
        f"views x projection dim, fp32); {ic.intra_node_gbps:g} GB/s per GPU in a node, "
        f"{ic.inter_node_gbps:g} GB/s per node of {ic.gpus_per_node} between nodes, "
        f"{ic.latency_s * 1e6:.0f} us per collective (python -m pipeline.report.scaling --help).",
        Table(headers, rows),
    ]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NA


def provenance_section(c: Collected) -> Section:
    import pipeline

    sec = Section(SECTION_TITLES[5])
    items = [
        f"Source: {c.kind} {c.name} ({c.path})",
        f"Generated: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"Python {platform.python_version()}, pipeline {pipeline.__version__}, "
        + ", ".join(f"{d} {_version(d)}" for d in ("ray", "torch", "numpy", "matplotlib", "PyYAML")),
    ]
    if c.grid:
        items.append("Grid: " + "; ".join(f"{k} = {v}" for k, v in c.grid.items()))
    sec.blocks.append(items)
    rows = []
    for r in c.rows:
        run = r.run
        if run is None:
            rows.append([r.name, NA, NA, NA, r.status or NA, NA])
            continue
        s = run.summary
        hw = (str(s.get("gpu_type") or "GPU") if s.get("use_gpu") else "CPU")
        rows.append([
            r.name,
            config_hash_of(run) or NA,
            str(s.get("mode") or run.cfg("loss.mode") or NA),
            arch_name(run.config["model"]) if isinstance(run.config.get("model"), dict) else NA,
            r.status or NA,
            f"{s.get('num_workers', NA)} x {hw}",
        ])
    sec.blocks.append(Table(["Run", "Config hash", "Mode", "Arch", "Status", "Workers"], rows))
    return sec


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    parts = [f"# {title}", ""]
    for sec in sections:
        parts += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Table):
                parts.append(markdown_table(b))
            elif isinstance(b, Image):
                parts.append(f"![{b.alt}]({b.filename})")
            elif isinstance(b, list):
                parts.append("\n".join(f"- {x}" for x in b))
            else:
                parts.append(str(b))
            parts.append("")
    return "\n".join(parts)


TEMPLATES = Path(__file__).resolve().parent / "templates"  # shipped as package data
HTML_TEMPLATE = "report.html.j2"


@functools.lru_cache(maxsize=1)
def _jinja_env() -> "jinja2.Environment":
    import jinja2  # a core dependency; imported here so the markdown path never needs it

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


def _html_block(b: Block, images: dict[str, bytes]) -> dict[str, Any]:
    """One block as the template's plain dict (kind + fields); PNGs become base64 text."""
    if isinstance(b, Table):
        return {"kind": "table", "headers": [str(h) for h in b.headers],
                "rows": [[str(c) for c in row] for row in b.rows]}
    if isinstance(b, Image):
        return {"kind": "image", "alt": b.alt,
                "data": base64.b64encode(images[b.filename]).decode("ascii")}
    if isinstance(b, list):
        return {"kind": "list", "entries": [str(x) for x in b]}
    return {"kind": "text", "text": str(b)}


def to_html(title: str, sections: Sequence[Section], images: dict[str, bytes]) -> str:
    """Self-contained page (templates/report.html.j2, autoescaped): inline CSS, PNGs as data
    URIs, no scripts, no links and nothing fetched from the network."""
    view = [{"title": sec.title, "blocks": [_html_block(b, images) for b in sec.blocks]}
            for sec in sections]
    return _jinja_env().get_template(HTML_TEMPLATE).render(title=title, sections=view)


@dataclass(frozen=True)
class ReportPaths:
    dir: Path
    markdown: Path
    html: Path
    figures: dict[str, Path]
    summary_markdown: str  # the summary table alone, for printing


def build_sections(
    c: Collected,
    out: Path,
    *,
    prices: Optional[PriceTable] = None,
    gpu_type: str = "H100",
    precision: str = "bf16",
    mfu: float = DEFAULT_MFU,
) -> tuple[list[Section], dict[str, Path], Table]:
    """All report sections (figures are written into ``out`` on the way)."""
    currency = prices.currency if prices else "USD"
    summary = summary_table(with_random_row(c.rows, c.random_row), currency)
    s0 = Section(SECTION_TITLES[0], [summary])
    warnings = near_random_warnings(c.rows, c.random_row)
    if warnings:
        s0.blocks.insert(0, warnings)
    if c.random_row is None:
        s0.blocks.append(f"{RANDOM_NAME}: {NA}: no random-init dir found. Make one with "
                         "`python -m jobs.random_encoder --config CFG --out DIR/random-init` and fine-tune "
                         "it per mode like the runs (`python -m jobs.finetune --checkpoint DIR/random-init/encoder.pt "
                         "--mode SLF ... --out DIR/random-init/eval/SLF`).")
    if not any(r.measured and r.measured.value is not None for r in c.rows if not r.is_baseline):
        s0.blocks.append(f"Measured speed-up: {NA} without a full-data baseline (pass --baseline DIR).")
    notes = sorted({f"{r.name}: {r.measured.note}" for r in c.rows if r.measured and r.measured.note}
                   | {f"{r.name}: {r.cost.note}" for r in c.rows if r.cost and r.cost.note})
    if notes:
        s0.blocks.append(notes)
    s0.blocks.append("Accuracies in percent (SA = clean, PGD-20, AA = AutoAttack). Ideal speed-up = "
                     "E / (W + (E-W)k + n_sel x selection share).")
    figs: dict[str, Path] = {}
    s1, f1 = speedup_section(c.rows, out)
    s2, f2 = loss_section(c, out)
    s3, f3 = selection_section(c.rows, out)
    for f in (f1, f2, f3):
        figs.update(f)
    s4 = projection_section(c.rows, prices, gpu_type, precision, mfu)
    s5 = provenance_section(c)
    from pipeline.report.pareto import pareto_section  # sweeps only: robustness vs compute

    par = pareto_section(c, out, Section, Image, Table)
    if par is not None:
        figs.update(par[1])
    return [s0, s1, *([par[0]] if par else []), s2, s3, s4, s5], figs, summary


def render_report(
    c: Collected,
    out_dir: str | Path | None = None,
    *,
    prices: Optional[PriceTable] = None,
    gpu_type: str = "H100",
    precision: str = "bf16",
    mfu: float = DEFAULT_MFU,
) -> ReportPaths:
    """Write ``report.md``, ``report.html`` and the PNGs into ``out_dir`` (default ``<dir>/report``)."""
    out = Path(out_dir) if out_dir is not None else c.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections, figs, summary = build_sections(c, out, prices=prices, gpu_type=gpu_type,
                                             precision=precision, mfu=mfu)
    title = f"Report: {c.kind} {c.name}"
    md = to_markdown(title, sections)
    images = {p.name: p.read_bytes() for p in figs.values()}
    page = to_html(title, sections, images)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, page)
    return ReportPaths(out, md_path, html_path, figs, markdown_table(summary))
