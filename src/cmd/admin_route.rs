//! `tickmesh admin weights`: sets the route weights on every region.
//!
//! Weights live in each node (see [`crate::route_http`]): the command asks `--url` for
//! `/v1/regions`, then sends the same complete weight set to every region listed, so all
//! route answers agree. It is idempotent: re-run it once a region that was down is back.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::time::Duration;

use crate::route::Weights;
use crate::route_http::http_addr;

/// Route subcommands of `tickmesh admin` (flattened into the admin command).
#[derive(Debug, clap::Subcommand)]
pub enum AdminRouteCmd {
    /// Set route weights (0-100) on every region, e.g. `us-east-1=90,eu-west-1=10`. A region
    /// not named goes back to 100. A region keeps that share of the clients nearest to it;
    /// the rest go to the next-nearest region.
    Weights {
        /// REGION=WEIGHT pairs, comma-separated.
        weights: String,
        /// HTTP URL of any region; every region its /v1/regions lists gets the weights.
        #[arg(long, env = "TICKMESH_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A token with role admin (`tickmesh token --roles admin`).
        #[arg(long, env = "TICKMESH_TOKEN")]
        token: String,
    },
}

/// Runs a route admin command.
pub fn run(cmd: AdminRouteCmd) -> anyhow::Result<()> {
    match cmd {
        AdminRouteCmd::Weights { weights, url, token } => weights_cmd(&weights, &url, &token),
    }
}

fn weights_cmd(list: &str, url: &str, token: &str) -> anyhow::Result<()> {
    let w = Weights::parse_list(list)?;
    let addr = http_addr(url).map_err(anyhow::Error::msg)?;
    let (status, body) = request(addr, "GET", "/v1/regions", None, None)
        .with_context(|| format!("asking {url}/v1/regions for the regions; check --url"))?;
    if status != 200 {
        bail!("{url}/v1/regions answered {status}: {body}");
    }
    let regions: Vec<serde_json::Value> =
        serde_json::from_str(&body).with_context(|| format!("{url}/v1/regions did not return a JSON array"))?;
    let known: Vec<String> = regions.iter().filter_map(|r| r["region"].as_str().map(String::from)).collect();
    w.validate(&known)?;
    let body = serde_json::json!({"weights": w}).to_string();
    let mut failed = Vec::new();
    for r in &regions {
        let name = r["region"].as_str().unwrap_or("?");
        let Some(http) = r["http_url"].as_str() else {
            failed.push(format!("{name}: /v1/regions gives no http_url"));
            continue;
        };
        let res = http_addr(http)
            .map_err(anyhow::Error::msg)
            .and_then(|a| Ok(request(a, "POST", "/v1/admin/weights", Some(token), Some(&body))?));
        match res {
            Ok((200, reply)) => println!("{name}: {reply}"),
            Ok((status, reply)) => failed.push(format!("{name}: {status} {reply}")),
            Err(e) => failed.push(format!("{name}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!(
            "weights set on {} of {} regions; failed:\n  {}\nfix the cause above (a region down: wait until it is back) and re-run the same command; it is idempotent",
            regions.len() - failed.len(),
            regions.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// One HTTP/1.1 request with `Connection: close` (5 s timeout); status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    crate::http_get::request(addr, method, path, bearer, json_body, Duration::from_secs(5))
}
