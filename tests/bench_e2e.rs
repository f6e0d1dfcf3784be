//! `tickmesh bench e2e` end to end: the report, the JSON result and the plot are written,
//! every hop has samples, and a bad budgets file is refused with the fix.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "e2e"])
        .args(args)
        .output()
        .expect("run tickmesh bench e2e")
}

#[test]
fn writes_report_result_and_plot_with_every_hop_measured() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = bench(&[
        "--regions",
        "2",
        "--rate",
        "2000",
        "--clients",
        "2",
        "--duration",
        "3",
        "--wan",
        "off",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("| journal |"), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in ["| decode |", "| journal |", "| mesh (net of link delay) |", "| gateway |", "| client, same region |"] {
        assert!(report.contains(row), "{row} missing:\n{report}");
    }
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap();
    let rows = result["rows"].as_array().unwrap();
    for r in rows {
        assert!(r["count"].as_u64().unwrap() > 0, "no samples: {r}");
        if r["budget"].is_string() {
            let v = r["verdicts"].as_array().unwrap();
            assert_eq!(v.len(), 3, "{r}");
            assert!(v.iter().all(|x| x == "PASS" || x == "OVER"), "{r}");
        }
    }
    let h = result["histograms"]["journal"].as_str().unwrap();
    assert_eq!(
        tickmesh_gateway::hops::decode_histogram(h).unwrap().len(),
        rows.iter().find(|r| r["name"] == "journal").unwrap()["count"].as_u64().unwrap()
    );
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("journal"), "plot is not an SVG with the hops");
}

#[test]
fn a_bad_budgets_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("budgets.toml");
    std::fs::write(&b, "[hops.decode]\np50_us = 1\np99_us = 2\np999_us = 3\nwhy = \"x\"\n").unwrap();
    let o = bench(&["--budgets", b.to_str().unwrap(), "--duration", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("[hops.journal] is missing"), "{err}");
    let o = bench(&["--regions", "9"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--regions 9: use 1 to 6"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
