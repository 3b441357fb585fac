"""One self-contained HTML page for a results folder: ``sambench report DIR -o report.html``.

The page holds everything a reader needs without the folder: run counts by status, the protocol
(the selection rule that chose each method's configuration, ORACLE when it was the test set, and the
validation splits the runs held out), the tables (``analysis.table``), the SAM-ON paper's claims as
verdicts (``analysis.claims``, analysis/paper_claims.py), every figure ``analysis.plot_all`` draws (PNG embedded as base64), the
failed runs with their error and the tail of their logs, every run in one table, and the
environment the runs recorded. Files only: no torch, bench or masks import.

    info = analysis.write_report("results/demo", "results/demo/report.html")
    info.path, info.figures, info.tables, info.warnings
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import os
import platform
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import selection
from analysis.labels import is_missing, plain
from analysis.loading import collect
from analysis.paper_claims import claims, claims_text
from analysis.plots import plot_all
from analysis.tables import table

STATUS_ORDER = ("done", "diverged", "failed", "corrupt", "running", "pending")
FAILED = ("failed", "diverged", "corrupt")
LOG_TAIL_LINES = 30
MAX_RUN_ROWS = 2000
RUN_COLUMNS = ("run_id", "suite", "status", "setting", "variant_label", "method", "rho", "seed", "test_acc",
               "train_acc", "epochs_done", "seconds_per_epoch", "perturbed_fraction")
CURVES = (("train_loss", "train loss"), ("train_acc", "train accuracy (%)"), ("test_acc", "test accuracy (%)"))
MAX_CURVE_SETTINGS = 6
ENV_COLUMNS_FIRST = ("env.git_commit", "env.torch", "env.device_name", "env.device", "env.cuda", "env.python",
                     "env.threads", "env.hostname", "env.platform")
TABLES = (("Test accuracy (%) at each method's chosen ρ, mean ± std over seeds", {}),
          ("Test accuracy (%) by ρ", {"layout": "rho"}))

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#666}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .55em;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0;display:inline-block;max-width:100%}figure img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.82em}
.status-failed,.status-corrupt{color:#b00020}.status-diverged{color:#b36b00}.status-done{color:#1b7a1b}
details{margin:.5em 0}summary{cursor:pointer}
"""


