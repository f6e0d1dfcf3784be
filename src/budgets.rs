//! `budgets.toml`: the latency budget of each hop of the data path, as p50, p99 and p99.9.
//!
//! `tickmesh bench e2e` compares what it measured with these numbers (PASS / OVER per
//! percentile). The file is the contract a change to the data path is held to; every
//! budget carries a `why` saying where its numbers come from.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The hops a budget may name, in data-path order.
pub const HOPS: [&str; 5] = ["decode", "journal", "mesh", "gateway", "client"];

/// One hop's budget, in microseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// What the hop covers and where the numbers come from.
    pub why: String,
}

impl Budget {
    /// The budget at a percentile (50, 99, 99.9), in nanoseconds.
    pub fn at_ns(&self, pct: Percentile) -> u64 {
        let us = match pct {
            Percentile::P50 => self.p50_us,
            Percentile::P99 => self.p99_us,
            Percentile::P999 => self.p999_us,
        };
        (us * 1000.0) as u64
    }
}

/// The percentiles a budget fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Percentile {
    /// 50th.
    P50,
    /// 99th.
    P99,
    /// 99.9th.
    P999,
}

impl Percentile {
    /// All three, in order.
    pub const ALL: [Percentile; 3] = [Percentile::P50, Percentile::P99, Percentile::P999];

    /// As a quantile for hdrhistogram.
    pub fn quantile(self) -> f64 {
        match self {
            Percentile::P50 => 0.5,
            Percentile::P99 => 0.99,
            Percentile::P999 => 0.999,
        }
    }

    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Percentile::P50 => "p50",
            Percentile::P99 => "p99",
            Percentile::P999 => "p99.9",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    hops: BTreeMap<String, Budget>,
}

/// Every hop's budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    hops: BTreeMap<String, Budget>,
}

impl Budgets {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Budgets> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the budgets file {} ({e}); pass --budgets FILE or run from the repository root",
                path.display()
            )
        })?;
        Budgets::parse(&text).map_err(|problems| {
            anyhow::anyhow!("{} has {} problem(s):\n  {}", path.display(), problems.len(), problems.join("\n  "))
        })
    }

    /// Parses and validates the text of a budgets file; every problem is reported at once.
    pub fn parse(text: &str) -> Result<Budgets, Vec<String>> {
        let file: File = toml::from_str(text).map_err(|e| vec![format!("not a valid budgets file: {e}")])?;
        let mut p = Vec::new();
        for name in file.hops.keys() {
            if !HOPS.contains(&name.as_str()) {
                p.push(format!("[hops.{name}] is not a hop; use one of {}", HOPS.join(", ")));
            }
        }
        for name in HOPS {
            let Some(b) = file.hops.get(name) else {
                p.push(format!("[hops.{name}] is missing; every hop needs p50_us, p99_us, p999_us and why"));
                continue;
            };
            for (label, v) in [("p50_us", b.p50_us), ("p99_us", b.p99_us), ("p999_us", b.p999_us)] {
                if !(v.is_finite() && v > 0.0) {
                    p.push(format!("hops.{name}.{label} = {v} must be a positive number of microseconds"));
                }
            }
            if !(b.p50_us <= b.p99_us && b.p99_us <= b.p999_us) {
                p.push(format!(
                    "hops.{name}: p50_us {} <= p99_us {} <= p999_us {} does not hold; a higher percentile cannot have a smaller budget",
                    b.p50_us, b.p99_us, b.p999_us
                ));
            }
            if b.why.trim().is_empty() {
                p.push(format!("hops.{name}.why is empty; say where the numbers come from"));
            }
        }
        if p.is_empty() {
            Ok(Budgets { hops: file.hops })
        } else {
            Err(p)
        }
    }

    /// The budget of `hop` (one of [`HOPS`]).
    pub fn get(&self, hop: &str) -> Option<&Budget> {
        self.hops.get(hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_budgets_file_is_valid() {
        let text = include_str!("../budgets.toml");
        let b = Budgets::parse(text).unwrap_or_else(|p| panic!("{p:?}"));
        for h in HOPS {
            assert!(b.get(h).is_some(), "{h}");
        }
        assert_eq!(
            b.get("gateway").unwrap().at_ns(Percentile::P50),
            (b.get("gateway").unwrap().p50_us * 1000.0) as u64
        );
    }

    #[test]
    fn every_problem_is_reported_with_the_fix() {
        let text = r#"
[hops.decode]
p50_us = 5
p99_us = 1
p999_us = -3
why = ""
[hops.decod]
p50_us = 1
p99_us = 2
p999_us = 3
why = "typo"
"#;
        let p = Budgets::parse(text).unwrap_err();
        let all = p.join("\n");
        assert!(all.contains("[hops.decod] is not a hop; use one of decode, journal"), "{all}");
        assert!(all.contains("hops.decode.p999_us = -3 must be a positive number"), "{all}");
        assert!(all.contains("p50_us 5 <= p99_us 1"), "{all}");
        assert!(all.contains("hops.decode.why is empty"), "{all}");
        assert!(all.contains("[hops.journal] is missing"), "{all}");
        assert!(all.contains("[hops.client] is missing"), "{all}");
        let bad = Budgets::parse("[hops.decode]\np50_us = \"fast\"").unwrap_err();
        assert!(bad[0].starts_with("not a valid budgets file"), "{bad:?}");
    }
}
