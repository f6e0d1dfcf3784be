//! `tickmesh admin drain REGION` / `undrain REGION` / `forget-user ID`: the admin HTTP API
//! from the shell.
//!
//! Where to send it: `--url` (any region's HTTP URL; it passes the request on to the named
//! region), else the region's own `http_url` from `--config NODE.toml` or from a demo's
//! `--state-dir` (`DIR/REGION/node.toml`). The token: `--token`, else `$TICKMESH_ADMIN_TOKEN`,
//! else (with `--state-dir`) a short-lived admin token minted with the demo's key.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::NodeConfig;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop taking connections, move clients away.
    Drain,
    /// Take connections again.
    Undrain,
}

/// Options of `tickmesh admin`.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// Drain or undrain.
    pub action: Action,
    /// The region to act on.
    pub region: String,
    /// Any region's HTTP URL.
    pub url: Option<String>,
    /// A node configuration naming the regions.
    pub config: Option<PathBuf>,
    /// A demo's state directory.
    pub state_dir: Option<PathBuf>,
    /// Admin token.
    pub token: Option<String>,
    /// Grace period before 1012 (drain only).
    pub grace_ms: Option<u64>,
}

fn regions_of(cfg: &NodeConfig, region: &str, from: &std::path::Path) -> anyhow::Result<String> {
    match cfg.regions.iter().find(|r| r.region == region) {
        Some(r) => Ok(r.http_url.clone()),
        None => {
            let known: Vec<&str> = cfg.regions.iter().map(|r| r.region.as_str()).collect();
            bail!("region '{region}' is not in {}; use one of {}", from.display(), known.join(", "))
        }
    }
}

/// Resolves the URL and the token, sends the request, prints the answer.
pub fn run(o: AdminOptions) -> anyhow::Result<()> {
    let base = if let Some(u) = &o.url {
        u.trim_end_matches('/').to_owned()
    } else if let Some(c) = &o.config {
        regions_of(&NodeConfig::load(c)?, &o.region, c)?
    } else if let Some(d) = &o.state_dir {
        let f = d.join(&o.region).join("node.toml");
        if !f.exists() {
            bail!(
                "{} does not exist; is {} a demo state directory holding region {}?",
                f.display(),
                d.display(),
                o.region
            );
        }
        regions_of(&NodeConfig::load(&f)?, &o.region, &f)?
    } else {
        bail!("where is the region? give --url http://HOST:PORT, --config NODE.toml or --state-dir DEMO_STATE_DIR");
    };
    let token = match (&o.token, std::env::var("TICKMESH_ADMIN_TOKEN").ok(), &o.state_dir) {
        (Some(t), _, _) => t.clone(),
        (None, Some(t), _) => t,
        (None, None, Some(d)) => mint_admin(&d.join("pki").join("jwt-hs256.key"))?,
        (None, None, None) => bail!("no admin token; give --token JWT or set TICKMESH_ADMIN_TOKEN (mint one with `tickmesh token --roles admin`)"),
    };
    let (path, body) = match o.action {
        Action::Drain => {
            let mut b = serde_json::json!({"region": o.region});
            if let Some(g) = o.grace_ms {
                b["grace_ms"] = g.into();
            }
            ("/v1/admin/drain", b)
        }
        Action::Undrain => ("/v1/admin/undrain", serde_json::json!({"region": o.region})),
    };
    let url = format!("{base}{path}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) = rt
        .block_on(crate::admin_api::http_request(
            "POST",
            &url,
            Some(&token),
            Some(&body.to_string()),
            &[],
            Duration::from_secs(10),
        ))
        .map_err(|e| anyhow::anyhow!("POST {url}: {e}"))?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        bail!("POST {url} answered {status}: {msg}");
    }
    println!("{}", text.trim());
    Ok(())
}

fn mint_admin(key: &std::path::Path) -> anyhow::Result<String> {
    let secret = std::fs::read(key).with_context(|| format!("reading the demo's token key {}", key.display()))?;
    let secret = String::from_utf8_lossy(&secret).trim_end().as_bytes().to_vec();
    let now = tickmesh_codec::now_ns() / 1_000_000_000;
    let claims = tickmesh_gateway::auth::Claims {
        sub: "tickmesh-admin-cli".into(),
        exp: now + 300,
        home: None,
        channels: tickmesh_gateway::auth::Grant::List(vec![]),
        symbols: tickmesh_gateway::auth::Grant::List(vec![]),
        roles: vec!["admin".into()],
    };
    Ok(tickmesh_gateway::auth::mint_hs256(&secret, &claims)?)
}

