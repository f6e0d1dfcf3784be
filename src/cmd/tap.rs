//! `tickmesh tap`: the internal analytics feed. A read-only mesh client (role `tap`, a
//! certificate named `tap` from the mesh CA: `tickmesh certs issue tap --dir PKI`) that
//! subscribes to a region's sources over the same QUIC protocol as peer regions and
//! prints every record, as JSON lines or as length-prefixed binary frames.
//!
//! The region's residency policy applies to the tap like to any other destination (a
//! source the policy keeps home is refused and the refusal audited).

use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tickmesh_codec::{frame, SourceId};
use tickmesh_replicate::tls::{Credentials, TlsFiles};
use tickmesh_replicate::{
    Cursor, DataClass, Decision, Direction, Mesh, MeshConfig, MeshParams, PeerConfig, RecordStore, Role, TransferPolicy,
};

/// Options of `tickmesh tap`.
#[derive(Debug, Clone)]
pub struct TapOptions {
    /// Region to read.
    pub region: String,
    /// Its mesh address, `host:port`.
    pub mesh: String,
    /// Directory holding `ca.pem`, `tap.pem`, `tap.key`.
    pub pki: PathBuf,
    /// Only this source.
    pub src: Option<String>,
    /// First `seq` to print (with `--src`; other sources start at their beginning).
    pub from: u64,
    /// `jsonl` or `binary`.
    pub format: String,
    /// Stop after this many records (0: run until interrupted).
    pub count: u64,
}

/// Where the tap starts: "holds" `from - 1` of the chosen source, nothing else.
struct Start(Option<(SourceId, u64)>);

impl RecordStore for Start {
    fn positions(&self) -> Vec<(SourceId, u64)> {
        self.0.iter().copied().collect()
    }
    fn cursor(&self, _src: &SourceId, _after: u64) -> tickmesh_replicate::Result<Box<dyn Cursor>> {
        Err(tickmesh_replicate::Error::Store("a tap serves nothing".into()))
    }
}

/// Takes only `--src` (the tap's own filter, applied before subscribing).
struct Only(Option<SourceId>);

impl TransferPolicy for Only {
    fn class_of(&self, _src: &SourceId) -> DataClass {
        DataClass::MarketData
    }
    fn check(&self, src: &SourceId, _from: &str, _to: &str, _dir: Direction) -> Decision {
        match self.0 {
            Some(s) if s != *src => Decision::Deny("not the source asked for".into()),
            _ => Decision::Allow,
        }
    }
}

/// Runs the tap until `count` records were printed or the process is interrupted.
pub fn run(opts: TapOptions) -> anyhow::Result<()> {
    let binary = match opts.format.as_str() {
        "jsonl" => false,
        "binary" => true,
        f => anyhow::bail!("--format {f} is not supported; use jsonl or binary"),
    };
    let src = opts
        .src
        .as_deref()
        .map(SourceId::new)
        .transpose()
        .with_context(|| format!("--src {:?} is not a source id", opts.src))?;
    let files =
        TlsFiles { ca_cert: opts.pki.join("ca.pem"), cert: opts.pki.join("tap.pem"), key: opts.pki.join("tap.key") };
    let creds = Credentials::load(&files).with_context(|| {
        format!("loading the tap certificate; run `tickmesh certs issue tap --dir {}`", opts.pki.display())
    })?;
    let printed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (p2, d2, count) = (printed.clone(), done.clone(), opts.count);
    let inbound = Arc::new(move |d: tickmesh_replicate::Delivery| {
        let mut out = std::io::stdout().lock();
        let mut rest: &[u8] = &d.frames;
        while let Ok(Some((rec, tail))) = frame::split_frame(rest) {
            rest = tail;
            if count > 0 && p2.load(Ordering::Relaxed) >= count {
                d2.store(true, Ordering::Relaxed);
                return;
            }
            let ok = if binary {
                let mut f = Vec::with_capacity(rec.len() + 4);
                frame::put_frame(rec, &mut f);
                out.write_all(&f).is_ok()
            } else {
                match tickmesh_codec::access_untrusted(rec) {
                    Ok(r) => writeln!(out, "{}", tickmesh_codec::json::to_json(&r)).is_ok(),
                    Err(_) => true,
                }
            };
            if !ok {
                d2.store(true, Ordering::Relaxed);
                return;
            }
            if p2.fetch_add(1, Ordering::Relaxed) + 1 == count {
                d2.store(true, Ordering::Relaxed);
            }
        }
        let _ = out.flush();
    });
    let (_appended_tx, appended) = tokio::sync::watch::channel(0u64);
    let mesh = Mesh::start(MeshParams {
        region: "tap".into(),
        role: Role::Tap,
        cfg: MeshConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            peers: vec![PeerConfig { region: opts.region.clone(), addr: opts.mesh.clone() }],
            tls: files,
            reconnect_ms: 100,
            upstream: None,
            io_thread: Default::default(),
        },
        creds,
        store: Arc::new(Start(src.map(|s| (s, opts.from.saturating_sub(1))))),
        home: Vec::new(),
        appended,
        inbound,
        policy: Arc::new(Only(src)),
        audit: Arc::new(tickmesh_replicate::NoAudit),
    })
    .context("starting the tap's mesh endpoint")?;
    // Interrupting the process ends the tap (nothing to flush but stdout, done per batch).
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    mesh.shutdown();
    Ok(())
}
