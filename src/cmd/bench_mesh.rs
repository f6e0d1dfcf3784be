//! `tickmesh bench mesh`: what the QUIC mesh adds on one link, next to a plain TCP relay of
//! the same records.
//!
//! Two in-process mesh endpoints (region `a` home to one source, region `b` subscribed),
//! optionally through the user-space WAN relay with a round-trip time (`--rtt-ms`):
//! * **latency**: `a` appends records at `--rate` per second (`ts_ingest` = now); `b`
//!   records `now - ts_ingest - one_way` per record: the latency the mesh adds over the
//!   emulated link delay (p50, p99, p99.9).
//! * **throughput**: `a` holds `--records` records before `b` subscribes; records per
//!   second from `b`'s subscription to the last record (catch-up is the same path as live).
//!   Also printed: the machine's load and hypervisor steal during the run (tails follow
//!   them), and how late the WAN relay itself forwarded (its error, inside the figure).
//! * **TCP latency**: the same records at the same rate and pacing over one TCP connection,
//!   through a user-space proxy holding each chunk for the one-way delay: the floor this
//!   machine puts under any transport (written from the producing thread, so one thread
//!   hand-off fewer than the mesh).
//! * **TCP throughput**: the same framed records over one loopback TCP connection, written
//!   in 64 KiB batches, read and validated (`access_untrusted`) on the other side.

use anyhow::Context;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tickmesh_codec::{frame, Body, InstrumentId, Meta, Px, Qty, Record, Seq, Side, SourceId, Symbol, Trade};
use tickmesh_replicate::tls::{self, Credentials, TlsFiles};
use tickmesh_replicate::{Delivery, MemoryStore, Mesh, MeshConfig, MeshParams, PeerConfig, RecordStore, Role};

/// Options of `tickmesh bench mesh`.
#[derive(Debug, Clone)]
pub struct MeshBenchOptions {
    /// Records per second in the latency run.
    pub rate: u32,
    /// Seconds of the latency run.
    pub seconds: u64,
    /// Emulated round-trip time of the link (0: plain loopback).
    pub rtt_ms: u32,
    /// Records of the throughput runs.
    pub records: u64,
    /// Scheduling of both endpoints' `replicate-io` threads.
    pub io_thread: tickmesh_replicate::ThreadSched,
}

fn record(src: SourceId, seq: u64, now: u64) -> Vec<u8> {
    let meta = Meta {
        src,
        seq: Seq(seq),
        instrument: InstrumentId(1),
        sym: Symbol::new("AAPL").expect("constant symbol"),
        ts_event: now,
        ts_ingest: now,
    };
    let body =
        Body::Trade(Trade { px: Px::from_scaled(10_025, 2), qty: Qty::from_units(1), side: Side::Buy, match_id: seq });
    Record::new(meta, body).to_bytes()
}

struct Pair {
    _a: Mesh,
    _b: Mesh,
    appended: tokio::sync::watch::Sender<u64>,
    _relay: Option<tickmesh_replicate::wan::Relay>,
}

/// Starts `a` (serving `store`) and `b` (subscribing); `sink` sees every batch `b` gets.
fn pair(
    store: Arc<MemoryStore>,
    src: SourceId,
    opts: &MeshBenchOptions,
    sink: tickmesh_replicate::Inbound,
) -> anyhow::Result<Pair> {
    let rtt_ms = opts.rtt_ms;
    let mut problems = Vec::new();
    opts.io_thread.validate_named("--io-slice-us", "--realtime-priority", &mut problems);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    let ca = tls::generate_ca("bench CA")?;
    let creds =
        |r: &str| -> anyhow::Result<Credentials> { Ok(Credentials::from_pem(&ca.cert, &tls::issue(&ca, r, 1)?)?) };
    let files = TlsFiles { ca_cert: "-".into(), cert: "-".into(), key: "-".into() };
    let free =
        || -> anyhow::Result<std::net::SocketAddr> { Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?) };
    let (a_addr, b_addr) = (free()?, free()?);
    let relay = if rtt_ms > 0 {
        Some(tickmesh_replicate::wan::Relay::start(a_addr, tickmesh_replicate::wan::LinkModel::from_rtt_ms(rtt_ms), 1)?)
    } else {
        None
    };
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let cfg = |listen, peer: &str, addr: String| MeshConfig {
        listen,
        peers: vec![PeerConfig { region: peer.into(), addr }],
        tls: files.clone(),
        reconnect_ms: 50,
        upstream: None,
        io_thread: opts.io_thread,
    };
    let params = |region: &str,
                  cfg: MeshConfig,
                  store: Arc<dyn RecordStore>,
                  home: Vec<SourceId>,
                  inbound|
     -> anyhow::Result<MeshParams> {
        Ok(MeshParams {
            region: region.into(),
            role: Role::All,
            cfg,
            creds: creds(region)?,
            store,
            home,
            appended: rx.clone(),
            inbound,
            policy: Arc::new(tickmesh_replicate::AllowAll),
            audit: Arc::new(tickmesh_replicate::NoAudit),
        })
    };
    let a =
        Mesh::start(params("a", cfg(a_addr, "b", b_addr.to_string()), Arc::new(store), vec![src], Arc::new(|_| {}))?)?;
    let to_a = relay.as_ref().map(|r| r.addr()).unwrap_or(a_addr).to_string();
    let b_store: Arc<dyn RecordStore> = Arc::new(Arc::new(MemoryStore::default()));
    let b = Mesh::start(params("b", cfg(b_addr, "a", to_a), b_store, vec![], sink)?)?;
    Ok(Pair { _a: a, _b: b, appended: tx, _relay: relay })
}