/// Options of `tickmesh admin forget-user`.
#[derive(Debug, Clone)]
pub struct ForgetOptions {
    /// The user id (the token subject).
    pub user: String,
    /// The user's home region: where to send the request (with `--config` / `--state-dir`),
    /// or where the node at `--url` passes it on to over the mesh.
    pub home: Option<String>,
    /// Any region's HTTP URL.
    pub url: Option<String>,
    /// A node configuration naming the regions.
    pub config: Option<PathBuf>,
    /// A demo's state directory.
    pub state_dir: Option<PathBuf>,
    /// Admin token.
    pub token: Option<String>,
    /// Print the node's JSON report instead of the summary.
    pub json: bool,
}

/// `tickmesh admin forget-user ID`: erases the user's personal data in its home region and
/// every cached view elsewhere (`POST /v1/admin/users/{id}/forget`), prints what each
/// region erased, and fails (exit 1) when a region was not reached: running it again is
/// safe and finishes the job.
pub fn forget_user(o: ForgetOptions) -> anyhow::Result<()> {
    let base = match (&o.url, &o.home) {
        (Some(u), _) => u.trim_end_matches('/').to_owned(),
        (None, Some(home)) => {
            if let Some(c) = &o.config {
                regions_of(&NodeConfig::load(c)?, home, c)?
            } else if let Some(d) = &o.state_dir {
                let f = d.join(home).join("node.toml");
                if !f.exists() {
                    bail!("{} does not exist; is {} a demo state directory holding region {home}?", f.display(), d.display());
                }
                regions_of(&NodeConfig::load(&f)?, home, &f)?
            } else {
                bail!("where is the region? give --url http://HOST:PORT, --config NODE.toml or --state-dir DEMO_STATE_DIR")
            }
        }
        (None, None) => bail!(
            "which region is the user's home? give --home REGION (with --config or --state-dir), or --url of the home region's node"
        ),
    };
    let token = match (&o.token, std::env::var("TICKMESH_ADMIN_TOKEN").ok(), &o.state_dir) {
        (Some(t), _, _) => t.clone(),
        (None, Some(t), _) => t,
        (None, None, Some(d)) => mint_admin(&d.join("pki").join("jwt-hs256.key"))?,
        (None, None, None) => bail!("no admin token; give --token JWT or set TICKMESH_ADMIN_TOKEN (mint one with `tickmesh token --roles admin`)"),
    };
    if o.user.is_empty() || !o.user.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'%') {
        bail!("user id {:?} must be printable ASCII without '/', '?' or '%'", o.user);
    }
    let body = match &o.home {
        Some(h) => serde_json::json!({ "home": h }),
        None => serde_json::json!({}),
    };
    let url = format!("{base}/v1/admin/users/{}/forget", o.user);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The home region tells every other region in turn; give it time.
    let (status, text) = rt
        .block_on(crate::admin_api::http_request(
            "POST",
            &url,
            Some(&token),
            Some(&body.to_string()),
            &[],
            Duration::from_secs(60),
        ))
        .map_err(|e| anyhow::anyhow!("POST {url}: {e}; is the node running? check --url / --home"))?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let msg = v["message"]
            .as_str()
            .or_else(|| v["error"]["message"].as_str())
            .map(String::from)
            .unwrap_or_else(|| text.trim().to_owned());
        let hint = match (status, o.home.is_some()) {
            (404, false) => "; if the user lives in another region, pass --home REGION",
            (404, true) => "; nothing was erased (the user is unknown in its home region and no erasure is on record)",
            (503, _) => "; nothing was erased yet: run the command again once the region is reachable",
            (401 | 403, _) => "; the token needs role admin",
            _ => "",
        };
        bail!("POST {url} answered {status}: {msg}{hint}");
    }
    let report: crate::tiers::userdata::ForgetReport =
        serde_json::from_value(v).with_context(|| format!("{url} answered something that is not a report: {text}"))?;
    if o.json {
        println!("{}", text.trim());
    } else {
        let at_home = if report.erased_at_home {
            format!("personal data erased ({})", report.fields.join(", "))
        } else {
            "already erased by an earlier forget".to_owned()
        };
        println!("{} (home {}): {at_home}", report.user, report.home);
        for r in &report.regions {
            println!("  {}: {}{}", r.region, if r.ok { "" } else { "NOT REACHED: " }, r.outcome);
        }
    }
    if !report.complete {
        let failed: Vec<&str> = report.regions.iter().filter(|r| !r.ok).map(|r| r.region.as_str()).collect();
        bail!(
            "forget of {} is incomplete: {} not reached; run the same command again once reachable (it is idempotent)",
            report.user,
            failed.join(", ")
        );
    }
    Ok(())
}
