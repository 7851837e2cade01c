"""The offline monitoring report: self-contained HTML (no URLs, no scripts), one chart and drift row per feature,
empty windows said out loud; and the same checks on the DOM headless Chromium builds, with no network request."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rayml.monitoring.report import build_summary, render_html, render_report

pytestmark = pytest.mark.unit

SCHEMA = {
    "price": "numeric",
    "session_length": "numeric",
    "items": "numeric",
    "device": "categorical",
}
FEATURES = list(SCHEMA)


def _frames(
    seed: int = 0, n_ref: int = 2000, n_cur: int = 800
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def window(n: int, shift: float) -> pd.DataFrame:
        df = pd.DataFrame(
            {
                "price": rng.lognormal(3.0, 0.5, n),
                "session_length": rng.normal(300 + 80 * shift, 80, n),
                "items": rng.poisson(6, n).astype(float),
                "device": rng.choice(["mobile", "desktop", "tablet"], n, p=[0.6, 0.3, 0.1]),
            }
        )
        df.loc[df.index[:5], "price"] = np.nan
        return df

    return window(n_ref, 0.0), window(n_cur, 0.7)


def _drift(drifted: set[str]) -> list[dict[str, Any]]:
    return [
        {
            "feature": f,
            "test": "chi2" if SCHEMA[f] == "categorical" else "ks",
            "statistic": 0.31 if f in drifted else 0.02,
            "p_value": 1e-12 if f in drifted else 0.6,
            "adjusted_p_value": 4e-12 if f in drifted else float("nan"),
            "threshold": 0.05,
            "drifted": f in drifted,
        }
        for f in FEATURES
    ]


def _quality() -> list[dict[str, Any]]:
    return [
        {
            "feature": f,
            "missing_rate": 0.0025 if f == "price" else 0.0,
            "out_of_range_rate": None if SCHEMA[f] == "categorical" else 0.01,
            "cardinality": np.int64(3) if f == "device" else None,
            "new_category_rate": 0.0 if SCHEMA[f] == "categorical" else None,
        }
        for f in FEATURES
    ]


def _performance(days: int = 10) -> list[dict[str, Any]]:
    out = []
    for d in range(days):
        est = 0.78 - 0.002 * d
        out.append(
            {
                "window_start": pd.Timestamp("2026-11-20", tz="UTC") + pd.Timedelta(days=d),
                "metric": "auc",
                "delayed": None if d >= days - 2 else est + 0.003,
                "estimated": est,
                "lo": est - 0.01,
                "hi": est + 0.01,
            }
        )
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ref, cur = _frames()
    summary = build_summary(
        ref, cur, SCHEMA, _drift({"session_length"}), _quality(), _performance()
    )
    out = tmp_path_factory.mktemp("report")
    render_report(summary, out / "report.html", out / "summary.json")
    return out / "report.html", out / "summary.json"


@pytest.fixture(scope="module")
def rendered_empty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ref, cur = _frames()
    summary = build_summary(ref, cur.iloc[:0], SCHEMA, [], [], None, names=("training", "serving"))
    out = tmp_path_factory.mktemp("report-empty")
    render_report(summary, out / "report.html", out / "summary.json")
    return out / "report.html", out / "summary.json"


# -- static checks ------------------------------------------------------------------------------------------

URL_ATTR = re.compile(
    r"""(?:\b(?:src|href|xlink:href|action|poster|srcset)\s*=\s*["']?|url\(\s*["']?)([^"'\s)>]*)""",
    re.I,
)


def _feature_svgs(markup: str) -> dict[str, str]:
    return {
        m.group(1): m.group(0)
        for m in re.finditer(
            r'<svg class="feature-chart" data-feature="([^"]*)".*?</svg>', markup, re.S
        )
    }


def _drift_rows(markup: str) -> list[str]:
    return re.findall(r'<tr class="drift-row[^"]*" data-feature="([^"]*)"', markup)


def test_html_is_self_contained(rendered: tuple[Path, Path]) -> None:
    markup = rendered[0].read_text(encoding="utf-8")
    lowered = markup.lower()
    for needle in (
        "http://",
        "https://",
        "//cdn",
        "<script",
        "@import",
        "<link",
        "<iframe",
        "<object",
        "<embed",
    ):
        assert needle not in lowered, needle
    # Any URL-valued attribute or CSS url() may only be a data: URI or an in-page anchor.
    for value in URL_ATTR.findall(markup):
        assert value.startswith(("data:", "#")), value
    assert "<style>" in markup  # inline CSS


def test_one_nonempty_svg_per_feature(rendered: tuple[Path, Path]) -> None:
    markup = rendered[0].read_text(encoding="utf-8")
    svgs = _feature_svgs(markup)
    assert sorted(svgs) == sorted(FEATURES)
    assert markup.count('<svg class="feature-chart"') == len(FEATURES)
    for name, svg in svgs.items():
        assert "<path" in svg or "<rect" in svg, name
        assert "ref-bar" in svg, name  # the reference is drawn, not only the axes
    assert "cur-step" in svgs["price"] and "cur-bar" in svgs["device"]


def test_one_drift_row_per_feature(rendered: tuple[Path, Path]) -> None:
    markup = rendered[0].read_text(encoding="utf-8")
    assert sorted(_drift_rows(markup)) == sorted(FEATURES)
    row = re.search(
        r'<tr class="drift-row drifted" data-feature="session_length".*?</tr>', markup, re.S
    )
    assert row is not None and "drifted" in row.group(0) and "1.00e-12" in row.group(0)
    assert "Drift detected in 1 of 4 features: session_length" in markup


def test_performance_chart_has_lines_and_band(rendered: tuple[Path, Path]) -> None:
    markup = rendered[0].read_text(encoding="utf-8")
    perf = re.search(r'<svg class="perf-chart" data-metric="auc".*?</svg>', markup, re.S)
    assert perf is not None
    for cls in ("delayed-line", "estimated-line", "band"):
        assert f'class="{cls}"' in perf.group(0), cls
    assert "Data quality" in markup and markup.count('class="quality-row"') == len(FEATURES)


def test_json_summary(rendered: tuple[Path, Path]) -> None:
    data = json.loads(rendered[1].read_text(encoding="utf-8"))  # strict JSON: NaN became null
    assert data["empty"] is False
    assert data["reference"] == {"name": "reference", "rows": 2000}
    assert data["current"]["rows"] == 800
    assert set(data["features"]) == set(FEATURES)
    num = data["features"]["session_length"]
    assert num["kind"] == "numeric"
    assert len(num["reference_hist"]["edges"]) == 21 and len(num["reference_hist"]["shares"]) == 20
    assert num["reference_hist"]["edges"] == num["current_hist"]["edges"]
    assert sum(num["current_hist"]["shares"]) == pytest.approx(1.0)
    cat = data["features"]["device"]
    assert cat["reference_hist"]["categories"] == ["mobile", "desktop", "tablet"]
    assert data["drift"][0]["adjusted_p_value"] is None
    assert data["quality"][3]["cardinality"] == 3
    assert data["performance"][0]["window_start"].startswith("2026-11-20T00:00:00")
    assert data["performance"][-1]["delayed"] is None


def test_empty_window_is_said(rendered_empty: tuple[Path, Path]) -> None:
    markup = rendered_empty[0].read_text(encoding="utf-8")
    data = json.loads(rendered_empty[1].read_text(encoding="utf-8"))
    assert data["empty"] is True
    assert data["current"]["rows"] == 0
    assert any("serving window is empty" in n for n in data["notes"])
    assert 'class="banner empty"' in markup and "The serving window is empty" in markup
    assert "No performance windows" in markup and "No drift tests were run" in markup
    # The charts still exist (reference only), one per feature.
    assert sorted(_feature_svgs(markup)) == sorted(FEATURES)


def test_both_windows_empty() -> None:
    empty = pd.DataFrame({f: pd.Series([], dtype=float) for f in FEATURES})
    summary = build_summary(empty, empty, SCHEMA, [], [])
    markup = render_html(summary)
    assert summary["empty"] is True
    assert summary["features"]["price"]["reference_hist"] == {"edges": [], "shares": []}
    assert markup.count("no data in either window") == len(FEATURES)
    assert "The reference window is empty" in markup and "The current window is empty" in markup


def test_categorical_top20_plus_other_and_quantile_bins() -> None:
    rng = np.random.default_rng(1)
    cats = [f"c{i:02d}" for i in range(30)]
    ref = pd.DataFrame({"x": rng.choice(cats, 5000), "y": rng.exponential(1.0, 5000)})
    cur = pd.DataFrame(
        {"x": rng.choice([*cats, "brand-new"], 1000), "y": rng.exponential(1.0, 1000)}
    )
    s = build_summary(ref, cur, {"x": "category", "y": "float"}, [], [], bins="quantile")
    hist = s["features"]["x"]["current_hist"]
    assert len(hist["categories"]) == 21 and hist["categories"][-1] == "other"  # type: ignore[typeddict-item]
    assert sum(hist["shares"]) == pytest.approx(1.0)
    edges = s["features"]["y"]["reference_hist"]["edges"]  # type: ignore[typeddict-item]
    shares = s["features"]["y"]["reference_hist"]["shares"]
    assert len(edges) == 21 and max(shares) < 0.06  # quantile bins: ~5 % each
    with pytest.raises(ValueError, match="unknown feature kind"):
        build_summary(ref, cur, {"x": "vector"}, [], [])


def test_labels_are_escaped(tmp_path: Path) -> None:
    ref = pd.DataFrame({"<b>f</b>": ["<script>x</script>", "a"]})
    s = build_summary(ref, ref, {"<b>f</b>": "categorical"}, [], [], title='t" onload="x')
    markup = render_html(s)
    assert "<script" not in markup and "<b>f</b>" not in markup
    assert "&lt;script&gt;" in markup and "&quot; onload=&quot;" in markup


# -- headless Chromium ----------------------------------------------------------------------------------------

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not on PATH (apt-get install -y chromium) — browser checks skipped",
)
QUIET = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
]


def _chromium(page: Path, profile: Path, *extra: str) -> str:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *QUIET,
        *extra,
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a file:// page started, from Chromium's NetLog.

    Chromium itself talks to update/account services on start even headless; those requests have no
    initiating origin ("not an origin"), while a page's own requests carry the file:// isolation key.
    """
    text = netlog.read_text(encoding="utf-8")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short: close the events list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        from_page = "file://" in params.get("network_isolation_key", "")
        if from_page or params.get("initiator") != "not an origin":
            urls.append(params["url"])
    return urls


