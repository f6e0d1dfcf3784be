//! `tickmesh ingest FILE --format F --emit jsonl [--book] [--stats]`: decode a capture with
//! the same decoders a node runs, sequence it, and print the normalized records as JSON
//! lines in the protocol's data-message shapes, so any capture can be checked against any
//! other parser.

use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;
use tickmesh_codec::book::LevelBook;
use tickmesh_codec::{json, Record, RecordKind, Seq, SourceId, Symbol};
use tickmesh_ingest::{Decoder, Sequencer};

/// The capture formats `tickmesh ingest` reads.
pub const FORMATS: &str = "itch, moldudp64-pcap, dbn, coinbase, binance, lobster";

/// Options of `tickmesh ingest`.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The capture.
    pub file: std::path::PathBuf,
    /// Its format.
    pub format: String,
    /// Print `book_state` lines after each record that changes a book.
    pub book: bool,
    /// Print counts per record kind and the decode rate to standard error.
    pub stats: bool,
    /// Source id (default per format).
    pub source: Option<String>,
    /// Trading date (YYYY-MM-DD) for formats whose times count from midnight.
    pub date: Option<String>,
}

/// Sequences records, prints them, keeps books for `--book`, counts kinds.
struct Printer<W: Write> {
    out: W,
    seq: Option<Sequencer>,
    books: HashMap<(SourceId, Symbol), LevelBook>,
    book: bool,
    kinds: BTreeMap<&'static str, u64>,
    line: Vec<u8>,
    records: u64,
}

impl<W: Write> Printer<W> {
    fn record(&mut self, rec: &Record) -> std::io::Result<()> {
        let mut rec = *rec;
        let seq = self.seq.get_or_insert_with(|| Sequencer::new(rec.header.src, Seq(0)));
        seq.stamp(&mut rec, tickmesh_codec::now_ns());
        let bytes = rec.to_bytes();
        // SAFETY: `bytes` was produced by `Record::encode` just above.
        let r = unsafe { tickmesh_codec::access_trusted(&bytes) };
        self.line.clear();
        json::write_json(&r, &mut self.line);
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
        *self.kinds.entry(json::type_name(r.kind())).or_default() += 1;
        self.records += 1;
        if self.book && r.kind() == RecordKind::Level {
            if let tickmesh_codec::Body::Level(l) = rec.body {
                let b = self.books.entry((rec.header.src, rec.header.sym)).or_default();
                b.set(l.side, l.px, l.qty, l.count);
                self.line.clear();
                book_state(&rec, b, &mut self.line);
                self.out.write_all(&self.line)?;
            }
        }
        Ok(())
    }
}

fn book_state(rec: &Record, b: &LevelBook, out: &mut Vec<u8>) {
    use tickmesh_codec::Side;
    out.extend_from_slice(b"{\"type\":\"book_state\",\"src\":");
    json::write_str(rec.header.src.as_str(), out);
    out.extend_from_slice(format!(",\"seq\":{},\"sym\":", rec.header.seq.0).as_bytes());
    json::write_str(rec.header.sym.as_str(), out);
    for (name, side) in [("bids", Side::Buy), ("asks", Side::Sell)] {
        out.extend_from_slice(format!(",\"{name}\":").as_bytes());
        json::write_levels(b.levels(side).map(|(p, q, _)| (p, q)), out);
    }
    out.extend_from_slice(b"}\n");
}

/// Feeds a file to a decoder in 1 MiB chunks.
fn feed_file(
    path: &Path,
    dec: &mut dyn Decoder,
    mut on: impl FnMut(&Record) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut recs = Vec::with_capacity(4096);
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        dec.feed(&buf[..n], &mut recs).with_context(|| format!("decoding {}", path.display()))?;
        for r in recs.drain(..) {
            on(&r)?;
        }
    }
    dec.finish(&mut recs).with_context(|| format!("decoding {}", path.display()))?;
    for r in recs.drain(..) {
        on(&r)?;
    }
    Ok(())
}

