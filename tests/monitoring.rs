//! deploy/monitoring stays true to the binary:
//! * every metric the alert rules and the Grafana dashboard name is exported by a running
//!   node's `/metrics` (a renamed metric breaks this test, not a silent alert);
//! * `promtool check rules` and `promtool test rules` pass (as scripts/deploy-check.sh runs
//!   them in CI).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::Demo;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

/// Every `tickmesh_...` name in `text`.
fn tickmesh_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tickmesh_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Skip names inside longer identifiers (none expected, but be exact).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Metric names of a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn used_names() -> (BTreeSet<String>, String, String) {
    let rules = std::fs::read_to_string(monitoring().join("alerts.yml")).expect("deploy/monitoring/alerts.yml");
    let grafana = std::fs::read_to_string(monitoring().join("grafana/tickmesh.json"))
        .expect("deploy/monitoring/grafana/tickmesh.json");
    let mut names = tickmesh_names(&rules);
    names.extend(tickmesh_names(&grafana));
    (names, rules, grafana)
}

#[test]
fn rules_and_grafana_name_only_metrics_a_node_exports() {
    let (names, rules, grafana) = used_names();
    assert!(names.len() >= 10, "too few metric names found; is the parser broken? {names:?}");
    serde_json::from_str::<serde_json::Value>(&grafana).expect("the Grafana dashboard is valid JSON");
    // The only series not from /metrics: Prometheus's own `up`.
    assert!(rules.contains("up{namespace=\"tickmesh\"}"));

    let demo = Demo::start(&[]);
    // A client connection, so the per-core connection gauge exists.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _client = rt.block_on(support::connect(&demo.regions[0].ws_url, &demo.user_token, ""));
    let addr: std::net::SocketAddr = demo.regions[0].http_url.trim_start_matches("http://").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let (code, body) = tickmesh::http_get::get(addr, "/metrics", Duration::from_secs(5)).expect("GET /metrics");
        assert_eq!(code, 200);
        let have = exported(&body);
        let missing: Vec<&String> = names.iter().filter(|n| !have.contains(*n)).collect();
        if missing.is_empty() {
            // Every series carries the region label the rules group by.
            let line = body.lines().find(|l| l.starts_with("tickmesh_node_ready")).expect("tickmesh_node_ready");
            assert!(line.contains(&format!("region=\"{}\"", demo.regions[0].region)), "{line}");
            break missing.len();
        }
        assert!(
            Instant::now() < deadline,
            "deploy/monitoring names metrics that {} does not export: {missing:?}",
            demo.regions[0].region
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(missing, 0);
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: run scripts/install-deps.sh (or apt-get install prometheus)"
    );
    let check =
        Command::new("promtool").args(["check", "rules", "alerts.yml"]).current_dir(monitoring()).output().unwrap();
    assert!(check.status.success(), "promtool check rules:\n{}", String::from_utf8_lossy(&check.stdout));
    let tests: Vec<PathBuf> = std::fs::read_dir(monitoring().join("tests"))
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(!tests.is_empty(), "no deploy/monitoring/tests/*.yml");
    let run = Command::new("promtool").args(["test", "rules"]).args(&tests).output().unwrap();
    assert!(
        run.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // Every alert of the rules is exercised by a unit test.
    let rules = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let tested: String = tests.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tested.contains(&format!("alertname: {alert}")), "alert {alert} has no promtool unit test");
    }
}

#[test]
fn name_parser_finds_whole_names() {
    let n = tickmesh_names("rate(tickmesh_a_total[5m]) + x_tickmesh_b + tickmesh_c_bucket{le=\"1\"}");
    assert_eq!(n.into_iter().collect::<Vec<_>>(), ["tickmesh_a_total", "tickmesh_c_bucket"]);
    let e = exported("# TYPE a counter\na_total{x=\"1\"} 1\nb 2\n");
    assert_eq!(e.into_iter().collect::<Vec<_>>(), ["a_total", "b"]);
}