@needs_chromium
def test_chromium_dom_has_one_svg_and_drift_row_per_feature(
    rendered: tuple[Path, Path], tmp_path: Path
) -> None:
    dom = _chromium(rendered[0], tmp_path / "profile")
    assert dom.count('<svg class="feature-chart"') == len(FEATURES)
    assert sorted(_feature_svgs(dom)) == sorted(FEATURES)
    assert sorted(_drift_rows(dom)) == sorted(FEATURES)
    assert "<script" not in dom


@needs_chromium
def test_chromium_makes_no_network_request(rendered: tuple[Path, Path], tmp_path: Path) -> None:
    # Control: a page with an external image and stylesheet, to show the NetLog check sees page requests.
    control = tmp_path / "control.html"
    control.write_text(
        '<html><body><img src="http://canary.rayml.invalid/x.png">'
        '<link rel="stylesheet" href="https://cdn.rayml.invalid/a.css"></body></html>'
    )
    control_log = tmp_path / "control-netlog.json"
    _chromium(control, tmp_path / "p1", f"--log-net-log={control_log}")
    seen = _page_requests(control_log)
    assert "http://canary.rayml.invalid/x.png" in seen and "https://cdn.rayml.invalid/a.css" in seen

    netlog = tmp_path / "netlog.json"
    dom = _chromium(rendered[0], tmp_path / "p2", f"--log-net-log={netlog}")
    assert _page_requests(netlog) == []
    assert dom.count('<svg class="feature-chart"') == len(FEATURES)