@dataclass
class ReportInfo:
    """What was written: the page, its figure stems, table titles and the warnings met."""

    path: str
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    skipped_figures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rule: str = ""            # the selection rule's tag ("val", "test (oracle)", ...)


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value) -> str:
    value = plain(value)
    if is_missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.2f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _html_table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
                css: str = "") -> str:
    """Cells are already HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --- markdown tables (analysis.table) -> HTML ---------------------------------------------------

def _md_cells(line: str) -> list[str]:
    text = line.strip()
    text = text[1:] if text.startswith("|") else text
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", text)]


def _md_inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc(text))


def markdown_to_html(text: str) -> str:
    """Markdown pipe tables (as ``analysis.table`` writes them) and plain lines -> HTML."""
    out, block = [], []

    def flush():
        if not block:
            return
        header, *rest = block
        aligns = _md_cells(rest[0]) if rest and set(rest[0].replace("|", "").strip()) <= set(":- ") else None
        body = rest[1:] if aligns is not None else rest
        numeric = {i for i, a in enumerate(aligns or []) if a.endswith(":") and not a.startswith(":")}
        out.append(_html_table([_md_inline(c) for c in _md_cells(header)],
                               [[_md_inline(c) for c in _md_cells(r)] for r in body], numeric, "result"))
        block.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{_md_inline(line.strip())}</p>")
    flush()
    return "\n".join(out)


# --- sections ------------------------------------------------------------------------------------

def _status_section(df: pd.DataFrame) -> str:
    statuses = [s for s in STATUS_ORDER if s in set(df["status"])] + sorted(
        set(df["status"]) - set(STATUS_ORDER))
    suites = df["suite"].fillna("(no suite)").astype(str) if len(df) else pd.Series([], dtype=str)
    rows = []
    for name in sorted(set(suites)):
        sub = df[suites == name]
        counts = sub["status"].value_counts()
        rows.append([esc(name), str(len(sub))] + [str(int(counts.get(s, 0))) for s in statuses])
    if len(set(suites)) != 1:
        counts = df["status"].value_counts()
        rows.append(["<strong>all</strong>", str(len(df))] + [str(int(counts.get(s, 0))) for s in statuses])
    header = ["suite", "runs"] + [f'<span class="status-{esc(s)}">{esc(s)}</span>' for s in statuses]
    return _html_table(header, rows, set(range(1, len(header))), "status")


def _protocol_section(df: pd.DataFrame, rule) -> str:
    """Which rule chose the rows of this page, and what the runs held out to choose on."""
    done = df[df["status"].astype(str) == "done"] if len(df) else df
    splits = sorted({str(plain(v)) for v in done["val_split"]}, key=str) if "val_split" in done else []
    held = [s for s in splits if s not in ("0", "0.0", "None")]
    noisy = done[(done["label_noise"].astype(float) > 0)] if held and "label_noise" in done else done.iloc[:0]
    labels = ""
    if len(noisy) and "val_noisy" in noisy:
        kinds = sorted({"noisy like the training labels" if bool(v) else "clean" for v in noisy["val_noisy"]})
        labels = f"; with label noise, the held-out labels are {' / '.join(kinds)} (val_noisy)"
    text = (f"<p><strong>Selection rule: {esc(rule.tag)}</strong>. {esc(rule.describe())}.</p>"
            f"<p>Validation split of the finished runs (val_split): {esc(', '.join(splits) or 'none')}"
            + ("" if held else " — nothing was held out, so only the test set (oracle) or a fixed ρ can choose")
            + f"{esc(labels)}.</p>")
    if rule.oracle:
        text += ('<p class="status-failed">ORACLE: every table, figure and claim on this page chose its ρ on the '
                 "test set it reports; the numbers are optimistic. Run with a validation split "
                 "(<code>val_split: 0.2</code>) and <code>--select val</code> for honest ones.</p>")
    return text + "<p>The protocol: docs/protocol.md.</p>"


def _claims_section(df: pd.DataFrame, info: ReportInfo, rule, tune) -> str:
    try:
        text = claims_text(claims(df, rule, tune))
    except Exception as exc:  # noqa: BLE001 -- the page is made without this section
        info.warnings.append(f"claims not made: {type(exc).__name__}: {exc}")
        return "<p>Not made (see the warnings).</p>"
    body = [ln for ln in text.split("\nNot run:\n")[0].splitlines()]
    parts = [markdown_to_html("\n".join(body))]
    not_run = text.split("\nNot run:\n")[1] if "\nNot run:\n" in text else ""
    if not_run.strip():
        parts.append(f"<p>Not run (suite grid lines that would run them):</p><pre>{esc(not_run.strip())}</pre>")
    return "\n".join(parts)


def _tables_section(df: pd.DataFrame, info: ReportInfo, rule=None, tune=None) -> str:
    parts = []
    for title, kwargs in TABLES:
        try:
            text = table(df, fmt="markdown", select=rule, tune=tune, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- one table that cannot be made does not stop the page
            info.warnings.append(f"table {title!r} not made: {type(exc).__name__}: {exc}")
            continue
        info.tables.append(title)
        parts.append(f'<h3>{esc(title)}</h3>\n<div class="table">{markdown_to_html(text)}</div>')
    return "\n".join(parts)


def _figures_section(df: pd.DataFrame, info: ReportInfo, rule=None, tune=None) -> str:
    with tempfile.TemporaryDirectory(prefix="sambench-report-") as tmp:
        paths = plot_all(df, tmp, formats=("png",), select=rule, tune=tune)
        parts = []
        for p in paths:
            stem = Path(p).stem
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            info.figures.append(stem)
            parts.append(f'<figure id="fig-{esc(stem)}"><img alt="{esc(stem)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{esc(stem.replace("_", " "))}'
                         f"</figcaption></figure>")
    info.skipped_figures = dict(paths.skipped)
    if paths.skipped:
        items = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in sorted(paths.skipped.items()))
        parts.append(f"<p>Not drawn:</p><ul>{items}</ul>")
    return "\n".join(parts) or "<p>No figures (no finished runs).</p>"


def _epoch_curves(paths: list[str], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std over runs) of one metrics.jsonl key, over the epochs every run logged."""
    import json

    series = []
    for path in paths:
        try:
            lines = (Path(path) / "metrics.jsonl").read_text().splitlines()
        except OSError:
            continue
        rec = [json.loads(ln) for ln in lines if ln.strip().startswith("{")]
        series.append([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in rec])
    n = min((len(s) for s in series), default=0)
    if not n:
        return np.arange(0), np.zeros(0), np.zeros(0)
    values = np.array([s[:n] for s in series], dtype=float)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(n)
    return np.arange(1, n + 1), values.mean(axis=0), std


