//! `tickmesh audit verify | show`: check and read a node's audit trail offline. The trail
//! holds every kind of entry in one hash chain (transfers, user-data messages, erasures):
//! `verify` checks them all, `show --kind` picks one.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tickmesh_replicate::audit::{AuditLog, LOG_FILE};
use tickmesh_replicate::{user_pseudonym, AuditFilter, DataClass, EntryKind};

/// `tickmesh audit ...`.
#[derive(Subcommand, Debug)]
// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum AuditCmd {
    /// Check the hash chain and the head anchor; exit 0 when intact, 1 with the first
    /// broken index and the reason otherwise.
    Verify(Which),
    /// Print matching entries as JSON lines, oldest first.
    Show {
        /// Which log.
        #[command(flatten)]
        which: Which,
        /// Kind of entry: transfer (records between regions), user_transfer (user-data
        /// messages over the mesh) or erasure (forget-user).
        #[arg(long, value_parser = ["transfer", "user_transfer", "erasure"])]
        kind: Option<String>,
        /// A user's entries, by user id (matched through its pseudonym; the log never holds the id).
        #[arg(long)]
        user: Option<String>,
        /// Source id.
        #[arg(long)]
        src: Option<String>,
        /// Sending region.
        #[arg(long)]
        from: Option<String>,
        /// Receiving region.
        #[arg(long)]
        to: Option<String>,
        /// Class: market_data, pii or regulatory.
        #[arg(long, value_parser = ["market_data", "pii", "regulatory"])]
        class: Option<String>,
        /// allow or deny.
        #[arg(long, value_parser = ["allow", "deny"])]
        decision: Option<String>,
        /// Entries recorded at or after this time (ns since the Unix epoch).
        #[arg(long)]
        since_ns: Option<u64>,
        /// Entries recorded before this time (ns since the Unix epoch).
        #[arg(long)]
        until_ns: Option<u64>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// Which audit log: a node's state directory or the file itself.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// The node's state directory (the log is DIR/audit/audit.jsonl).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The log file (its head anchor is the file `head` next to it).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Which {
    fn path(&self) -> PathBuf {
        match (&self.file, &self.state_dir) {
            (Some(f), _) => f.clone(),
            (None, Some(d)) => d.join("audit").join(LOG_FILE),
            (None, None) => PathBuf::from(LOG_FILE),
        }
    }
}

/// Runs `tickmesh audit ...`.
pub fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify(which) => verify(&which.path()),
        AuditCmd::Show { which, kind, user, src, from, to, class, decision, since_ns, until_ns, limit } => {
            let class = class.map(|c| serde_json::from_value::<DataClass>(serde_json::Value::String(c))).transpose()?;
            let kind = kind.map(|k| serde_json::from_value::<EntryKind>(serde_json::Value::String(k))).transpose()?;
            let user = user.map(|u| user_pseudonym(&u));
            let f = AuditFilter {
                kind,
                user,
                src,
                from,
                to,
                class,
                decision,
                since_ns,
                until_ns,
                after: None,
                limit: Some(limit),
            };
            let problems = f.problems();
            if !problems.is_empty() {
                anyhow::bail!("{}", problems.join("; "));
            }
            let path = which.path();
            if !path.exists() {
                anyhow::bail!("{} does not exist; pass the node's --state-dir or the log's --file", path.display());
            }
            let page = AuditLog::query_file(&path, &f)?;
            for e in &page.entries {
                println!("{}", serde_json::to_string(e)?);
            }
            Ok(())
        }
    }
}

fn verify(path: &std::path::Path) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist; pass the node's --state-dir (the log is DIR/audit/audit.jsonl) or the log's --file",
            path.display()
        );
    }
    let r = AuditLog::verify(path).with_context(|| format!("verifying {}", path.display()))?;
    match &r.broken {
        None => {
            let head = r.head.as_ref().map(|h| format!("head index {} hash {}", h.index, h.hash));
            println!(
                "{}: intact, {} entries, {}{}",
                path.display(),
                r.entries,
                head.unwrap_or_else(|| "no head anchor (empty log)".into()),
                if r.torn_tail { "; a torn last line (crash during a write) is ignored" } else { "" }
            );
            Ok(())
        }
        Some(b) => {
            eprintln!("{}: BROKEN at index {} (line {}): {}", path.display(), b.index, b.line, b.reason);
            eprintln!("entries 0..{} are intact", b.index);
            eprintln!("what to do: {}", b.action);
            anyhow::bail!("audit log {} is broken at index {}: {}", path.display(), b.index, b.reason)
        }
    }
}
