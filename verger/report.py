"""The demo's report: an HTML page with matplotlib figures, written into the warehouse.

It reads what the job left there (batch reports, PCA models, the Iceberg tables) and only the
columns each figure needs: the map reads two coordinates per image, never the feature vectors.
"""
from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import pandas as pd  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from contract import layout  # noqa: E402

REPORT_DIR = "demo-report"
MAP_LABELS = 12  # more labels than this share one grey "other" colour


class PhaseRow(Protocol):
    """What the report needs of a demo phase (`verger.demo.run.Phase`)."""

    name: str
    purpose: str
    records: int
    batch_ids: list[str]
    seconds: float
    step_seconds: dict[str, float]
    feature_rows: int
    feature_keys: int


class ReferenceRun(Protocol):
    """`verger run` on the same photos (`verger.demo.run.Reference`)."""

    images: int
    seconds: float
    event_flow_seconds: float
    ratio: float


def batch_report(warehouse: Path, batch_id: str) -> dict:
    path = Path(layout.warehouse_path(str(warehouse), layout.REPORTS_DIR, f"{batch_id}.json"))
    if not path.exists():
        raise FileNotFoundError(f"no report for batch {batch_id} at {path}: its Spark step did not complete")
    return json.loads(path.read_text(encoding="utf-8"))


def pca_metadata(warehouse: Path, version: str) -> dict:
    path = Path(layout.warehouse_path(str(warehouse), layout.PCA_DIR, version, "model.json"))
    return json.loads(path.read_text(encoding="utf-8"))


def open_tables(warehouse: Path) -> dict:
    from emr_job import store

    catalog = store.open_catalog(str(warehouse))
    return {name: store.load_table(catalog, name)
            for name in (layout.FEATURES_TABLE, layout.PROJECTIONS_TABLE, layout.QUARANTINE_TABLE,
                         layout.SUGGESTIONS_TABLE)}


def feature_counts(warehouse: Path) -> tuple[int, int]:
    """Rows and distinct image keys of the feature table: equal unless a batch was stored twice."""
    table = open_tables(warehouse)[layout.FEATURES_TABLE]
    if table is None:
        return 0, 0
    keys = table.scan(selected_fields=("image_key",)).to_arrow()["image_key"]
    return len(keys), len(pc.unique(keys))


def store_counts(warehouse: Path, tables: dict, points: pd.DataFrame) -> dict:
    projections = tables[layout.PROJECTIONS_TABLE]
    rows, keys = feature_counts(warehouse)
    return {
        "feature_rows": rows,
        "feature_keys": keys,
        "pca_version": projections.properties.get(layout.CURRENT_PCA_PROPERTY) if projections else None,
        "projected_images": len(points),
    }


def map_points(warehouse: Path, tables: dict | None = None) -> pd.DataFrame:
    """label, pc1, pc2 of every image under the current PCA version, read batch by batch."""
    from pyiceberg.expressions import EqualTo

    projections = (tables or open_tables(warehouse))[layout.PROJECTIONS_TABLE]
    version = projections.properties.get(layout.CURRENT_PCA_PROPERTY) if projections else None
    if version is None:
        return pd.DataFrame(columns=["image_key", "label", "pc1", "pc2"])
    scan = projections.scan(row_filter=EqualTo("pca_version", version), selected_fields=("image_key", "pca"))
    frames = [
        pd.DataFrame({
            "image_key": batch.column("image_key").to_pylist(),
            "pc1": pc.list_element(batch.column("pca"), 0).to_numpy(zero_copy_only=False),
            "pc2": pc.list_element(batch.column("pca"), 1).to_numpy(zero_copy_only=False),
        })
        for batch in scan.to_arrow_batch_reader()
    ]
    points = pd.concat(frames, ignore_index=True).drop_duplicates("image_key", keep="last")
    points["label"] = [layout.label_of(key) or "(no label)" for key in points["image_key"]]
    return points.reset_index(drop=True)


def quarantined(warehouse: Path, tables: dict) -> pd.DataFrame:
    table = tables[layout.QUARANTINE_TABLE]
    if table is None:
        return pd.DataFrame(columns=["batch_id", "image_key", "reason", "detail"])
    return table.scan(selected_fields=("batch_id", "image_key", "reason", "detail")).to_pandas()


