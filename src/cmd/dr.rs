//! `tickmesh backup`, `restore`, `recover plan | apply`: see [`crate::dr`].

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

use crate::dr;

/// `tickmesh backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The node's state directory (journal/ and audit/ in it).
    #[arg(long)]
    state_dir: PathBuf,
    /// Backup target: a directory, file://PATH or s3://BUCKET/PREFIX (credentials and
    /// endpoint from the AWS_* environment variables). Repeated runs are incremental.
    #[arg(long)]
    to: String,
    /// Run continuously: an incremental backup every SECS seconds until SIGINT/SIGTERM.
    #[arg(long, value_name = "SECS")]
    every: Option<u64>,
    /// With --every: a full backup (every segment copied again) when the last full one is
    /// older than this. Default one day.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    full_every: u64,
    /// Make this backup (the first, with --every) a full one.
    #[arg(long)]
    full: bool,
}

/// `tickmesh restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup: a directory or file:// URL.
    #[arg(long)]
    from: String,
    /// The state directory to fill (must hold no journal).
    #[arg(long)]
    state_dir: PathBuf,
    /// Point in time: keep every source's records up to the first with ts_ingest after
    /// this (ns since the Unix epoch, or seconds with an s suffix).
    #[arg(long)]
    at: Option<String>,
}

/// `tickmesh recover ...`.
#[derive(Subcommand, Debug)]
pub enum RecoverCmd {
    /// Print (and write) what a recovery would do; change nothing.
    Plan {
        /// The node's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// A backup: a directory or file:// URL. Repeat it to add other regions' backups
        /// (they hold this region's home sources as replicated); per source the backup
        /// holding it furthest is used, the first on a tie, and only the first's audit log.
        #[arg(long, required = true)]
        from: Vec<String>,
        /// Point in time (as for restore --at).
        #[arg(long)]
        at: Option<String>,
        /// Where to write the plan (default STATE_DIR/recover-plan.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Apply a plan written by `recover plan`; refused if its inputs changed since.
    Apply {
        /// The plan file.
        plan: PathBuf,
    },
    /// Compare one source between this state directory and another region's (read from
    /// the files, so both nodes may run): records that differ under the same seq (a
    /// reused seq) and seqs this one lacks. Prints one JSON line.
    Compare {
        /// This region's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// The other region's state directory.
        #[arg(long)]
        with: PathBuf,
        /// The source id (e.g. this region's home source).
        #[arg(long)]
        source: String,
    },
}

/// Runs `tickmesh backup` (once, or with `--every` until SIGINT/SIGTERM).
pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let target = dr::Target::parse(&a.to)?;
    let Some(every) = a.every else {
        let r = dr::backup_with(&a.state_dir, &target, a.full)?;
        print_backup(&r);
        return Ok(());
    };
    if every == 0 || a.full_every == 0 {
        anyhow::bail!("--every and --full-every take a number of seconds above 0 (e.g. --every 60 --full-every 86400)");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        crate::demo::signal_flag(sig, stop.clone())?;
    }
    let mut first = true;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = std::time::Instant::now();
        let full = (first && a.full)
            || match target.manifest() {
                Ok(Some((m, _))) => {
                    tickmesh_codec::now_ns().saturating_sub(m.last_full_ns)
                        >= a.full_every.saturating_mul(1_000_000_000)
                }
                Ok(None) => true,
                Err(_) => false, // the backup below reports it
            };
        match dr::backup_with(&a.state_dir, &target, full) {
            Ok(r) => print_backup(&r),
            // The first run fails loudly (a wrong target or state directory); later ones
            // are retried at the next interval (a store that is briefly unreachable).
            Err(e) if first => return Err(e),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), target = %target, "backup failed; retrying at the next interval");
                println!("{}", serde_json::json!({"event": "backup_failed", "error": format!("{e:#}")}));
            }
        }
        first = false;
        let next = started + std::time::Duration::from_secs(every);
        while std::time::Instant::now() < next && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

fn print_backup(r: &dr::BackupReport) {
    let ranges: serde_json::Map<String, serde_json::Value> = r
        .manifest
        .sources
        .iter()
        .map(|(k, s)| (k.clone(), serde_json::json!({"first_seq": s.first_seq, "last_seq": s.last_seq, "records": s.records, "max_ts": s.max_ts})))
        .collect();
    println!(
        "{}",
        serde_json::json!({"event": "backup", "number": r.manifest.number, "kind": r.manifest.kind,
            "segments_copied": r.segments_copied, "segments_unchanged": r.segments_unchanged,
            "bytes_copied": r.bytes_copied, "sources": ranges})
    );
}

/// Runs `tickmesh restore`.
pub fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let at = a.at.as_deref().map(dr::parse_time).transpose()?;
    let target = dr::Target::parse(&a.from)?;
    let r = dr::restore(&target, &a.state_dir, at)?;
    println!(
        "{}",
        serde_json::json!({"event": "restored", "manifest": r.manifest, "at": at, "sources": r.sources, "audit_entries": r.audit_entries})
    );
    Ok(())
}

/// Runs `tickmesh recover ...`.
pub fn recover(cmd: RecoverCmd) -> anyhow::Result<()> {
    match cmd {
        RecoverCmd::Plan { state_dir, from, at, out } => {
            let at = at.as_deref().map(dr::parse_time).transpose()?;
            let p = dr::plan(&state_dir, &from, at)?;
            let out = out.unwrap_or_else(|| state_dir.join("recover-plan.json"));
            if let Some(d) = out.parent() {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            std::fs::write(&out, serde_json::to_vec_pretty(&p)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "recovery plan for {} from {} (backups #{:?}){}:",
                state_dir.display(),
                from.join(", "),
                p.inputs.manifest_number,
                at.map(|t| format!(" up to ts_ingest {t}")).unwrap_or_default()
            );
            for s in &p.steps {
                let r = |x: Option<(u64, u64)>| x.map(|(a, b)| format!("{a}..={b}")).unwrap_or_else(|| "none".into());
                println!(
                    "  {:<16} {:<8} local {:<24} backup {:<24} fetch {} segment(s){}",
                    s.src,
                    s.action,
                    r(s.local),
                    r(s.backup),
                    s.fetch.len(),
                    s.backup_from.as_ref().map(|f| format!(" from {f}")).unwrap_or_default()
                );
                println!("  {:<16} then: {}", "", s.then);
            }
            if p.restore_audit {
                println!("  audit log: restored from the backup (none is here)");
            }
            println!(
                "plan written to {}; review it, then run: tickmesh recover apply {}",
                out.display(),
                out.display()
            );
            Ok(())
        }
        RecoverCmd::Compare { state_dir, with, source } => {
            let c = dr::compare(&state_dir, &with, &source)?;
            println!("{}", serde_json::json!({"event": "compare", "comparison": c}));
            Ok(())
        }
        RecoverCmd::Apply { plan } => {
            let text = std::fs::read(&plan).with_context(|| format!("reading the plan {}", plan.display()))?;
            let p: dr::RecoverPlan = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a plan written by `tickmesh recover plan`", plan.display()))?;
            let r = dr::apply(&p)?;
            println!(
                "{}",
                serde_json::json!({"event": "recovered", "restored": r.restored, "kept": r.kept,
                "moved_aside": r.moved_aside, "audit_entries": r.audit_entries})
            );
            Ok(())
        }
    }
}