def curve_rows(df: pd.DataFrame, rule, tune=None) -> pd.DataFrame:
    """The configurations whose learning curves the report draws: what the rule (and ``tune``) chose,
    as in every other section of the page."""
    from analysis.selection import select

    return select(df, rule, tune).chosen if len(df) else df


def learning_curves(df: pd.DataFrame, info: ReportInfo, rule, tune=None) -> str:
    """Train loss, train accuracy and test accuracy per epoch (from metrics.jsonl) of each method at
    the configuration its selection rule chose, mean ± std over seeds: one figure per setting, embedded as PNG."""
    import io

    from matplotlib.figure import Figure

    from analysis.labels import BASELINE_COLOR, mask_color

    best = curve_rows(df, rule, tune)
    if not len(best):
        return "<p>No finished runs.</p>"
    paths = dict(zip(df["run_id"].astype(str), df["path"].astype(str)))
    settings = sorted(best["setting"].unique())
    parts = []
    for s in settings[:MAX_CURVE_SETTINGS]:
        fig = Figure(figsize=(10, 2.8), layout="constrained")
        axes = fig.subplots(1, len(CURVES))
        for _, r in best[best["setting"] == s].iterrows():
            runs = [paths[i] for i in r["run_ids"] if i in paths]
            color = BASELINE_COLOR if bool(r["baseline"]) else mask_color(str(r["mask"]))
            rho = "" if bool(r["baseline"]) else f" (ρ={plain(r['rho']):g})"
            for ax, (key, label) in zip(axes, CURVES):
                x, mean, std = _epoch_curves(runs, key)
                ax.plot(x, mean, color=color, lw=1.2, label=f"{r['variant_label']} {r['method']}{rho}"
                        if not bool(r["baseline"]) else str(r["variant_label"]))
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, lw=0)
                ax.set_xlabel("epoch")
                ax.set_ylabel(label)
        axes[-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{s}: learning curves at each method's ρ chosen by {rule.tag} (mean ± std over seeds)",
                     fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        stem = f"learning_curves_{re.sub(r'[^A-Za-z0-9]+', '_', s).strip('_')}"
        info.figures.append(stem)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f'<figure id="fig-{esc(stem)}"><img alt="{esc(stem)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(s)}: train loss, train accuracy and test accuracy per epoch</figcaption>"
                     "</figure>")
    if len(settings) > MAX_CURVE_SETTINGS:
        parts.append(f"<p>First {MAX_CURVE_SETTINGS} of {len(settings)} settings.</p>")
    return "\n".join(parts)


