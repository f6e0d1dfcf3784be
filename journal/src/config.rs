//! [`JournalConfig`]: segment size, fsync policy, retention, index density.

use serde::Deserialize;

/// When appended bytes are forced to disk.
///
/// Whatever the policy, a segment is fsynced once when it is sealed (on roll), so after a
/// power loss only the last segment of a source can have a torn tail, which
/// [`crate::Journal::open`] repairs. A sealed segment with a bad record is therefore real
/// corruption and is reported, never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Never fsync on append; the OS writes pages back when it likes. A process crash
    /// loses nothing (the bytes are in the page cache), a power loss can lose the last
    /// seconds. `durable_seq` then reports what was handed to the OS.
    Never,
    /// fsync (fdatasync) before `append` returns. Safest and slowest: one disk flush per
    /// append, or per [`crate::Journal::append_batch`] call.
    Always,
    /// Group commit: the `journal-sync` thread fsyncs each source that has unsynced records
    /// at most `group_commit_us` after the previous round, sooner once
    /// `group_commit_records` records are waiting. `append` never waits for the disk;
    /// callers that must not acknowledge before durability watch `durable_seq` or call
    /// [`crate::Journal::wait_durable`].
    Group,
}

/// Journal settings. Every field has a default (see [`Default`]), so an empty TOML table
/// is a valid config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// A segment is sealed and a new one started when the next record would take the
    /// segment past this many bytes. Default: 67_108_864 (64 MiB). Smaller segments let
    /// retention free space in finer steps and make open() scan less (it scans the last
    /// segment of each source), at the cost of more files. Must be 8_192..=4_294_967_296.
    pub segment_bytes: u64,
    /// When to fsync: `"never"`, `"always"` or `"group"`. Default: `"group"`.
    pub fsync: FsyncPolicy,
    /// Group commit window in microseconds (used only with `fsync = "group"`). Default:
    /// 2_000 (2 ms). Bounds how long an appended record waits for its fsync; lower costs
    /// more fsyncs per second. Must be 1..=10_000_000.
    pub group_commit_us: u64,
    /// With `fsync = "group"`, this many unsynced records in one source start a round
    /// before the window ends. Default: 4_096. Must be at least 1.
    pub group_commit_records: u64,
    /// Per source, [`crate::Journal::apply_retention`] deletes the oldest sealed segments
    /// while the source holds more than this many bytes. Default: 0 (no size limit). The
    /// active segment is never deleted, and deletion is by whole segment. When set, must be
    /// at least `segment_bytes`.
    pub retain_bytes: u64,
    /// Per source, retention deletes sealed segments whose newest record (by `ts_ingest`)
    /// is older than this many seconds. Default: 0 (keep forever).
    pub retain_age_secs: u64,
    /// How often a node applies `retain_bytes` / `retain_age_secs` (seconds). Default: 60.
    /// Must be 1..=86400. Unused while both are 0.
    pub retention_every_secs: u64,
    /// A sparse index entry (seq, running max of ts_ingest, byte offset) is kept every this
    /// many records, and at each segment start; a lookup by seq or time reads at most this
    /// many records past the entry it finds. Default: 4_096 (about 2.5 KiB of index per
    /// 64 MiB segment of trades). Must be 1..=1_048_576.
    pub index_every: u32,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Group,
            group_commit_us: 2_000,
            group_commit_records: 4_096,
            retain_bytes: 0,
            retain_age_secs: 0,
            retention_every_secs: 60,
            index_every: 4_096,
        }
    }
}

/// Smallest allowed `segment_bytes`: a few maximum-size frames.
pub(crate) const MIN_SEGMENT_BYTES: u64 = 8_192;
/// Largest allowed `segment_bytes`.
pub(crate) const MAX_SEGMENT_BYTES: u64 = 4 << 30;

impl JournalConfig {
    /// Appends every problem with this config to `problems`, each naming the setting, its
    /// value and what to use instead. An empty `problems` after the call means valid.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            problems.push(format!(
                "journal.segment_bytes = {} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}; \
                 use a value in that range (default 67108864 = 64 MiB)",
                self.segment_bytes
            ));
        }
        if self.fsync == FsyncPolicy::Group {
            if !(1..=10_000_000).contains(&self.group_commit_us) {
                problems.push(format!(
                    "journal.group_commit_us = {} is outside 1..=10000000; use a window such as 2000 \
                     (2 ms), or set journal.fsync = \"always\" to sync every append",
                    self.group_commit_us
                ));
            }
            if self.group_commit_records == 0 {
                problems.push("journal.group_commit_records = 0; use at least 1 (default 4096)".to_string());
            }
        }
        if self.retain_bytes != 0 && self.retain_bytes < self.segment_bytes {
            problems.push(format!(
                "journal.retain_bytes = {} is below journal.segment_bytes = {}; retention deletes \
                 whole segments, so raise retain_bytes to a few segments, lower segment_bytes, or \
                 set retain_bytes = 0 for no size limit",
                self.retain_bytes, self.segment_bytes
            ));
        }
        if self.retain_age_secs > u64::MAX / 1_000_000_000 {
            problems.push(format!(
                "journal.retain_age_secs = {} is too large to count in nanoseconds; use 0 to keep \
                 records forever",
                self.retain_age_secs
            ));
        }
        if !(1..=86_400).contains(&self.retention_every_secs) {
            problems.push(format!(
                "journal.retention_every_secs = {} is outside 1..=86400; use 60 (the default)",
                self.retention_every_secs
            ));
        }
        if !(1..=1_048_576).contains(&self.index_every) {
            problems.push(format!(
                "journal.index_every = {} is outside 1..=1048576; use 4096 (the default) unless a \
                 bench says otherwise",
                self.index_every
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_gives_defaults() {
        let cfg: JournalConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, JournalConfig::default());
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn fields_parse_and_unknown_fields_are_refused() {
        let cfg: JournalConfig = toml::from_str(
            "segment_bytes = 1048576\nfsync = \"always\"\nretain_bytes = 8388608\nretain_age_secs = 86400",
        )
        .unwrap();
        assert_eq!(cfg.fsync, FsyncPolicy::Always);
        assert_eq!(cfg.segment_bytes, 1 << 20);
        assert_eq!(cfg.retain_age_secs, 86_400);
        let err = toml::from_str::<JournalConfig>("segment_size = 5").unwrap_err();
        assert!(err.to_string().contains("segment_size"), "{err}");
        assert!(toml::from_str::<JournalConfig>("fsync = \"sometimes\"").is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        let cfg = JournalConfig {
            segment_bytes: 100,
            fsync: FsyncPolicy::Group,
            group_commit_us: 0,
            group_commit_records: 0,
            retain_bytes: 50,
            retain_age_secs: 0,
            retention_every_secs: 0,
            index_every: 0,
        };
        let mut problems = Vec::new();
        cfg.validate(&mut problems);
        assert_eq!(problems.len(), 6, "{problems:#?}");
        for p in &problems {
            assert!(p.starts_with("journal."), "{p}");
            assert!(p.contains("; "), "should say what to do: {p}");
        }
    }
}
