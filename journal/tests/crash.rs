//! A real crash: a child process (this test binary, re-executed) appends with
//! `fsync = "always"` and prints each seq once `append` returned; the parent SIGKILLs it
//! mid-stream, reopens, and requires every printed seq to be present and readable.

mod common;

use common::{rec, sid};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tickmesh_journal::{FsyncPolicy, Journal, JournalConfig};

const CHILD_ENV: &str = "TICKMESH_JOURNAL_CRASH_DIR";
const MARK: &str = "@durable=";
const TEST_NAME: &str = "sigkill_loses_nothing_reported_durable";

fn cfg() -> JournalConfig {
    JournalConfig { fsync: FsyncPolicy::Always, segment_bytes: 16_384, index_every: 16, ..JournalConfig::default() }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: append forever, reporting each seq after `append` returned (so it is on disk).
fn child(dir: &Path) {
    let (j, _) = Journal::open(dir, cfg()).expect("child opens the journal");
    let start = j.last_seq(&sid("CRASH")).map_or(1, |s| s + 1);
    let mut out = std::io::stdout().lock();
    for seq in start.. {
        j.append(&rec("CRASH", seq, seq)).expect("child append");
        writeln!(out, "{MARK}{seq}").and_then(|()| out.flush()).expect("child stdout");
    }
}

#[test]
fn sigkill_loses_nothing_reported_durable() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut reported: Vec<u64> = Vec::new();
    // Three lives: each child continues where recovery left the last one.
    for (round, kill_after) in [400usize, 250, 600].into_iter().enumerate() {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The first line shares its start with libtest's "test ... " banner.
                if let Some((_, n)) = line.rsplit_once(MARK) {
                    if tx.send(n.trim().parse::<u64>().unwrap()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut seen = 0;
        while seen < kill_after {
            let seq = rx.recv_timeout(Duration::from_secs(60)).expect("child reports progress");
            reported.push(seq);
            seen += 1;
        }
        // SIGKILL while it is appending.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        // Lines already in the pipe were durable too.
        while let Ok(seq) = rx.recv_timeout(Duration::from_millis(200)) {
            reported.push(seq);
        }

        let (j, report) = Journal::open(dir.path(), cfg()).unwrap();
        let max = *reported.last().unwrap();
        let last = j.last_seq(&sid("CRASH")).unwrap();
        assert!(last >= max, "round {round}: last seq {last} < reported durable {max}; {report}");
        // A killed process can leave at most a torn record: never an intact one cut.
        assert_eq!(report.source(&sid("CRASH")).unwrap().records_cut, 0, "{report}");
        let mut r = j.reader(&sid("CRASH"), 1).unwrap();
        let mut want = 1;
        while let Some(rec) = r.next().unwrap() {
            assert_eq!(rec.seq(), want);
            want += 1;
        }
        assert_eq!(want - 1, last);
        // So the journal holds exactly 1..=last, and every reported seq is in it. (A seq
        // written just before the kill may be held without having been reported.)
        assert!(reported.windows(2).all(|w| w[0] < w[1]));
    }
}
