//! PROTOCOL.md's examples through a third-party client: Python's `websockets` package
//! (installed into .venv by scripts/install-deps.sh) against a real region process.

mod support;

use std::process::Command;
use support::Demo;

fn python() -> String {
    std::env::var("TICKMESH_PYTHON").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

fn token(demo: &Demo, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["token", "--key", &demo.jwt_key_file])
        .args(args)
        .output()
        .expect("run tickmesh token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn python_websockets_client_follows_every_protocol_example() {
    let py = python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing; run scripts/install-deps.sh (it creates .venv with the test packages)"
    );
    let demo = Demo::start(&["--regions", "us-east-1", "--rate", "1000"]);
    let other_home = token(&demo, &["--sub", "eve", "--home", "eu-west-1", "--channels", "trades,orders"]);
    let restricted = token(&demo, &["--sub", "bob", "--channels", "trades", "--symbols", "AAPL,BTC-*"]);
    let out = Command::new(&py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/protocol_client.py"))
        .args([&demo.regions[0].ws_url, &demo.user_token, &other_home, &restricted])
        .output()
        .expect("run python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "python client failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