def _log_files(run_dir: Path) -> list[Path]:
    """Log files recorded for a run: job.json's stdout/stderr paths (submitit), then logs in the folder."""
    import json

    found = []
    try:
        info = json.loads((run_dir / "job.json").read_text())
    except (OSError, ValueError):
        info = None
    jobs = info.get("jobs", []) if isinstance(info, dict) else []
    for job in reversed([j for j in jobs if isinstance(j, dict)]):
        for key in ("stderr", "stdout"):
            if isinstance(job.get(key), str) and Path(job[key]).is_file():
                found.append(Path(job[key]))
    found += sorted(p for p in run_dir.glob("*.log") if p.is_file())
    return found


def _tail(path: Path, run_id: str, n: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256_000))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    mine = [ln for ln in lines if run_id in ln]
    if mine and len(mine) < len(lines):  # a log shared by several runs: from this run's first line on
        lines = lines[lines.index(mine[0]):]
    return [ln for ln in lines if ln.strip()][-n:]


def _failed_section(df: pd.DataFrame) -> str:
    import json

    bad = df[df["status"].isin(FAILED)]
    if not len(bad):
        return "<p>None.</p>"
    parts = []
    for _, row in bad.iterrows():
        run_dir = Path(str(row.get("path")))
        error = row.get("error") if "error" in row and not is_missing(row.get("error")) else None
        what = " · ".join(esc(_fmt(row.get(c))) for c in ("setting", "variant_label", "method") if c in row)
        rho = f" · ρ={esc(_fmt(row.get('rho')))}" if not is_missing(row.get("rho")) else ""
        body = [f"<p>{what}{rho} · seed {esc(_fmt(row.get('seed')))} · <code>{esc(run_dir)}</code></p>"]
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except (OSError, ValueError):
            result = None
        tb = result.get("traceback") if isinstance(result, dict) else None
        if tb:
            body.append(f"<p>Traceback (end):</p><pre>{esc(chr(10).join(str(tb).splitlines()[-LOG_TAIL_LINES:]))}</pre>")
        for log in _log_files(run_dir):
            tail = _tail(log, str(row["run_id"]))
            if tail:
                body.append(f"<p>Log <code>{esc(log)}</code> (last {len(tail)} lines):</p>"
                            f"<pre>{esc(chr(10).join(tail))}</pre>")
                break
        summary = (f'<span class="status-{esc(row["status"])}">{esc(row["status"])}</span> '
                   f'<code>{esc(row["run_id"])}</code>' + (f": {esc(error)}" if error else ""))
        parts.append(f'<details open class="failed-run" id="run-{esc(row["run_id"])}"><summary>{summary}'
                     f"</summary>{''.join(body)}</details>")
    return "\n".join(parts)


def _runs_section(df: pd.DataFrame) -> str:
    cols = [c for c in RUN_COLUMNS if c in df.columns]
    numeric = {i for i, c in enumerate(cols) if pd.api.types.is_numeric_dtype(df[c])}
    shown = df.head(MAX_RUN_ROWS)
    rows = []
    for _, r in shown.iterrows():
        cells = [esc("" if c == "rho" and bool(r.get("baseline")) else _fmt(r[c])) for c in cols]  # SGD: no ρ
        if "status" in cols:
            i = cols.index("status")
            cells[i] = f'<span class="status-{cells[i]}">{cells[i]}</span>'
        rows.append(cells)
    more = f"<p>First {MAX_RUN_ROWS} of {len(df)} runs.</p>" if len(df) > MAX_RUN_ROWS else ""
    return _html_table([esc(c) for c in cols], rows, numeric, "runs") + more


def _environment_section(df: pd.DataFrame) -> str:
    env_cols = [c for c in df.columns if c.startswith("env.")]
    env_cols = [c for c in ENV_COLUMNS_FIRST if c in env_cols] + sorted(set(env_cols) - set(ENV_COLUMNS_FIRST))
    rows = []
    for c in env_cols:
        counts = df[c].map(_fmt).replace("", pd.NA).dropna().value_counts()
        if not len(counts):
            continue
        values = "<br>".join(f"{esc(v)}" + (f" ({n} runs)" if len(counts) > 1 else "")
                             for v, n in counts.head(8).items())
        if len(counts) > 8:
            values += f"<br>… {len(counts) - 8} more"
        rows.append([esc(c[len("env."):]), values])
    rows.append(["report made with", esc(f"python {platform.python_version()}, pandas {pd.__version__}, "
                                         f"sambench {_version()}")])
    return _html_table(["", "recorded by the runs"], rows, css="env")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sambench")
    except PackageNotFoundError:
        return "unknown"


