//! A trading service inside a tickmesh node, through the trading tier's in-process API.
//!
//! It runs one region node (synthetic market data, the trading tier on), subscribes to
//! trades, and for one user plays a toy strategy: after every tenth AAPL trade it places a
//! buy order at that trade's price and fills it over the next trades. Each step is an order
//! update published on the region's orders source: journaled, sequenced and delivered on the
//! private `orders` channel to that user's connections in this region only.
//!
//! ```text
//! cargo run --example trading_service -- [SECONDS]
//! ```
//! It prints the gateway URL and a token for the user, so you can watch the updates with
//! any WebSocket client: subscribe to `{"op":"subscribe","id":1,"channels":["orders"],"symbols":"*"}`.

use std::time::{Duration, Instant};
use tickmesh::config::NodeConfig;
use tickmesh::node::Node;
use tickmesh::tiers::trading::{OrderStatus, OrderUpdateMsg, TapFilter};
use tickmesh_codec::{Body, Qty, Side};

const USER: &str = "demo-trader";

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, "example-secret-please-change")?;
    let cfg: NodeConfig = toml::from_str(&format!(
        r#"
region = "us-east-1"
state_dir = {state:?}
[gateway]
listen = "127.0.0.1:0"
cores = [0]
[auth]
hs256_key_files = [{key:?}]
[[feeds]]
kind = "synthetic"
source = "SYN.USE1"
rate = 2000
[trading]
source = "ORD.USE1"
"#,
        state = dir.path().join("state"),
        key = key,
    ))?;
    let node = Node::start(cfg, tickmesh::metrics::Metrics::install())?;
    let addr = node.gateway_addr().ok_or_else(|| anyhow::anyhow!("the node has no gateway"))?;
    let claims = tickmesh_gateway::auth::Claims {
        sub: USER.into(),
        exp: tickmesh_codec::now_ns() / 1_000_000_000 + 3600,
        home: Some("us-east-1".into()),
        channels: tickmesh_gateway::auth::Grant::List(vec!["orders".into(), "trades".into()]),
        symbols: tickmesh_gateway::auth::Grant::All,
        roles: vec![],
    };
    let token = tickmesh_gateway::auth::mint_hs256(b"example-secret-please-change", &claims)?;
    println!("gateway: ws://{addr}/v1/ws?token={token}");

    let tier = node.trading();
    let sub = tier.subscribe(TapFilter { symbols: vec!["AAPL".into()], ..Default::default() }, 4096);
    let end = Instant::now() + Duration::from_secs(seconds);
    let (mut trades, mut orders) = (0u64, 0u64);
    let mut working: Option<OrderUpdateMsg> = None;
    while Instant::now() < end {
        let Ok(rec) = sub.records.recv_timeout(Duration::from_millis(200)) else { continue };
        let Body::Trade(t) = rec.body else { continue };
        trades += 1;
        if let Some(mut o) = working.take() {
            // Fill a quarter of the order per trade, at most the trade's size.
            let step = Qty((o.qty.raw() / 4).min(t.qty.raw()).max(1));
            o.filled_qty = Qty((o.filled_qty.raw() + step.raw()).min(o.qty.raw()));
            o.status = if o.filled_qty == o.qty { OrderStatus::Filled } else { OrderStatus::PartiallyFilled };
            tier.publish(&o)?;
            println!("{} {:?} filled {} of {}", o.order_id, o.status, o.filled_qty, o.qty);
            if o.status != OrderStatus::Filled {
                working = Some(o);
            }
        } else if trades % 10 == 0 {
            orders += 1;
            let o = OrderUpdateMsg {
                order_id: format!("PT-{orders}"),
                user: USER.into(),
                symbol: "AAPL".into(),
                status: OrderStatus::New,
                side: Side::Buy,
                px: t.px,
                qty: "100".parse()?,
                filled_qty: Qty::ZERO,
                ts_event: 0,
            };
            tier.publish(&o)?;
            println!("{} new: buy {} AAPL at {}", o.order_id, o.qty, o.px);
            working = Some(o);
        }
    }
    println!("{trades} AAPL trades seen, {orders} orders placed, {} records lost to a full queue", sub.lagged());
    node.shutdown();
    Ok(())
}
