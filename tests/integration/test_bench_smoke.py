"""The benchmark harness runs end to end on tiny data (bench/run.py).

Only that it works: a results JSON with the ceiling, Python-limit and StreamFlow 1-step
rows and positive numbers. No assertion on speed anywhere (that is what docs/benchmarks.md
is for), and nothing that depends on how fast or loaded the machine is: every number
checked is either a count or a duration measured across broker round trips (stored to the
microsecond), and the timeout only guards against a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def test_harness_runs_on_tiny_data(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TMPDIR": str(tmp_path)}
    cmd = [
        sys.executable, "-m", "bench.run", "--events", "300",
        "--only", "ceiling,python-limit,sf-1step,sf-1step-eos-100ms",
        "--no-latency", "--no-step-only", "--no-docs", "--results-dir", str(tmp_path / "res"),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((tmp_path / "res" / "latest.json").read_text())
    assert len(list((tmp_path / "res").glob("2*.json"))) == 1
    rows = {r["name"]: r for r in results["rows"]}
    # the exactly-once row: its outputs are counted record by record (commit markers)
    assert set(rows) == {"ceiling", "python-limit", "sf-1step", "sf-1step-eos-100ms"}
    for name, row in rows.items():
        assert row["ok"], f"{name}: {row['error']}"
        assert row["events"] == 300
        assert row["drain"]["events_per_s"] > 0
        assert row["drain"]["seconds"] > 0
        assert row["drain"]["cpu_us_per_event"] >= 0  # 10 ms clock ticks: may round to 0
        assert row["rss_peak_mb"] > 0
        assert row["startup_s"] > 0
        # every event comes out at least once, counted from the end offsets of its topics
        assert row["produced_per_event"] >= 1
    assert rows["sf-1step"]["agents_on_path"] >= 1
    assert results["machine"]["nproc"] >= 1
    assert results["versions"]["librdkafka"]
    assert any(r["ratio"] == "sf-1step / ceiling" and r["value"] > 0 for r in results["ratios"])
