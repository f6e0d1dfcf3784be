//! `gateway.cores` are positions in the process's allowed CPU set, as in a Guaranteed pod
//! under the static CPU manager: run the real binary under `taskset` with one CPU that is
//! not CPU 0, and check both `--check-config` and where the worker thread really runs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tickmesh");

/// The highest CPU this test may run on: under `taskset -c` it is index 0 of a one-CPU set.
fn last_allowed_cpu() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list").trim();
    let last = list.rsplit(',').next().expect("a CPU range");
    last.rsplit('-').next().expect("a CPU").parse().expect("a CPU number")
}

fn config(dir: &Path, cores: &str) -> std::path::PathBuf {
    let key = dir.join("jwt.key");
    std::fs::write(&key, "test-secret").expect("write key");
    let f = dir.join(format!("node-{}.toml", cores.replace([',', ' '], "_")));
    std::fs::write(
        &f,
        format!(
            "region = \"us-east-1\"\nstate_dir = {:?}\n[gateway]\nlisten = \"127.0.0.1:0\"\ncores = [{cores}]\n\
             [auth]\nhs256_key_files = [{key:?}]\n",
            dir.join("state")
        ),
    )
    .expect("write config");
    f
}

fn taskset(cpu: usize) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu.to_string()).arg(BIN);
    c
}

#[test]
fn core_indexes_are_positions_in_the_allowed_cpus() {
    if Command::new("taskset").arg("-V").output().is_err() {
        panic!("taskset (util-linux) is needed for this test; install util-linux");
    }
    let cpu = last_allowed_cpu();
    let dir = tempfile::tempdir().expect("tempdir");

    // One allowed CPU: index 0 is it, index 1 does not exist.
    let ok = taskset(cpu).args(["node", "--check-config", "--config"]).arg(config(dir.path(), "0")).output().unwrap();
    assert!(ok.status.success(), "cores = [0] under taskset -c {cpu}: {}", String::from_utf8_lossy(&ok.stderr));
    let bad = taskset(cpu).args(["node", "--check-config", "--config"]).arg(config(dir.path(), "1")).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "cores = [1] with one allowed CPU must be refused");
    assert!(err.contains(&format!("may run on 1 CPU(s) ({cpu})")) && err.contains("not CPU ids"), "{err}");

    // A running node pins worker 0 to the allowed CPU, whatever its id, and says so.
    let mut child = taskset(cpu)
        .args(["node", "--config"])
        .arg(config(dir.path(), "0"))
        .env("TICKMESH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tickmesh node");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let want = format!("0->cpu{cpu}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let logged = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains(&want) => break true,
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    // The worker thread's own affinity, from /proc.
    let mut pinned = None;
    while pinned.is_none() && Instant::now() < deadline {
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == "gw-core-0" {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                pinned = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|s| s.trim().to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(logged, "no log line with {want:?}; the node logged:\n{}", seen.join("\n"));
    assert_eq!(pinned.as_deref(), Some(cpu.to_string().as_str()), "gw-core-0's CPUs");
}
