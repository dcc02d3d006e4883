//! The Grafana dashboard (`docs/dashboards/walrelay.json`) only queries metrics the relay
//! exports: every `walrelay_*` name in a panel query, annotation or variable (and in
//! `docs/monitoring.md` and `docs/alerts.yml`) must appear in a real relay's `/metrics`.
//! Per-downstream and per-slot series exist only while a downstream is connected or a slot
//! exists, so the `# HELP` / `# TYPE` lines count too (the relay writes them regardless);
//! `walrelay_failover_*` only with `--failover-standby`, which the relay here is given.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::Relay;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/dashboards/walrelay.json"
);
const MONITORING_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/monitoring.md");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alerts.yml");

/// Every `walrelay_[a-z_]+` name in `text`.
fn metric_names(text: &str, out: &mut BTreeSet<String>) {
    const PREFIX: &str = "walrelay_";
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        let preceded_by_word = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i + PREFIX.len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        // A name ending in '_' is a wildcard in prose ("walrelay_downstream_lag_*").
        if !preceded_by_word && len > 0 && !tail[..len].ends_with('_') {
            out.insert(format!("{PREFIX}{}", &tail[..len]));
        }
        rest = &tail[len..];
    }
}

/// Names in the `expr` of every panel target, panels nested in rows included.
fn target_metrics(panels: &[Value], out: &mut BTreeSet<String>) {
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                metric_names(expr, out);
            }
        }
        if let Some(nested) = p["panels"].as_array() {
            target_metrics(nested, out);
        }
    }
}

/// Names in every string of the document: descriptions, annotations, variable queries.
fn all_strings(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => metric_names(s, out),
        Value::Array(a) => a.iter().for_each(|v| all_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| all_strings(v, out)),
        _ => {}
    }
}

/// Names the exposition defines: sample lines and `# HELP` / `# TYPE` lines.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let name = match line
            .strip_prefix("# HELP ")
            .or(line.strip_prefix("# TYPE "))
        {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            names.insert(n.to_string());
        }
    }
    names
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");

    let mut in_targets = BTreeSet::new();
    target_metrics(panels, &mut in_targets);
    let mut anywhere = BTreeSet::new();
    all_strings(&dash, &mut anywhere);
    // The extraction works: the brief's core metrics are all charted.
    for core in [
        "walrelay_upstream_connected",
        "walrelay_timeline",
        "walrelay_upstream_lag_bytes",
        "walrelay_downstream_lag_bytes",
        "walrelay_downstream_lag_seconds",
        "walrelay_wal_received_bytes_total",
        "walrelay_wal_sent_bytes_total",
        "walrelay_downstreams",
        "walrelay_upstream_reconnects_total",
        // What fills the disk, and what runs where (issue 12).
        "walrelay_data_dir_free_bytes",
        "walrelay_data_dir_size_bytes",
        "walrelay_wal_stored_bytes",
        "walrelay_wal_segments",
        "walrelay_slot_retained_bytes",
        "walrelay_build_info",
    ] {
        assert!(in_targets.contains(core), "no panel queries {core}");
    }

    // With a failover standby named, so the walrelay_failover_* gauges are exported too.
    let relay = Relay::start_without_upstream(&["--failover-standby", "ha1"]);
    let metrics = relay.metrics();
    let exported = exported(&metrics);

    let missing: Vec<_> = anywhere.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics the relay does not export: {missing:?}\n\
         exported: {exported:?}\n--- /metrics ---\n{metrics}"
    );

    // The monitoring guide (metric table, PromQL, alert rules) names only real metrics too.
    let doc = std::fs::read_to_string(MONITORING_DOC).expect("read docs/monitoring.md");
    let mut in_doc = BTreeSet::new();
    metric_names(&doc, &mut in_doc);
    let missing: Vec<_> = in_doc.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "docs/monitoring.md names metrics the relay does not export: {missing:?}"
    );

    // So do the alert rules (scripts/check-dist checks them with promtool where it has one).
    let alerts = std::fs::read_to_string(ALERTS).expect("read docs/alerts.yml");
    let mut in_alerts = BTreeSet::new();
    metric_names(&alerts, &mut in_alerts);
    assert!(
        in_alerts.contains("walrelay_data_dir_free_bytes")
            && in_alerts.contains("walrelay_slot_retained_bytes"),
        "docs/alerts.yml has no disk or slot rule: {in_alerts:?}"
    );
    let missing: Vec<_> = in_alerts.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "docs/alerts.yml uses metrics the relay does not export: {missing:?}"
    );
}

#[test]
fn metric_name_extraction() {
    let mut n = BTreeSet::new();
    metric_names(
        r#"max by (a) (walrelay_downstream_lag_bytes{stage="replay"}) / rate(walrelay_wal_sent_bytes_total[1m]) pg_walrelay_x walrelay_ walrelay_lag_*"#,
        &mut n,
    );
    assert_eq!(
        n.into_iter().collect::<Vec<_>>(),
        [
            "walrelay_downstream_lag_bytes",
            "walrelay_wal_sent_bytes_total"
        ]
    );
    let e = exported(
        "# HELP walrelay_a x\n# TYPE walrelay_a gauge\n# TYPE walrelay_b counter\nwalrelay_c{l=\"v\"} 1\nwalrelay_d 2\n",
    );
    assert_eq!(
        e.into_iter().collect::<Vec<_>>(),
        ["walrelay_a", "walrelay_b", "walrelay_c", "walrelay_d"]
    );
}
