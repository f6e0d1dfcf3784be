//! Backups to object storage, against a real S3 API: moto's server (`moto_server`, PyPI
//! `moto[server]`, installed into .venv by scripts/install-deps.sh) on 127.0.0.1 with a free
//! port. `tickmesh backup --to s3://BUCKET/PREFIX` (credentials and endpoint from the AWS_*
//! variables), incremental runs, the continuous mode (`--every`, full after
//! `--full-every`), and `tickmesh restore --from s3://... --at T` reproducing the journal
//! exactly up to T.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::fill_ts as ts;

const SOURCES: [&str; 2] = ["SYN.USE1", "XNAS.ITCH"];

/// `moto_server` on a free port; killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let bin = std::env::var("TICKMESH_MOTO_SERVER")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/moto_server").into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing; run scripts/install-deps.sh (it installs moto[server] into .venv)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while moto.http("GET", "/").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// One plain HTTP request (moto takes unsigned ones); the status code.
    fn http(&self, method: &str, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    fn tickmesh(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tickmesh"));
        c.args(args)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.tickmesh(args).output().unwrap();
        assert!(out.status.success(), "tickmesh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fill(state: &Path, from: u64, to: u64) {
    support::fill_journal(state, &SOURCES, from, to);
}

fn records(dir: &Path, src: &str) -> Vec<Vec<u8>> {
    support::journal_records(dir, src)
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn backup_to_s3_then_point_in_time_restore_reproduces_the_journal() {
    let moto = Moto::start();
    assert_eq!(moto.http("PUT", "/tickmesh-backups"), Some(200), "creating the bucket");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let url = "s3://tickmesh-backups/us-east-1/node-a";
    fill(&state, 1, 300);
    let first = json_lines(&moto.run(&["backup", "--state-dir", state.to_str().unwrap(), "--to", url]));
    assert_eq!(first[0]["kind"], "full", "{first:?}");
    fill(&state, 301, 600);
    let second = json_lines(&moto.run(&["backup", "--state-dir", state.to_str().unwrap(), "--to", url]));
    assert_eq!(second[0]["kind"], "incremental", "{second:?}");
    assert!(second[0]["segments_unchanged"].as_u64().unwrap() > 0, "closed segments are not copied again: {second:?}");

    for (n, at) in [(0, ts(0, 433)), (1, ts(1, 600))] {
        let dir = tmp.path().join(format!("pit{n}"));
        let out = moto.run(&["restore", "--from", url, "--state-dir", dir.to_str().unwrap(), "--at", &at.to_string()]);
        assert!(out.contains("\"restored\""), "{out}");
        for s in SOURCES {
            let want: Vec<Vec<u8>> = records(&state, s)
                .into_iter()
                .take_while(|b| tickmesh_codec::access_untrusted(b).unwrap().ts_ingest() <= at)
                .collect();
            let got = records(&dir, s);
            assert_eq!(got.len(), want.len(), "{s} at {at}");
            assert!(got == want, "{s}: restored records differ from the journal up to {at}");
        }
    }
    assert_eq!(records(&tmp.path().join("pit0"), "SYN.USE1").len(), 433);
    assert_eq!(records(&tmp.path().join("pit0"), "XNAS.ITCH").len(), 432);

    // A missing bucket and an unknown scheme are refused with what to do.
    let out =
        moto.tickmesh(&["backup", "--state-dir", state.to_str().unwrap(), "--to", "s3://no-such-bucket/x"]).output();
    assert!(!out.unwrap().status.success());
    let out = moto.tickmesh(&["backup", "--state-dir", state.to_str().unwrap(), "--to", "ftp://x/y"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("s3://BUCKET/PREFIX"), "{err}");
}

#[test]
fn continuous_backups_are_incremental_with_a_full_one_when_due() {
    let moto = Moto::start();
    assert_eq!(moto.http("PUT", "/continuous"), Some(200), "creating the bucket");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    fill(&state, 1, 100);
    let url = "s3://continuous/region";
    let mut child = moto
        .tickmesh(&["backup", "--state-dir", state.to_str().unwrap(), "--to", url, "--every", "1", "--full-every", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut kinds = Vec::new();
    let mut seq = 100;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kinds.len() < 6 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("a backup line every second");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "backup", "{line}");
        kinds.push(v["kind"].as_str().unwrap().to_owned());
        // New records between runs (the journal is not held by a node here).
        fill(&state, seq + 1, seq + 20);
        seq += 20;
    }
    // SAFETY: a plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends the loop cleanly: {status:?}");
    assert_eq!(kinds[0], "full", "{kinds:?}");
    assert!(kinds[1] == "incremental", "{kinds:?}");
    assert!(kinds[1..].iter().any(|k| k == "full"), "a full backup once the last is 3 s old: {kinds:?}");
    // The newest backup restores everything written before it.
    let dir = tmp.path().join("restored");
    moto.run(&["restore", "--from", url, "--state-dir", dir.to_str().unwrap()]);
    let got = records(&dir, "SYN.USE1").len() as u64;
    assert!(got >= seq - 20, "the last backup holds {got} records of {seq}");
}