fn count_frames(b: &[u8], mut each: impl FnMut(&[u8])) -> u64 {
    let mut rest = b;
    let mut n = 0;
    while let Ok(Some((rec, tail))) = frame::split_frame(rest) {
        each(rec);
        n += 1;
        rest = tail;
    }
    n
}

/// All CPUs' time so far, and the part of it the hypervisor gave to other guests
/// (`/proc/stat` "steal"), in clock ticks; None off Linux.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    Some((v.iter().take(8).sum(), *v.get(7)?))
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Added latency of plain TCP carrying the same records at the same rate and pacing, over
/// the same one-way delay (a user-space proxy that holds each chunk `one_way_ns`): the
/// floor this machine puts under any transport. Every thread on the path gets the same
/// scheduling as the mesh's `replicate-io`.
fn tcp_latency(opts: &MeshBenchOptions, one_way_ns: u64) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let sched = opts.io_thread;
    let prep = move || {
        let _ = sched.apply_to_current("bench");
        tickmesh_replicate::sched::precise_timers();
    };
    let src = SourceId::new("BENCH.TCP")?;
    let total = u64::from(opts.rate) * opts.seconds;
    let sink = std::net::TcpListener::bind("127.0.0.1:0")?;
    let sink_addr = sink.local_addr()?;
    let reader = std::thread::spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        prep();
        let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
        let (s, _) = sink.accept()?;
        read_records(s, total, |now, r| {
            let _ = h.record(now.saturating_sub(r.ts_ingest()).saturating_sub(one_way_ns) / 1000);
        })?;
        Ok(h)
    });
    // With a delay: sender -> proxy (holds each chunk one_way) -> reader.
    let to = if one_way_ns > 0 {
        let front = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = front.local_addr()?;
        std::thread::spawn(move || -> anyhow::Result<()> {
            let (mut inb, _) = front.accept()?;
            let mut out = std::net::TcpStream::connect(sink_addr)?;
            out.set_nodelay(true)?;
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let fwd = std::thread::spawn(move || -> anyhow::Result<()> {
                prep();
                // Aimed like the WAN relay's sends, so both links are equally late.
                let mut early = tickmesh_replicate::wan::Early::default();
                while let Ok((at, chunk)) = rx.recv() {
                    let now = Instant::now();
                    if at > now + early.by() {
                        std::thread::sleep(at - now - early.by());
                    }
                    early.sent(Instant::now(), at);
                    out.write_all(&chunk)?;
                }
                Ok(())
            });
            prep();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = inb.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                let _ = tx.send((Instant::now() + Duration::from_nanos(one_way_ns), buf[..k].to_vec()));
            }
            drop(tx);
            fwd.join().map_err(|_| anyhow::anyhow!("tcp proxy panicked"))?
        });
        addr
    } else {
        sink_addr
    };
    let mut s = std::net::TcpStream::connect(to)?;
    s.set_nodelay(true)?;
    let mut pacer = tickmesh_ingest::Pacer::new(opts.rate, tickmesh_codec::now_ns());
    let (mut seq, mut out) = (0u64, Vec::with_capacity(64 * 1024));
    while seq < total {
        let due = pacer.due(tickmesh_codec::now_ns()).min(total - seq);
        out.clear();
        for _ in 0..due {
            seq += 1;
            frame::put_frame(&record(src, seq, tickmesh_codec::now_ns()), &mut out);
        }
        if !out.is_empty() {
            s.write_all(&out)?;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    reader.join().map_err(|_| anyhow::anyhow!("tcp reader panicked"))?
}

/// Reads framed records from `s` until `want` have come, validating each
/// (`access_untrusted`) and handing it to `each` with the time its bytes were read.
fn read_records(
    mut s: std::net::TcpStream,
    want: u64,
    mut each: impl FnMut(u64, tickmesh_codec::RecordRef<'_>),
) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending: Vec<u8> = Vec::with_capacity(512 * 1024);
    let mut n = 0u64;
    while n < want {
        let k = s.read(&mut buf)?;
        anyhow::ensure!(k > 0, "tcp closed early");
        let now = tickmesh_codec::now_ns();
        pending.extend_from_slice(&buf[..k]);
        let mut rest: &[u8] = &pending;
        while let Ok(Some((rec, tail))) = frame::split_frame(rest) {
            each(now, tickmesh_codec::access_untrusted(rec)?);
            n += 1;
            rest = tail;
        }
        let used = pending.len() - rest.len();
        pending.drain(..used);
    }
    Ok(n)
}

/// p50, p99, p99.9 and max of a histogram of microseconds, as the report prints them.
fn quantiles(h: &hdrhistogram::Histogram<u64>) -> String {
    format!("p50 {}  p99 {}  p99.9 {}  max {}", pct(h, 0.50), pct(h, 0.99), pct(h, 0.999), h.max())
}

/// A quantile of a histogram of microseconds.
fn pct(h: &hdrhistogram::Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

/// Runs the benchmark and prints its table.
pub fn run(opts: MeshBenchOptions) -> anyhow::Result<()> {
    let src = SourceId::new("BENCH.MESH")?;
    let one_way_ns = u64::from(opts.rtt_ms) * 500_000;

    // Latency at a fixed rate.
    let store = Arc::new(MemoryStore::default());
    let new_hist = || hdrhistogram::Histogram::<u64>::new(3).context("histogram");
    // Whole added latency, then its three parts: append to the batch made (`sent_ns`: the
    // sender's wake-up and batching), batch made to received (quinn both ends and the link,
    // less the emulated delay), received to handed to the node.
    let hist = Arc::new(Mutex::new([new_hist()?, new_hist()?, new_hist()?, new_hist()?]));
    let got = Arc::new(AtomicU64::new(0));
    let (h2, g2) = (hist.clone(), got.clone());
    let p = pair(
        store.clone(),
        src,
        &opts,
        Arc::new(move |d: Delivery| {
            let now = tickmesh_codec::now_ns();
            let mut h = h2.lock().unwrap_or_else(|e| e.into_inner());
            let wire = d.hop_ns().saturating_sub(one_way_ns) / 1000;
            let handed = now.saturating_sub(d.received_ns) / 1000;
            let n = count_frames(&d.frames, |rec| {
                if let Ok(r) = tickmesh_codec::access_untrusted(rec) {
                    let added = now.saturating_sub(r.ts_ingest()).saturating_sub(one_way_ns);
                    let _ = h[0].record(added / 1000);
                    let _ = h[1].record(d.sent_ns.saturating_sub(r.ts_ingest()) / 1000);
                    let _ = h[2].record(wire);
                    let _ = h[3].record(handed);
                }
            });
            g2.fetch_add(n, Ordering::Relaxed);
        }),
    )?;
    // Let the link come up and b subscribe before the clock starts.
    store.append(&record(src, 1, tickmesh_codec::now_ns()))?;
    p.appended.send_replace(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.load(Ordering::Relaxed) < 1 {
        anyhow::ensure!(Instant::now() < deadline, "the mesh link did not come up in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    hist.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().for_each(|h| h.reset());
    if let Some(r) = &p._relay {
        r.take_lateness();
    }
    let total = u64::from(opts.rate) * opts.seconds;
    let ticks_before = cpu_ticks();
    let start = Instant::now();
    let mut seq = 1;
    let mut pacer = tickmesh_ingest::Pacer::new(opts.rate, tickmesh_codec::now_ns());
    while seq <= total {
        let now = tickmesh_codec::now_ns();
        let due = pacer.due(now);
        for _ in 0..due {
            seq += 1;
            store.append(&record(src, seq, tickmesh_codec::now_ns()))?;
        }
        if due > 0 {
            p.appended.send_replace(seq);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.load(Ordering::Relaxed) < seq {
        anyhow::ensure!(Instant::now() < deadline, "b received {} of {seq} records", got.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent_for = start.elapsed();
    let (load, ticks_after) = (load_average(), cpu_ticks());
    let relay_late = p._relay.as_ref().map(|r| r.take_lateness());
    drop(p);
    let [h, h_batch, h_wire, h_handed] = hist.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // The same records, rate and delay over plain TCP.
    let h_tcp = tcp_latency(&opts, one_way_ns)?;

    // Throughput: catch-up of a preloaded store.
    let store = Arc::new(MemoryStore::default());
    let now = tickmesh_codec::now_ns();
    let mut bytes_total = 0u64;
    for s in 1..=opts.records {
        let r = record(src, s, now);
        bytes_total += r.len() as u64;
        store.append(&r)?;
    }
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Mutex::new(None::<Instant>));
    let (g2, d2, want) = (got.clone(), done.clone(), opts.records);
    let t0 = Instant::now();
    let p = pair(
        store,
        src,
        &opts,
        Arc::new(move |d: Delivery| {
            let k = count_frames(&d.frames, |_| {});
            let n = g2.fetch_add(k, Ordering::Relaxed) + k;
            if n >= want {
                *d2.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
        }),
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let end = loop {
        if let Some(t) = *done.lock().unwrap_or_else(|e| e.into_inner()) {
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "throughput run: b received {} of {}",
            got.load(Ordering::Relaxed),
            opts.records
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(p);
    let mesh_secs = (end - t0).as_secs_f64();

    // The same records over plain TCP, validated on receipt.
    let mut framed = Vec::with_capacity(bytes_total as usize + 4 * opts.records as usize);
    for s in 1..=opts.records {
        frame::put_frame(&record(src, s, now), &mut framed);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let want = opts.records;
    let reader = std::thread::spawn(move || -> anyhow::Result<u64> {
        let (s, _) = listener.accept()?;
        read_records(s, want, |_, _| {})
    });
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    for chunk in framed.chunks(64 * 1024) {
        s.write_all(chunk)?;
    }
    let n = reader.join().map_err(|_| anyhow::anyhow!("tcp reader panicked"))??;
    let tcp_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(n == opts.records);

    println!("tickmesh bench mesh: one link a -> b, quinn + mutual TLS, in-process, loopback");
    println!(
        "latency: {} records at {} rec/s over {:.1} s, emulated rtt {} ms (one way {} ms subtracted)",
        seq,
        opts.rate,
        sent_for.as_secs_f64(),
        opts.rtt_ms,
        opts.rtt_ms / 2
    );
    // Tail latency on a shared machine follows its noise: say how much there was.
    let steal = match (ticks_before, ticks_after) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => format!("{:.1} %", (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64),
        _ => "unknown".into(),
    };
    println!(
        "  machine during the run: load average {}, CPU time stolen by the hypervisor {steal}; replicate-io threads: {}",
        load.map(|l| format!("{l:.2}")).unwrap_or_else(|| "unknown".into()),
        match (opts.io_thread.realtime_priority, opts.io_thread.slice_us) {
            (Some(p), _) => format!("SCHED_FIFO {p}"),
            (None, 0) => "kernel default slice".into(),
            (None, us) => format!("{us} µs slice"),
        }
    );
    println!("  added latency us: {}", quantiles(&h));
    for (name, h) in
        [("append to batch sent", &h_batch), ("batch sent to received", &h_wire), ("received to handed", &h_handed)]
    {
        println!("    {name:<24} {}", quantiles(h));
    }
    if let Some(h) = &relay_late {
        println!("    (WAN emulator's own lateness, in the above: {})", quantiles(h));
    }
    println!("  plain TCP, same records, rate and delay: added latency us: {}", quantiles(&h_tcp));
    println!(
        "throughput: {} records ({} MB)\n  mesh (catch-up, validated): {:.2} M rec/s\n  plain TCP (validated):      {:.2} M rec/s",
        opts.records,
        bytes_total / 1_000_000,
        opts.records as f64 / mesh_secs / 1e6,
        opts.records as f64 / tcp_secs / 1e6
    );
    Ok(())
}
