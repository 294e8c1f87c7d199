"""The Grafana dashboards the monitoring role ships (roles/monitoring/files/dashboards/*.json): their shape, their
template variables, their layout, and that every query names only metrics that exist.

`panel_queries(path)` is the helper tests/e2e imports to run each panel's queries against a live Prometheus."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "roles" / "monitoring" / "files" / "dashboards"

# file -> (uid, title, the metric the `instance` variable lists values of, or None for no such variable)
EXPECTED = {
    "gpu.json": ("gpuforge-gpu", "gpuforge / GPUs", "gpuforge_gpu_expected_count"),
    "fabric.json": ("gpuforge-fabric", "gpuforge / Fabric", "gpuforge_ib_port_expected_rate_gbps"),
    "inference.json": ("gpuforge-inference", "gpuforge / Inference", None),
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {"$instance", "$__rate_interval", "${datasource}"}

# Every metric a dashboard may query. gpuforge_*: gpuforge's textfile collector (job="node").
GPUFORGE_METRICS = {
    "gpuforge_gpu_expected_count", "gpuforge_gpu_nvidia_smi_up", "gpuforge_gpu_count", "gpuforge_gpu_driver_matches",
    "gpuforge_gpu_info", "gpuforge_gpu_persistence_mode", "gpuforge_gpu_remapped_rows_pending",
    "gpuforge_gpu_remapped_rows_failure", "gpuforge_gpu_remapped_rows", "gpuforge_gpu_retired_pages_pending",
    "gpuforge_gpu_ecc_errors", "gpuforge_gpu_temperature_celsius", "gpuforge_gpu_power_draw_watts",
    "gpuforge_gpu_pcie_link_gen", "gpuforge_gpu_pcie_link_width", "gpuforge_gpu_clock_event_active",
    "gpuforge_gpu_xid_errors", "gpuforge_ib_port_up", "gpuforge_ib_port_rate_gbps",
    "gpuforge_ib_port_expected_rate_gbps", "gpuforge_ib_port_errors_total", "gpuforge_nvswitch_count",
    "gpuforge_model_disk_avail_bytes", "gpuforge_model_disk_size_bytes", "gpuforge_collector_success",
    "gpuforge_collector_duration_seconds", "gpuforge_collector_last_run_timestamp_seconds",
}
# node_exporter's own (job="node"); node_infiniband_* only where the host has InfiniBand (collector/infiniband).
NODE_METRICS = {
    "node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
    "node_network_receive_bytes_total", "node_network_transmit_bytes_total",
    "node_infiniband_port_data_received_bytes_total", "node_infiniband_port_data_transmitted_bytes_total",
    "node_infiniband_state_id", "node_infiniband_physical_state_id", "node_infiniband_rate_bytes_per_second",
}
# vLLM's PrometheusStatLogger (vllm/v1/metrics/loggers.py, job="vllm"). Counters are declared without "_total"
# ("vllm:prompt_tokens") and prometheus_client exposes them with it; histograms as _bucket/_sum/_count.
_VLLM_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds")
VLLM_METRICS = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    *(f"{h}{suffix}" for h in _VLLM_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")),
}
# HAProxy's built-in exporter (addons/promex, job="haproxy").
HAPROXY_METRICS = {
    "haproxy_server_status", "haproxy_backend_http_responses_total", "haproxy_frontend_http_requests_total",
    "haproxy_server_current_sessions", "haproxy_backend_response_time_average_seconds",
}
ALLOWED_METRICS = GPUFORGE_METRICS | NODE_METRICS | VLLM_METRICS | HAPROXY_METRICS | {"up"}
METRIC_PREFIXES = ("gpuforge_", "node_", "vllm:", "haproxy_")
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right",
                   "offset", "inf", "nan"}

_DOLLAR = re.compile(r"\$\{[^}]*\}|\$\w*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_IDENT = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too; row panels themselves are left out."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def panel_queries(path) -> list[tuple[str, str]]:
    """[(panel title, expr)] for every target of every panel in the dashboard at `path`, with the dashboard's
    variables filled in the way Grafana would for "All" over a 1m scrape: $instance -> .*, $__rate_interval -> 1m.
    Each expr is then a plain PromQL query for Prometheus's /api/v1/query."""
    return [(p["title"], t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*"))
            for p in panels(load(path)) for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expr selects: the identifiers left once strings, label matchers, range and
    subquery windows and grouping label lists are taken out, that are neither keywords, function calls nor
    aggregations."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    names = set()
    for m in _IDENT.finditer(text):
        # a function call, or an aggregation written `sum by (...) (...)`
        if re.match(r"\s*(\(|by\b|without\b)", text[m.end():]) or m.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def test_metric_names_parser():
    expr = ('histogram_quantile(0.95, sum by (le, group) (rate(vllm:e2e_request_latency_seconds_bucket'
            '{job="vllm",node_x="gpuforge_y"}[$__rate_interval]))) / on(instance) group_left() up '
            'or count(gpuforge_ib_port_up{instance=~"$instance"} == 0) or vector(0)')
    assert metric_names(expr) == {"vllm:e2e_request_latency_seconds_bucket", "up", "gpuforge_ib_port_up"}


def test_every_dashboard_is_there():
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(EXPECTED)


@pytest.fixture(params=sorted(EXPECTED))
def dash(request):
    return request.param, load(DASHBOARDS / request.param)


def test_identity(dash):
    name, d = dash
    uid, title, _ = EXPECTED[name]
    assert (d["uid"], d["title"], d["schemaVersion"]) == (uid, title, 39)
    assert d.get("id") is None, "a provisioned dashboard carries no database id"


def test_template_variables(dash):
    name, d = dash
    variables = {v["name"]: v for v in d["templating"]["list"]}
    instance_metric = EXPECTED[name][2]
    assert set(variables) == {"datasource"} | ({"instance"} if instance_metric else set())
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    if instance_metric:
        inst = variables["instance"]
        query = inst["query"]["query"] if isinstance(inst["query"], dict) else inst["query"]
        assert inst["type"] == "query"
        assert query == f"label_values({instance_metric}, instance)"
        assert inst["datasource"] == DATASOURCE
        assert (inst["includeAll"], inst["multi"], inst["allValue"]) == (True, True, ".*")


def test_panels(dash):
    _, d = dash
    ps = panels(d)
    assert 6 <= len(ps) <= 10
    assert len({p["id"] for p in ps}) == len(ps), "panel ids must be unique"
    for p in ps:
        assert p["type"] in ("timeseries", "stat"), p.get("title")
        assert p.get("title", "").strip(), f"panel {p.get('id')} has no title"
        assert p.get("datasource") == DATASOURCE, p["title"]
        assert p.get("targets"), f"{p['title']}: no targets"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t.get("datasource") == DATASOURCE, p["title"]
            assert t.get("expr", "").strip(), f"{p['title']}: target {t.get('refId')} has no expr"
            assert isinstance(t.get("legendFormat"), str) and t["legendFormat"].strip(), p["title"]


def test_only_known_variables(dash):
    """No `$` token but the three the dashboards are written with, anywhere in the dashboard (exprs, legends,
    titles, datasource references): any other is a Grafana macro or variable the dashboard does not define."""
    _, d = dash
    tokens = set(_DOLLAR.findall(json.dumps(d)))
    assert tokens <= VARIABLES, tokens - VARIABLES
    for p in panels(d):
        for t in p["targets"]:
            assert set(_DOLLAR.findall(t["expr"])) <= {"$instance", "$__rate_interval"}, t["expr"]


def test_windows_use_rate_interval(dash):
    """rate()/increase() windows are $__rate_interval, never a hard-coded duration."""
    _, d = dash
    for p in panels(d):
        for t in p["targets"]:
            for window in re.findall(r"\[([^\]]*)\]", t["expr"]):
                assert window == "$__rate_interval", f"{p['title']}: [{window}]"


def test_instance_filter(dash):
    """Where the dashboard has an `instance` variable, every node_exporter selector filters on it."""
    name, d = dash
    if not EXPECTED[name][2]:
        return
    for p in panels(d):
        for t in p["targets"]:
            for m in re.finditer(r"\b(gpuforge_\w+|node_\w+)(\{[^}]*\})?", t["expr"]):
                assert m.group(2) and 'instance=~"$instance"' in m.group(2), f"{p['title']}: {m.group()}"


def test_grid_does_not_overlap(dash):
    _, d = dash
    grid = [(p["title"], p["gridPos"]) for p in panels(d)]
    for title, g in grid:
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in "xywh"), title
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, title
    for i, (ta, a) in enumerate(grid):
        for tb, b in grid[i + 1:]:
            assert not overlaps(a, b), f"{ta!r} overlaps {tb!r}"


def test_only_known_metrics(dash):
    _, d = dash
    for p in panels(d):
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names, f"{p['title']}: no metric in {t['expr']}"
            looks_like_metric = {n for n in names if n.startswith(METRIC_PREFIXES) or n == "up"}
            assert looks_like_metric <= ALLOWED_METRICS, f"{p['title']}: {looks_like_metric - ALLOWED_METRICS}"
            assert names <= ALLOWED_METRICS, f"{p['title']}: not a known metric: {names - ALLOWED_METRICS}"


def test_panel_queries(dash):
    name, d = dash
    queries = panel_queries(DASHBOARDS / name)
    assert len(queries) == sum(len(p["targets"]) for p in panels(d))
    for title, expr in queries:
        assert title and "$" not in expr, (title, expr)