def plot_variance(models: list[dict]):
    """Cumulative explained variance of each fitted version, its target and its chosen k."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for index, model in enumerate(models):
        cumulative = pd.Series(model["explained_variance_ratio"]).cumsum()
        shown = cumulative[: max(model["rows_fitted"], model["k"] + 1)]
        line, = axes.plot(range(1, len(shown) + 1), shown,
                          label=f"{model['version'][:19]} ({model['rows_fitted']} rows): k = {model['k']}")
        axes.axvline(model["k"], color=line.get_color(), linestyle=":", linewidth=1)
        axes.annotate(f"k = {model['k']}", (model["k"], model["cumulative_at_k"]), textcoords="offset points",
                      xytext=(6, -14 - 14 * index), color=line.get_color())
    for target in sorted({model["target"] for model in models}):
        axes.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    axes.set(xlabel="number of components", ylabel="cumulative explained variance", ylim=(0, 1.01),
             title="PCA: explained variance and the chosen k")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_map(points: pd.DataFrame, version: str):
    """First two components coloured by label: the most frequent labels by name, the rest as "other"."""
    counts = Counter(points["label"])
    named = [label for label, _ in counts.most_common(MAP_LABELS)]
    others = len(counts) - len(named)
    figure, axes = plt.subplots(figsize=(9, 6))
    rest = points[~points["label"].isin(named)]
    if len(rest):
        axes.scatter(rest["pc1"], rest["pc2"], s=6, c="lightgrey", label=f"other ({others} labels, {len(rest)} images)")
    colours = plt.get_cmap("tab20" if len(named) > 10 else "tab10")
    for index, label in enumerate(sorted(named)):
        chosen = points[points["label"] == label]
        axes.scatter(chosen["pc1"], chosen["pc2"], s=10, color=colours(index), label=f"{label} ({len(chosen)})")
    axes.set(xlabel="PC 1", ylabel="PC 2",
             title=f"{len(points)} images on the first two components (PCA {version[:19]})")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False, markerscale=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_batches(batches: pd.DataFrame):
    """Images per batch by outcome, and each batch's throughput."""
    figure, (counts, speed) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{i + 1}. {phase}\n{mode}" for i, (phase, mode) in enumerate(zip(batches["phase"], batches["mode"]))]
    bottom = pd.Series(0, index=batches.index)
    for column, colour in (("new", "tab:green"), ("already present", "tab:blue"), ("quarantined", "tab:red")):
        counts.bar(names, batches[column], bottom=bottom, color=colour, label=column)
        bottom += batches[column]
    counts.set(ylabel="images", title="images per batch")
    counts.legend(fontsize=8)
    speed.bar(names, batches["images/s"], color="tab:purple")
    for x, value in enumerate(batches["images/s"]):
        speed.annotate(f"{value:g}", (x, value), ha="center", va="bottom", fontsize=8)
    speed.set(ylabel="images / s (new images, in-job time)", title="throughput per batch (start-up dominates small ones)")
    for axes in (counts, speed):
        axes.tick_params(axis="x", labelsize=7, labelrotation=30)
        plt.setp(axes.get_xticklabels(), ha="right", rotation_mode="anchor")
    figure.tight_layout()
    return figure


def plot_drift(drifts: pd.DataFrame):
    """Share of each applied batch's variance the stored components capture, against the threshold."""
    figure, axes = plt.subplots(figsize=(7, 4))
    names = [f"{phase}\n{batch[:14]}" for phase, batch in zip(drifts["phase"], drifts["batch"])]
    colours = ["tab:red" if advised else "tab:green" for advised in drifts["refit advised"]]
    axes.bar(names, drifts["captured share"], color=colours, width=0.5)
    axes.set_xlim(-0.75, len(names) - 0.25)
    for x, (share, error) in enumerate(zip(drifts["captured share"], drifts["reconstruction error"])):
        axes.annotate(f"{share:.3f}\nMSE {error:.3g}", (x, share), ha="center", va="bottom", fontsize=8)
    axes.axhline(drifts["threshold"].iloc[0], color="black", linestyle="--", linewidth=1,
                 label=f"refit advised below {drifts['threshold'].iloc[0]:g}")
    axes.set(ylim=(0, 1.25), ylabel="captured variance share", title="drift of batches projected with the stored PCA")
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return figure


def save(figure, path: Path) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def batch_rows(warehouse: Path, phases: list[PhaseRow]) -> pd.DataFrame:
    rows = []
    for phase in phases:
        for batch_id in phase.batch_ids:
            report = batch_report(warehouse, batch_id)
            step_wall = phase.step_seconds.get(batch_id)
            rows.append({**report_row(report, phase.name),
                         "step wall s": round(step_wall, 1) if step_wall is not None else None,
                         "extraction s": report["seconds"].get("extract_wall", 0.0)})
    return pd.DataFrame(rows)


def report_row(report: dict, phase: str) -> dict:
    """One batch report as a flat row: counts, speed, the PCA action and its drift figures."""
    images, pca = report["images"], report["pca"]
    drift = pca.get("drift", {})
    return {
        "phase": phase, "batch": report["batch_id"], "mode": report["mode"],
        "in manifest": images["in_manifest"], "new": images["new"],
        "already present": images["already_present"], "quarantined": images["quarantined"],
        "quarantine reasons": ", ".join(f"{r}: {n}" for r, n in images["quarantined_by_reason"].items()) or "-",
        "step seconds": report["seconds"]["total"], "images/s": report["images_per_second"],
        "pca": pca["action"], "pca version": pca.get("version", "-"), "k": pca.get("k", "-"),
        "captured share": drift.get("captured_variance_share"),
        "reconstruction error": drift.get("mean_reconstruction_error"),
        "threshold": drift.get("threshold"), "refit advised": drift.get("refit_advised"),
    }