/// Runs `tickmesh ingest`.
pub fn run(opts: IngestOptions) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut p = Printer {
        out: BufWriter::with_capacity(1 << 20, stdout.lock()),
        seq: None,
        books: HashMap::new(),
        book: opts.book,
        kinds: BTreeMap::new(),
        line: Vec::with_capacity(512),
        records: 0,
    };
    let source = |default: &str| -> anyhow::Result<SourceId> {
        SourceId::new(opts.source.as_deref().unwrap_or(default)).map_err(anyhow::Error::from)
    };
    let start = Instant::now();
    let venue_counts: Vec<(String, u64)>;
    match opts.format.as_str() {
        "coinbase" | "binance" => {
            let src = source(if opts.format == "coinbase" { "COINBASE" } else { "BINANCE" })?;
            let mut err = None;
            let summary = tickmesh_ingest::replay::decode_capture(&opts.file, src, |r| {
                if err.is_none() {
                    if let Err(e) = p.record(r) {
                        err = Some(e);
                    }
                }
            })
            .with_context(|| format!("decoding {}", opts.file.display()))?;
            if let Some(e) = err {
                return Err(e.into());
            }
            for (i, e) in summary.errors.iter().take(5) {
                eprintln!("{}: message {i} refused: {e}", opts.file.display());
            }
            venue_counts = summary.counts;
        }
        "lobster" => {
            let recs = decode_lobster(&opts.file, opts.source.as_deref())?;
            for r in &recs {
                p.record(r)?;
            }
            venue_counts = Vec::new();
        }
        other => {
            let mut dec = make_decoder(other, &opts, source)?;
            feed_file(&opts.file, dec.as_mut(), |r| p.record(r))?;
            venue_counts = dec.message_counts();
        }
    }
    p.out.flush()?;
    if opts.stats {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{}: {} records in {:.3} s ({:.0} records/s)",
            opts.file.display(),
            p.records,
            secs,
            p.records as f64 / secs.max(1e-9)
        );
        for (k, n) in &p.kinds {
            eprintln!("  {k:<14} {n}");
        }
        if !venue_counts.is_empty() {
            eprintln!("venue messages:");
            for (k, n) in &venue_counts {
                eprintln!("  {k:<14} {n}");
            }
        }
    }
    Ok(())
}

/// Decodes a whole capture into records (seq unset), for a node's capture feed.
pub fn decode_all(format: &str, path: &Path, source: Option<&str>, date: Option<&str>) -> anyhow::Result<Vec<Record>> {
    let opts = IngestOptions {
        file: path.to_owned(),
        format: format.to_owned(),
        book: false,
        stats: false,
        source: source.map(str::to_owned),
        date: date.map(str::to_owned),
    };
    let src = |default: &str| -> anyhow::Result<SourceId> {
        SourceId::new(source.unwrap_or(default)).map_err(anyhow::Error::from)
    };
    let mut out = Vec::new();
    match format {
        "coinbase" | "binance" => {
            let id = src(if format == "coinbase" { "COINBASE" } else { "BINANCE" })?;
            tickmesh_ingest::replay::decode_capture(path, id, |r| out.push(*r))
                .with_context(|| format!("decoding {}", path.display()))?;
        }
        "lobster" => out = decode_lobster(path, source)?,
        other => {
            let mut dec = make_decoder(other, &opts, src)?;
            feed_file(path, dec.as_mut(), |r| {
                out.push(*r);
                Ok(())
            })?;
        }
    }
    Ok(out)
}

/// LOBSTER: the message file, reconciled with its orderbook file when it lies beside it
/// (the level-1 message file alone cannot say what rests below the best price).
fn decode_lobster(path: &Path, source: Option<&str>) -> anyhow::Result<Vec<Record>> {
    let book = tickmesh_ingest::lobster::orderbook_path_for(path).filter(|p| p.exists());
    if book.is_none() {
        eprintln!("{}: no orderbook file beside it; quotes are derived from messages alone", path.display());
    }
    let mut out = Vec::new();
    tickmesh_ingest::lobster::decode_files(path, book.as_deref(), &mut out)
        .with_context(|| format!("decoding {}", path.display()))?;
    if let Some(s) = source {
        let id = SourceId::new(s)?;
        for r in &mut out {
            r.header.src = id;
        }
    }
    Ok(out)
}

fn make_decoder(
    format: &str,
    opts: &IngestOptions,
    source: impl Fn(&str) -> anyhow::Result<SourceId>,
) -> anyhow::Result<Box<dyn Decoder>> {
    use tickmesh_ingest::itch::{EasternDate, FileDecoder, NormalizerConfig};
    let date = match &opts.date {
        Some(d) => Some(EasternDate::parse(d).with_context(|| format!("--date {d}: use YYYY-MM-DD"))?),
        None => None,
    };
    Ok(match format {
        "itch" => {
            let cfg = NormalizerConfig { source: source("XNAS.ITCH")?, date, ..Default::default() };
            Box::new(FileDecoder::for_path(&opts.file.to_string_lossy(), cfg)?)
        }
        "moldudp64-pcap" => {
            let itch = NormalizerConfig { source: source("XNAS.ITCH")?, date, ..Default::default() };
            Box::new(tickmesh_ingest::pcap::PcapDecoder::new(tickmesh_ingest::pcap::PcapConfig { itch, port: None }))
        }
        "dbn" => {
            let mut d = tickmesh_ingest::dbn_feed::DbnDecoder::new();
            if let Some(s) = &opts.source {
                d = d.with_source(SourceId::new(s)?);
            }
            Box::new(d)
        }
        other => bail!("--format {other} is not one of {FORMATS}"),
    })
}