def render(folder: str | os.PathLike, title: str | None = None, select=None,
           tune=None) -> tuple[str, ReportInfo]:
    """The page as a string and what it holds (``info.path`` left empty); ``select``: the selection
    rule (default ``val`` with a validation split, else ``test``, the oracle)."""
    info = ReportInfo(path="")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = collect(folder)
        rule = selection.resolve_rule(select, df)
        info.rule = rule.tag
        sections = [
            ("status", "Runs by status", _status_section(df)),
            ("protocol", "Protocol", _protocol_section(df, rule)),
            ("tables", "Tables", _tables_section(df, info, rule, tune)),
            ("claims", "Claims of the SAM-ON paper", _claims_section(df, info, rule, tune)),
            ("figures", "Figures", _figures_section(df, info, rule, tune)),
            ("curves", "Learning curves", learning_curves(df, info, rule, tune)),
            ("failed", "Failed runs", _failed_section(df)),
            ("runs", "All runs", _runs_section(df)),
            ("environment", "Environment", _environment_section(df)),
        ]
    info.warnings = list(dict.fromkeys([str(w.message) for w in caught] + info.warnings))
    root = Path(folder).resolve()
    title = title or f"sambench report: {root.name}"
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    notes = ""
    if info.warnings:
        notes = "<h3>Warnings</h3><ul>" + "".join(f"<li>{esc(w)}</li>" for w in info.warnings) + "</ul>"
    nav = "".join(f'<a href="#{key}">{esc(name)}</a>' for key, name, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{esc(name)}</h2>\n{content}\n</section>'
                     for key, name, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n<p class=\"meta\">{len(df)} runs in <code>{esc(root)}</code> · "
            f"generated {esc(now)}</p>\n<nav>{nav}</nav>\n{notes}\n{body}\n</body></html>\n")
    return page, info


_LINK_ATTRS = ("src", "href", "srcset", "poster", "action", "data", "background")
_CSS_LINK = re.compile(r"""url\(\s*["']?([^"')\s]+)|@import\s+(?:url\(\s*)?["']?([^"')\s;]+)""", re.IGNORECASE)
_IN_PAGE = ("data:", "#", "mailto:")


class _Links(HTMLParser):
    """Every place the page's tags and styles point to (attributes, CSS url() and @import)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in _LINK_ATTRS and value:
                self.found += [v.split()[0] for v in value.split(",") if v.strip()] if key == "srcset" else [value]
            elif key == "style" and value:
                self.found += [a or b for a, b in _CSS_LINK.findall(value)]
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.found += [a or b for a, b in _CSS_LINK.findall(data)]


def external_resources(page: str) -> list[str]:
    """What ``page`` would load from anywhere but itself (scripts, style sheets, fonts, images,
    frames, links to files or sites); empty for a report, so it works offline and attached to a
    mail: its figures are ``data:`` URLs, its style is inline, its fonts are the system's."""
    parser = _Links()
    parser.feed(page)
    parser.close()
    return [u for u in parser.found if not u.strip().lower().startswith(_IN_PAGE)]


def write_report(folder: str | os.PathLike, output: str | os.PathLike, title: str | None = None,
                 select=None, tune=None) -> ReportInfo:
    """Write the report page for ``folder`` to ``output`` (parent folders created)."""
    page, info = render(folder, title, select, tune)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    info.path = str(out)
    return info


__all__ = ["write_report", "render", "markdown_to_html", "external_resources", "ReportInfo"]
