//! The regions of REGIONS.md: round-trip times, failover order, country map.

/// Every region tickmesh knows, primaries first.
pub const REGIONS: [&str; 6] =
    ["us-east-1", "eu-west-1", "ap-southeast-1", "sa-east-1", "ap-southeast-2", "me-south-1"];

/// The three primary regions.
pub const PRIMARY: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

/// Measured round-trip times in ms (REGIONS.md), in [`REGIONS`] order.
const RTT_MS: [[u32; 6]; 6] = [
    [0, 70, 212, 114, 198, 160],
    [70, 0, 182, 176, 256, 96],
    [212, 182, 0, 322, 93, 86],
    [114, 176, 322, 0, 312, 272],
    [198, 256, 93, 312, 0, 178],
    [160, 96, 86, 272, 178, 0],
];

/// Short code of a region, used in source ids (`SYN.USE1`): source ids hold 16 characters.
pub fn short_code(r: &str) -> String {
    let mut parts = r.split('-');
    let (Some(a), Some(b), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return r.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>().to_ascii_uppercase();
    };
    let dir: String = match b {
        "east" => "E".into(),
        "west" => "W".into(),
        "north" => "N".into(),
        "south" => "S".into(),
        "southeast" => "SE".into(),
        "northeast" => "NE".into(),
        "central" => "C".into(),
        other => other.chars().take(2).collect(),
    };
    format!("{}{}{}", a, dir, n).to_ascii_uppercase()
}

fn index(r: &str) -> Option<usize> {
    REGIONS.iter().position(|x| *x == r)
}

/// Round-trip time between two known regions, ms.
pub fn rtt_ms(a: &str, b: &str) -> Option<u32> {
    Some(RTT_MS[index(a)?][index(b)?])
}

/// True for a region name of REGIONS.md.
pub fn is_known(r: &str) -> bool {
    index(r).is_some()
}

/// `regions` ordered for a client of `from`: `from` first, then by round-trip time (ties
/// and unknown regions by name).
pub fn failover_order(from: &str, regions: &[String]) -> Vec<String> {
    let mut v: Vec<String> = regions.to_vec();
    v.sort_by_key(|r| (r != from, rtt_ms(from, r).unwrap_or(u32::MAX), r.clone()));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_symmetric() {
        for a in REGIONS {
            for b in REGIONS {
                assert_eq!(rtt_ms(a, b), rtt_ms(b, a));
            }
        }
    }

    #[test]
    fn short_codes_fit_source_ids() {
        assert_eq!(short_code("us-east-1"), "USE1");
        assert_eq!(short_code("ap-southeast-1"), "APSE1");
        for r in REGIONS {
            assert!(tickmesh_codec::SourceId::new(&format!("SYN.{}", short_code(r))).is_ok());
        }
    }

    #[test]
    fn failover_follows_rtt() {
        let all: Vec<String> = PRIMARY.iter().map(|s| s.to_string()).collect();
        assert_eq!(failover_order("eu-west-1", &all), ["eu-west-1", "us-east-1", "ap-southeast-1"]);
        assert_eq!(failover_order("ap-southeast-1", &all), ["ap-southeast-1", "eu-west-1", "us-east-1"]);
    }
}
