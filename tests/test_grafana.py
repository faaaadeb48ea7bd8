"""The Grafana dashboard under deploy/ (wired into compose.yaml) loads, and asks Prometheus only for metrics that
coe/metrics.py exports: a renamed metric fails here, not as an empty panel in production."""

from __future__ import annotations

import json
import re

import yaml

from coe import metrics
from tests.conftest import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
METRIC = re.compile(r"\bcoe_[a-z0-9_]+")
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""], "summary": ["_sum", "_count", ""]}


def exported_names() -> set[str]:
    """Every series name /metrics can show, labelled metrics with no sample yet included."""
    return {family.name + suffix for family in metrics.REGISTRY.collect() for suffix in SUFFIXES[family.type]}


def queried_names(dashboard: dict) -> set[str]:
    return {name for panel in dashboard["panels"] for target in panel["targets"] for name in METRIC.findall(target["expr"])}


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "coe.json").read_text())


def test_every_metric_the_dashboard_queries_is_exported():
    queried = queried_names(dashboard())
    assert len(queried) >= 10
    assert queried - exported_names() == set()


def test_the_check_catches_a_metric_that_does_not_exist():
    broken = {"panels": [{"targets": [{"expr": "sum(rate(coe_requests_total[5m])) / sum(coe_no_such_thing)"}]}]}
    assert queried_names(broken) - exported_names() == {"coe_no_such_thing"}


def test_the_dashboard_shows_what_the_issue_asks_for():
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for metric in ("coe_requests_total", "coe_route_decisions_total", "coe_routed_total", "coe_router_confidence_bucket",
                   "coe_fallback_total", "coe_stage_seconds_bucket", "coe_expert_tier", "coe_embed_cache_total",
                   "coe_feedback_score_sum"):
        assert metric in exprs


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard_compose_mounts():
    [source] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in [p, *p["targets"]]}
    assert uids == {source["uid"]}
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "coe.yaml").read_text())["providers"]
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in services["grafana"]["volumes"] if m.startswith("./")}
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_prometheus_scrapes_every_api_replica():
    [job] = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    [dns] = job["dns_sd_configs"]
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert job["metrics_path"] == "/metrics" and dns["names"] == ["api"] and dns["port"] == 8000
    assert "8000:8000" in services["api"]["ports"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