def write_report(warehouse: Path, phases: list[PhaseRow], images: Path, inbox: dict[str, str],
                 reference: ReferenceRun | None = None) -> Path:
    """Write `<warehouse>/demo-report/index.html`, its PNGs and thumbnails; return the HTML's path.

    `images` is the local folder the photos were uploaded from and `inbox` maps each inbox key to
    its file there: the thumbnails are made from them.
    """
    from verger.demo.costs import fit_costs, plot_costs
    from verger.demo.gallery import Thumbnails, inbox_section, latest_suggestions, neighbour_gallery, projected

    out = warehouse / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    batches = batch_rows(warehouse, phases)
    tables = open_tables(warehouse)
    points = map_points(warehouse, tables)
    counts = store_counts(warehouse, tables, points)
    versions = [v for v in dict.fromkeys(batches.loc[batches["pca"] == "refit", "pca version"])]
    models = [pca_metadata(warehouse, version) for version in versions]
    figures = {}
    fit = fit_costs(batches) if len(batches) else None
    if len(batches):
        save(plot_costs(batches, fit, (reference.images, reference.seconds) if reference else None), out / "costs.png")
        figures["Fixed and per-image cost of a step"] = "costs.png"
        save(plot_batches(batches), out / "batches.png")
        figures["Images per batch"] = "batches.png"
    if models:
        save(plot_variance(models), out / "variance.png")
        figures["Explained variance"] = "variance.png"
    if len(points) and counts["pca_version"]:
        save(plot_map(points, counts["pca_version"]), out / "map.png")
        figures["First two components"] = "map.png"
    drifts = batches[batches["pca"] == "applied"] if len(batches) else batches
    if len(drifts):
        save(plot_drift(drifts), out / "drift.png")
        figures["Drift"] = "drift.png"
    thumbs = Thumbnails(images, inbox, out)
    photos = {
        "Inbox photos and their suggestions": inbox_section(latest_suggestions(tables), thumbs),
        "Nearest neighbours in PCA space": neighbour_gallery(projected(tables, counts["pca_version"]), thumbs)
        if counts["pca_version"] else "<p>No PCA yet.</p>",
    }
    page = render_html(phases, batches, quarantined(warehouse, tables), counts, figures, photos,
                       headline(fit, reference))
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def headline(fit, reference: ReferenceRun | None) -> str:
    lines = []
    if reference:
        lines.append(f"The event flow carried {reference.images} photos in {reference.event_flow_seconds:.1f} s; "
                     f"<code>verger run</code> on the same photos took {reference.seconds:.1f} s "
                     f"(ratio {reference.ratio:.2f}).")
    if fit:
        lines.append(f"A Spark step spends about {fit.fixed_s:.1f} s outside extraction whatever its size "
                     f"(start-up, store reads, commit, PCA: the median over {fit.steps} steps), and "
                     f"{fit.per_image_s * 1000:.2f} ms per image extracting: {fit.steady_rate:.1f} img/s once "
                     f"start-up is paid. Steps that ran while uploads went on share the cores with the "
                     f"embedded S3 API and extract more slowly (see each step's images/s below).")
    else:
        lines.append("No step extracted anything: there is no per-image cost to show.")
    return "".join(f"<p>{line}</p>" for line in lines)


def render_html(phases: list[PhaseRow], batches: pd.DataFrame, quarantine: pd.DataFrame, counts: dict,
                figures: dict[str, str], photos: dict[str, str], summary: str) -> str:
    phase_table = pd.DataFrame(
        [{"phase": phase.name, "what it shows": phase.purpose, "wall seconds": round(phase.seconds, 1),
          "SQS records": phase.records, "Spark steps": len(phase.batch_ids),
          "feature rows after": phase.feature_rows, "distinct images after": phase.feature_keys}
         for phase in phases]
    )
    store = pd.DataFrame([counts])
    sections = [
        summary,
        "<h2>Phases</h2>", phase_table.to_html(index=False),
    ]
    for title, name in figures.items():
        sections += [f"<h2>{html.escape(title)}</h2>", f'<img src="{html.escape(name)}" alt="{html.escape(title)}">']
        if name == "map.png":
            for photo_title, body in photos.items():
                sections += [f"<h2>{html.escape(photo_title)}</h2>", body]
    sections += [
        "<h2>Batches</h2>", batches.drop(columns=["threshold"], errors="ignore").to_html(index=False, na_rep="-"),
        "<h2>Store</h2>", store.to_html(index=False),
        "<h2>Quarantine</h2>",
        quarantine.to_html(index=False) if len(quarantine) else "<p>No image was quarantined.</p>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;display:block;overflow-x:auto;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
             ".row{display:flex;gap:10px;align-items:flex-start;margin:8px 0}"
             "figure{margin:0;width:96px;font-size:11px;text-align:center}figure img{width:80px;height:80px;"
             "object-fit:contain;border:1px solid #ddd}.ranked{font-size:12px;width:190px}"
             ".ranked ol{margin:4px 0;padding-left:20px}.hit{color:#1a7f37;font-weight:bold}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Verger demo report</title>"
            f"<style>{style}</style></head><body><h1>Verger demo report</h1>{''.join(sections)}</body></html>")
