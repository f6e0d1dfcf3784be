//! Embeds the dashboard's chart library (chart.js, pinned in dashboard/package-lock.json)
//! so the binary serves it itself: no CDN, and the dashboard works without network.
//!
//! When `dashboard/node_modules` is missing and `npm` is on the PATH, runs `npm ci` there
//! (a fresh clone builds with no extra step). Without npm the build still succeeds with a
//! warning; the dashboard then shows its tables and a notice naming the command to run.

use std::path::Path;
use std::process::Command;

const CHART: &str = "dashboard/node_modules/chart.js/dist/chart.umd.js";
const FIX: &str = "cd gateway/dashboard && npm ci";

fn main() {
    println!("cargo:rerun-if-changed=dashboard/package-lock.json");
    println!("cargo:rerun-if-changed={CHART}");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let dest = Path::new(&out).join("chart.umd.js");
    let chart = Path::new(CHART);
    if !chart.exists() {
        match Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir("dashboard")
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => println!("cargo:warning=`npm ci` in gateway/dashboard failed ({s}); the dashboard will have no charts until you run `{FIX}` and rebuild"),
            Err(e) => println!("cargo:warning=npm is not available ({e}); the dashboard will have no charts until you install Node.js/npm, run `{FIX}` and rebuild"),
        }
    }
    let body = match std::fs::read(chart) {
        Ok(b) => b,
        Err(_) => {
            // A stand-in the page recognises: it shows the tables and this notice.
            format!(
                "window.TICKMESH_CHART_MISSING = {:?};\n",
                format!("chart.js is not built into this binary; run `{FIX}` and rebuild")
            )
            .into_bytes()
        }
    };
    std::fs::write(&dest, body).expect("write OUT_DIR/chart.umd.js");
}
