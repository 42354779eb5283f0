"""The Grafana dashboard and Prometheus config under deploy/: every metric they use exists, and the config is valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.runtime import metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "inferq.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
METRIC = re.compile(r"\b(inferq_[a-z0-9_]+)\b")
# Words of PromQL that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {"sum", "max", "by", "rate", "increase", "histogram_quantile", "count", "avg", "without"}
BUILTIN = {"up"}  # Prometheus's own series


def exported_names() -> set[str]:
    """Every series name a scrape of the code's registry can hold (counters' _total, histograms' parts)."""
    collector = metrics.StackCollector(redis_url="redis://127.0.0.1:1/0", lanes=["inference"], sessions=_no_db)
    text = metrics.scrape(collector).decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        suffixes = {"counter": ["", "_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(kind, [""])
        names |= {name.removesuffix("_total") + s if kind == "counter" else name + s for s in suffixes}
    return names


def _no_db() -> Any:
    raise RuntimeError("no database in this test")


def exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_every_dashboard_metric_exists_in_the_code() -> None:
    """Each inferq_* name in the dashboard's PromQL is a series the code exports, and no other metric is used."""
    names = exported_names()
    used = {m for e in exprs() for m in METRIC.findall(e)}
    assert used, "the dashboard uses no inferq metric"
    assert sorted(used - names) == []
    for expr in exprs():  # identifiers outside label matchers and `by (...)` lists are functions or known series
        bare = re.sub(r"\{[^}]*\}|by \([^)]*\)|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
        words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", bare)) - PROMQL_WORDS - BUILTIN
        assert {w for w in words if not w.startswith("inferq_")} == set(), expr


def test_dashboard_covers_what_the_issue_asks() -> None:
    """Jobs/s by kind, latency quantiles, batch size and wait, depth per lane, errors, rejections, webhooks, workers."""
    text = " ".join(exprs())
    for needed in (
        "inferq_jobs_submitted_total",
        "histogram_quantile(0.99, sum by (le, kind) (rate(inferq_job_duration_seconds_bucket",
        "histogram_quantile(0.95",
        "inferq_batch_size_sum",
        "inferq_batch_wait_seconds_bucket",
        "inferq_queue_depth",
        "inferq_jobs_rejected_total",
        'outcome="failed"',
        "inferq_webhook_deliveries_total",
        'up{job="inferq-workers"}',
    ):
        assert needed in text, needed


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    """Every panel and target names the datasource uid that Grafana's provisioning creates."""
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


def test_prometheus_scrapes_the_api_workers_and_flower() -> None:
    """The scrape config targets the API, the worker services on the worker metrics port, and Flower."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert jobs["inferq-api"]["static_configs"][0]["targets"] == ["api:8000"]
    workers = jobs["inferq-workers"]["dns_sd_configs"][0]
    assert workers["port"] == 9808 and set(workers["names"]) == {"worker-cpu", "worker-gpu0"}
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]


def test_promtool_accepts_the_config() -> None:
    """`promtool check config` passes (Debian's prometheus package provides promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); the config was not checked by it")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
