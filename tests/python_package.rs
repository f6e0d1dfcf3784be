//! Runs the Python client package's own tests (clients/python/tests) with pytest, against
//! fake regions and a real demo started by the pytest fixture with this build's binary.

use std::process::Command;

fn python() -> String {
    std::env::var("TICKMESH_PYTHON").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into())
}

#[test]
fn python_client_package_passes_its_tests() {
    let py = python();
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing; run scripts/install-deps.sh (it creates .venv and installs clients/python and pytest)"
    );
    let out = Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "clients/python/tests"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TICKMESH_BIN", env!("CARGO_BIN_EXE_tickmesh"))
        .env("TICKMESH_REQUIRE_DEMO", "1")
        .output()
        .expect("run pytest");
    assert!(
        out.status.success(),
        "pytest failed (run scripts/install-deps.sh if a module is missing):\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
