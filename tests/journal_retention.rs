//! Journal retention runs in a live node: with `retain_bytes` set, old segments are deleted
//! while records flow (the journal stays bounded), and a client resuming from a point the
//! journal no longer holds gets a `gap` with reason `journal_retention`, then every record
//! after it.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{next_msg, request, Demo, Msg};

const SEGMENT: u64 = 64 * 1024;

fn source_bytes(dir: &Path) -> (u64, usize) {
    let mut total = 0;
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            total += e.metadata().unwrap().len();
            files += 1;
        }
    }
    (total, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_and_resume_reports_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Demo::start_in(tmp.path(), &["--regions", "us-east-1", "--rate", "3000"], None);
    let url = demo.regions[0].ws_url.clone();
    demo.kill_region_and_wait("us-east-1");
    // The same region with small segments and a retention of three of them, checked every second.
    let dir = tmp.path().join("us-east-1");
    let mut cfg: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("node.toml")).unwrap()).unwrap();
    let journal = cfg.get_mut("journal").and_then(|j| j.as_table_mut()).expect("[journal] in node.toml");
    journal.insert("segment_bytes".into(), toml::Value::Integer(SEGMENT as i64));
    journal.insert("retain_bytes".into(), toml::Value::Integer(3 * SEGMENT as i64));
    journal.insert("retention_every_secs".into(), toml::Value::Integer(1));
    std::fs::write(dir.join("node.toml"), toml::to_string(&cfg).unwrap()).unwrap();
    let node = support::NodeProcess::start(&dir);

    // Wait until retention has deleted something: the first segment of the source is gone.
    let src_dir = dir.join("journal").join("SYN.USE1");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut deleted = false;
    while Instant::now() < deadline {
        if node.log_text().contains("journal retention deleted old segments") {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(deleted, "no retention within 90 s; node log:\n{}", node.log_text());
    // Bounded: what is retained plus the active segment (and its index).
    let (bytes, _) = source_bytes(&src_dir);
    assert!(bytes <= 5 * SEGMENT, "journal of SYN.USE1 holds {bytes} bytes, above 3 segments + the active one");

    // A client that last saw seq 1 asks to resume: the region says what it no longer holds.
    let (mut ws, _) = support::connect(&url, &demo.user_token, "").await;
    let r = request(
        &mut ws,
        json!({"op":"subscribe","id":1,"channels":["trades","quotes"],"symbols":"*","resume":{"SYN.USE1": 1}}),
    )
    .await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let mut gap: Option<Value> = None;
    let mut first_after: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_after.is_none() && Instant::now() < deadline {
        match next_msg(&mut ws, Duration::from_secs(5)).await {
            Some(Msg::Json(v)) if v["type"] == "gap" => gap = Some(v),
            Some(Msg::Json(v)) if v["src"] == "SYN.USE1" && v["seq"].is_u64() && v["type"] != "book_snapshot" => {
                first_after = v["seq"].as_u64()
            }
            Some(_) => {}
            None => break,
        }
    }
    let gap = gap.expect("a gap for what retention deleted");
    assert_eq!(gap["reason"], "journal_retention", "{gap}");
    assert_eq!(gap["from"], 2, "{gap}");
    let to = gap["to"].as_u64().unwrap();
    assert!(to > 2, "{gap}");
    let first = first_after.expect("records after the gap");
    assert!(first > to, "records resume after the gap: first {first}, gap to {to}");
}
