//! The trading tier's in-process API on a running node: subscriptions see journaled
//! records in order, published order updates are sequenced like any record, and a restart
//! continues the orders source's numbering.

use std::time::Duration;
use tickmesh::config::NodeConfig;
use tickmesh::node::Node;
use tickmesh::tiers::trading::{OrderStatus, OrderUpdateMsg, TapFilter};
use tickmesh_codec::{Body, Side, SourceId};

fn config(dir: &std::path::Path) -> NodeConfig {
    let key = dir.join("jwt.key");
    std::fs::write(&key, "test-secret").unwrap();
    toml::from_str(&format!(
        "region = \"us-east-1\"\nstate_dir = {:?}\n[gateway]\nlisten = \"127.0.0.1:0\"\ncores = [0]\n\
         [auth]\nhs256_key_files = [{:?}]\n[[feeds]]\nkind = \"synthetic\"\nsource = \"SYN.USE1\"\nrate = 500\n\
         [trading]\nsource = \"ORD.USE1\"\n",
        dir.join("state"),
        key
    ))
    .unwrap()
}

fn update(id: &str, status: OrderStatus, filled: &str) -> OrderUpdateMsg {
    OrderUpdateMsg {
        order_id: id.into(),
        user: "alice".into(),
        symbol: "AAPL".into(),
        status,
        side: Side::Sell,
        px: "10.25".parse().unwrap(),
        qty: "4".parse().unwrap(),
        filled_qty: filled.parse().unwrap(),
        ts_event: 0,
    }
}

#[test]
fn order_updates_are_journaled_in_sequence_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let orders = SourceId::new("ORD.USE1").unwrap();
    let seqs = |node: &Node, n: usize, publish: &[OrderUpdateMsg]| -> Vec<(u64, String)> {
        let sub = node.trading().subscribe(TapFilter { sources: vec![orders], ..Default::default() }, 64);
        let market = node.trading().subscribe(TapFilter::default(), 10_000);
        for u in publish {
            node.trading().publish(u).unwrap();
        }
        let mut out = Vec::new();
        while out.len() < n {
            let rec = sub.records.recv_timeout(Duration::from_secs(20)).expect("order update journaled");
            let Body::OrderUpdate(u) = rec.body else { panic!("filter let through {rec:?}") };
            let id = String::from_utf8_lossy(&u.order_id).trim_end_matches('\0').to_owned();
            out.push((rec.header.seq.0, id));
        }
        // The unfiltered subscription sees market data too, in seq order per source.
        let mut last = std::collections::BTreeMap::new();
        for _ in 0..20 {
            let rec = market.records.recv_timeout(Duration::from_secs(20)).expect("market data flows");
            let prev = last.insert(rec.header.src, rec.header.seq.0);
            assert!(prev.is_none_or(|p| p < rec.header.seq.0), "seq order per source");
        }
        out
    };

    let node = Node::start(config(dir.path()), tickmesh::metrics::Metrics::install()).unwrap();
    let first =
        seqs(&node, 2, &[update("S-1", OrderStatus::New, "0"), update("S-1", OrderStatus::PartiallyFilled, "1")]);
    assert_eq!(first, vec![(1, "S-1".to_owned()), (2, "S-1".to_owned())]);
    let bad = update("S-2", OrderStatus::Filled, "3");
    assert!(node.trading().publish(&bad).unwrap_err().to_string().contains("status filled needs filled_qty"));
    node.shutdown();

    let node = Node::start(config(dir.path()), tickmesh::metrics::Metrics::install()).unwrap();
    let again = seqs(&node, 1, &[update("S-1", OrderStatus::Filled, "4")]);
    assert_eq!(again, vec![(3, "S-1".to_owned())], "the orders source continues after a restart");
    node.shutdown();
}
