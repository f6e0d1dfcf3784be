//! `tickmesh router` (started by `tickmesh demo --router`) queried with a real DNS client,
//! `dig` from dnsutils (scripts/install-deps.sh installs it).
//!
//! The demo's subnet table (`tickmesh::demo::DEMO_SUBNETS`) maps 127.1.0.0/16 to US,
//! 127.2.0.0/16 to DE, 127.3.0.0/16 to SG, ...; its regions answer on 127.0.0.1,
//! 127.0.0.2 and 127.0.0.3.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::Demo;

const NAME: &str = "md.tickmesh.test";

fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=3", "+time=2"])
        .args(args)
        .output()
        .expect("dig is installed (scripts/install-deps.sh installs dnsutils)");
    assert!(out.status.success(), "dig {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The A answer for a client subnet given by EDNS Client Subnet.
fn a_for(server: SocketAddr, subnet: &str) -> String {
    dig(server, &[NAME, "A", "+short", &format!("+subnet={subnet}")]).trim().to_owned()
}

/// Answers, in order, for many client subnets in one `dig -f` batch.
fn batch(server: SocketAddr, subnets: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries");
    let lines: Vec<String> = subnets.iter().map(|s| format!("{NAME} A +short +subnet={s}")).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dig(server, &["-f", file.to_str().unwrap()]);
    let answers: Vec<String> =
        out.lines().map(str::trim).filter(|l| l.parse::<std::net::IpAddr>().is_ok()).map(String::from).collect();
    assert_eq!(answers.len(), subnets.len(), "one address per query; dig printed:\n{}", &out[..out.len().min(2000)]);
    answers
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ip_of(demo: &Demo, region: &str) -> String {
    let r = demo.regions.iter().find(|r| r.region == region).unwrap();
    r.http_url.trim_start_matches("http://").parse::<SocketAddr>().unwrap().ip().to_string()
}

#[test]
fn each_subnet_gets_its_nearest_region_and_a_killed_region_leaves_the_answers() {
    let demo = Demo::start(&["--router"]);
    let dns = demo.dns_addr.expect("demo --router prints router_up with dns_addr");
    let (us, eu, ap) = (ip_of(&demo, "us-east-1"), ip_of(&demo, "eu-west-1"), ip_of(&demo, "ap-southeast-1"));
    assert_eq!([us.as_str(), eu.as_str(), ap.as_str()], ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    for (subnet, want) in [
        ("127.1.0.0/24", &us),    // US
        ("127.2.7.0/24", &eu),    // DE
        ("127.3.0.0/24", &ap),    // SG
        ("127.4.0.0/24", &us),    // BR: sa-east-1 not deployed, us-east-1 is 114 ms away
        ("127.5.0.0/24", &ap),    // AU: ap-southeast-1 is 93 ms from ap-southeast-2
        ("127.6.0.0/24", &ap),    // AE: 86 ms from me-south-1, against 96 ms to eu-west-1
        ("198.51.100.0/24", &eu), // GB
        ("203.0.113.0/24", &ap),  // JP
    ] {
        assert_eq!(&a_for(dns, subnet), want, "{subnet}");
    }
    // Without ECS the source address decides: a client bound to 127.2.0.9 is in DE.
    assert_eq!(dig(dns, &[NAME, "A", "+short", "-b", "127.2.0.9"]).trim(), eu);
    // Full answer: authoritative, TTL 5, ECS echoed with its scope; TCP works too.
    let full = dig(dns, &[NAME, "A", "+subnet=127.3.0.0/24", "+tcp"]);
    assert!(full.contains("status: NOERROR") && full.contains(" aa"), "{full}");
    assert!(
        full.contains(&format!("{NAME}.\t\t5\tIN\tA\t{ap}")) || full.contains(&format!("5\tIN\tA\t{ap}")),
        "{full}"
    );
    assert!(full.contains("CLIENT-SUBNET: 127.3.0.0/24/24"), "{full}");
    let nx = dig(dns, &[&format!("other.{NAME}"), "A"]);
    assert!(nx.contains("status: NXDOMAIN") && nx.contains("SOA"), "{nx}");
    let refused = dig(dns, &["example.com", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let nodata = dig(dns, &[NAME, "AAAA"]);
    assert!(nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"), "{nodata}");

    // SIGKILL ap-southeast-1: SG clients move to its nearest healthy region, eu-west-1
    // (182 ms, against 212 ms to us-east-1), within the health threshold (two 1 s probes;
    // generous slack for a loaded host). Other subnets do not move.
    demo.kill_region("ap-southeast-1");
    wait_for(Duration::from_secs(20), "SG leaving ap-southeast-1", || a_for(dns, "127.3.0.0/24") != ap);
    assert_eq!(a_for(dns, "127.3.0.0/24"), eu);
    assert_eq!(a_for(dns, "127.1.0.0/24"), us);
    assert_eq!(a_for(dns, "127.2.7.0/24"), eu);
    let answers = batch(dns, &(0..300).map(|i| format!("127.{}.{}.0/24", 1 + i % 6, i / 6)).collect::<Vec<_>>());
    assert!(!answers.contains(&ap), "a killed region is never answered");
}

#[test]
fn weights_90_10_split_10000_subnets_within_3_percent_and_affinity_holds() {
    let demo = Demo::start(&["--router"]);
    let dns = demo.dns_addr.expect("router_up");
    let (us, eu, ap) = (ip_of(&demo, "us-east-1"), ip_of(&demo, "eu-west-1"), ip_of(&demo, "ap-southeast-1"));
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["admin", "weights", "us-east-1=90,eu-west-1=10", "--url", &demo.regions[0].http_url])
        .args(["--token", &demo.admin_token])
        .output()
        .expect("run tickmesh admin weights");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 10,000 US client subnets (/32s of 127.1.0.0/16, sent as ECS).
    let subnets: Vec<String> = (0..10_000).map(|i| format!("127.1.{}.{}/32", i / 256, i % 256)).collect();
    // The router reads each region's weight from its /v1/regions every second.
    let probe: Vec<String> = subnets[..200].to_vec();
    wait_for(Duration::from_secs(20), "the router learning the weights", || batch(dns, &probe).contains(&eu));
    let first = batch(dns, &subnets);
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &first {
        *count.entry(a.as_str()).or_default() += 1;
    }
    let to_us = count.get(us.as_str()).copied().unwrap_or(0) as f64 / subnets.len() as f64;
    let to_eu = count.get(eu.as_str()).copied().unwrap_or(0) as f64 / subnets.len() as f64;
    assert!((to_us - 0.9).abs() < 0.03 && (to_eu - 0.1).abs() < 0.03, "split {count:?}");
    // Affinity: the same subnets get the same answers again...
    let sample: Vec<String> = subnets.iter().step_by(10).cloned().collect();
    let expected: Vec<String> = first.iter().step_by(10).cloned().collect();
    assert_eq!(batch(dns, &sample), expected);
    // ...also when an unrelated region dies (its own clients move, these do not).
    demo.kill_region("ap-southeast-1");
    wait_for(Duration::from_secs(20), "SG leaving ap-southeast-1", || a_for(dns, "127.3.0.0/24") != ap);
    assert_eq!(batch(dns, &sample), expected);
}

#[test]
fn standalone_router_serves_the_demo_config_and_refuses_a_bad_one() {
    let demo = Demo::start(&["--router"]);
    let config = demo.state_dir.join("router.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["router", "--json", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start tickmesh router");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(v["event"], "router_up", "{v}");
    assert_eq!(v["name"], "md.tickmesh.test.");
    let dns: SocketAddr = v["dns_addr"].as_str().unwrap().parse().unwrap();
    assert_ne!(Some(dns), demo.dns_addr);
    assert_eq!(a_for(dns, "127.2.0.0/24"), ip_of(&demo, "eu-west-1"));
    assert_eq!(a_for(dns, "127.3.0.0/24"), ip_of(&demo, "ap-southeast-1"));
    let _ = child.kill();
    let _ = child.wait();

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"md.tickmesh.test.\"\nttl_s = 0\n[[regions]]\nregion = \"us-east-1\"\nhttp_url = \"ftp://x\"\n\
         [[subnets]]\ncidr = \"10.0.0.0/8\"\ncountry = \"ZZ\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh")).args(["router", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["3 problem(s)", "ttl_s = 0", "http://", "ZZ"] {
        assert!(err.contains(want), "{want} missing from: {err}");
    }
}
