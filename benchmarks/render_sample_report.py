"""Render a sample offline monitoring report from synthetic data (one feature shifted), and screenshot it.

    python benchmarks/render_sample_report.py [--out .rayml/sample-report] [--screenshot docs/monitoring-report.png]

The reference window is 20,000 rows; the current window is 5,000 rows in which ``session_length`` has shifted
(mean +0.6 sd) and the ``device`` mix moved toward ``tablet``. The drift tests here are small stand-ins (PSI on
the report's bins, two-sample KS and chi-square, Benjamini–Hochberg across features) so the script needs
nothing beyond numpy, pandas and scipy; production runs take them from ``rayml.monitoring.detectors``.
``--screenshot`` runs headless Chromium (``apt-get install chromium``) with the network disabled.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from rayml.monitoring.report import build_summary, render_report

SCHEMA = {
    "price": "numeric",
    "session_length": "numeric",
    "items_viewed": "numeric",
    "device": "categorical",
}


def synthetic_windows(seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference and a current window; ``session_length`` and ``device`` drift, the rest do not."""
    rng = np.random.default_rng(seed)

    def window(n: int, shift: float, devices: list[float]) -> pd.DataFrame:
        df = pd.DataFrame(
            {
                "price": rng.lognormal(3.0, 0.5, n),
                "session_length": rng.normal(300.0 + shift * 80.0, 80.0, n),
                "items_viewed": rng.poisson(6.0, n).astype(float),
                "device": rng.choice(["mobile", "desktop", "tablet", "tv"], n, p=devices),
            }
        )
        df.loc[rng.random(n) < 0.01, "price"] = np.nan
        return df

    reference = window(20_000, 0.0, [0.55, 0.35, 0.08, 0.02])
    current = window(5_000, 0.6, [0.45, 0.30, 0.23, 0.02])
    current.loc[current.index[:40], "device"] = "smart-fridge"  # a category the reference never saw
    return reference, current


def _psi(ref: list[float], cur: list[float], eps: float = 1e-4) -> float:
    r = np.clip(np.asarray(ref), eps, None)
    c = np.clip(np.asarray(cur), eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _bh(p: list[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values."""
    arr = np.asarray(p)
    order = np.argsort(arr)
    scaled = arr[order] * len(arr) / np.arange(1, len(arr) + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    out = np.empty_like(adj)
    out[order] = adj
    return [float(x) for x in out]


def drift_and_quality(
    reference: pd.DataFrame, current: pd.DataFrame, features: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stand-in drift tests (KS / chi-square with BH, PSI as the score) and quality rates."""
    rows: list[dict[str, Any]] = []
    quality: list[dict[str, Any]] = []
    for name, kind in SCHEMA.items():
        fs = features[name]
        psi = _psi(fs["reference_hist"]["shares"], fs["current_hist"]["shares"])
        r, c = reference[name].dropna(), current[name].dropna()
        if kind == "numeric":
            p = float(stats.ks_2samp(r, c).pvalue)
            lo, hi = r.min(), r.max()
            oor = float(((c < lo) | (c > hi)).mean())
            quality.append(
                {
                    "feature": name,
                    "missing_rate": float(current[name].isna().mean()),
                    "out_of_range_rate": oor,
                    "cardinality": int(c.nunique()),
                    "new_category_rate": None,
                }
            )
            test = "ks"
        else:
            cats = sorted(set(r) | set(c))
            table = np.array(
                [[int((r == k).sum()) for k in cats], [int((c == k).sum()) for k in cats]]
            )
            p = float(stats.chi2_contingency(table + 0.5)[1])
            quality.append(
                {
                    "feature": name,
                    "missing_rate": float(current[name].isna().mean()),
                    "out_of_range_rate": None,
                    "cardinality": int(c.nunique()),
                    "new_category_rate": float((~c.isin(set(r))).mean()),
                }
            )
            test = "chi2"
        rows.append(
            {
                "feature": name,
                "test": f"{test}+psi",
                "statistic": psi,
                "p_value": p,
                "threshold": 0.2,
            }
        )
    for row, adj in zip(rows, _bh([r["p_value"] for r in rows]), strict=True):
        row["adjusted_p_value"] = adj
        row["drifted"] = bool(adj < 0.05 and row["statistic"] > row["threshold"])
    return rows, quality


def performance_series(days: int = 14, seed: int = 3) -> list[dict[str, Any]]:
    """Daily AUC: delayed labels for all but the last 3 days, estimates (with an interval) for every day."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 11, 15, tzinfo=UTC)
    out = []
    for d in range(days):
        true_auc = 0.78 - (0.004 * max(0, d - 8) ** 1.3)
        est = true_auc + rng.normal(0, 0.004)
        out.append(
            {
                "window_start": (start + timedelta(days=d)).isoformat(),
                "metric": "auc",
                "delayed": None if d >= days - 3 else true_auc + rng.normal(0, 0.003),
                "estimated": est,
                "lo": est - 0.012,
                "hi": est + 0.012,
            }
        )
    return out


def screenshot(html_path: Path, png: Path) -> None:
    """Headless Chromium screenshot, all name resolution mapped to nothing (no network)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium is not on PATH: apt-get install -y chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--screenshot={png.resolve()}",
            "--window-size=1280,2000",
            html_path.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=".rayml/sample-report", help="folder for report.html and summary.json"
    )
    parser.add_argument(
        "--screenshot", default=None, help="also write a PNG screenshot here (needs chromium)"
    )
    args = parser.parse_args()
    reference, current = synthetic_windows()
    # Histograms first (the PSI stand-in reuses their bins), then the drift and quality rows.
    base = build_summary(
        reference, current, SCHEMA, [], [], names=("training (Nov 1-14)", "serving (Dec 1)")
    )
    drift, quality = drift_and_quality(reference, current, base["features"])
    summary = build_summary(
        reference,
        current,
        SCHEMA,
        drift,
        quality,
        performance_series(),
        names=("training (Nov 1-14)", "serving (Dec 1)"),
        title="recommender v7: monitoring report",
        notes=[
            "Synthetic sample: session_length shifted by +0.6 sd, device mix moved toward tablet."
        ],
    )
    out = Path(args.out)
    render_report(summary, out / "report.html", out / "summary.json")
    print(f"wrote {out / 'report.html'} and {out / 'summary.json'}")
    if args.screenshot:
        screenshot(out / "report.html", Path(args.screenshot))
        print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
