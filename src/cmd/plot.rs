//! Latency distributions as an SVG percentile plot (plotters, SVG backend).
//!
//! The SVG backend writes text as `<text>` elements and plotters (without its `ttf`
//! feature) estimates text sizes itself, so no system fonts or fontconfig are needed.

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// Plots each series' latency (µs, log scale) against the percentile, drawn as
/// 1/(1-q) on a log axis so p50, p90, p99, p99.9 and p99.99 are evenly spaced: the usual
/// way to read a tail.
pub fn percentile_plot(path: &Path, title: &str, series: &[(&str, &Histogram<u64>)]) -> anyhow::Result<()> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let mut pts = Vec::new();
            let mut x = 1.0f64;
            // Stop where the histogram no longer has a sample to tell the percentile apart.
            while x <= 100_000.0 && x <= h.len() as f64 {
                let q = 1.0 - 1.0 / x;
                pts.push((x, (h.value_at_quantile(q) as f64 / 1000.0).max(0.01)));
                x *= 1.25;
            }
            pts.push((x.min(100_000.0), (h.max() as f64 / 1000.0).max(0.01)));
            (*name, pts)
        })
        .collect();
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for (_, pts) in &lines {
        for &(_, y) in pts {
            lo = lo.min(y);
            hi = hi.max(y);
        }
    }
    if lines.is_empty() {
        (lo, hi) = (0.1, 10.0);
    }
    let (lo, hi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil()).max(lo * 10.0));
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..100_000f64).log_scale(), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 1.0 / x);
            if q < 99.0 {
                format!("p{q:.0}")
            } else {
                format!("p{}", format!("{q:.4}").trim_end_matches('0').trim_end_matches('.'))
            }
        })
        .y_label_formatter(&|y| if *y >= 1.0 { format!("{y:.0}") } else { format!("{y}") })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e)).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let mut b = a.clone();
        for i in 1..=10_000u64 {
            a.record(i * 100).unwrap();
            b.record(1_000_000 + i * 1000).unwrap();
        }
        let empty = a.clone();
        let mut empty = empty;
        empty.reset();
        let p = dir.path().join("x.svg");
        percentile_plot(&p, "t", &[("journal", &a), ("mesh (net)", &b), ("none", &empty)]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>'))
            .map(|(_, r)| r.split('<').next().unwrap_or("").trim())
            .collect();
        assert!(texts.contains(&"journal") && texts.contains(&"mesh (net)"), "legend missing: {texts:?}");
        assert!(!texts.contains(&"none"), "an empty series has no line");
        assert!(texts.contains(&"p99.9") || texts.iter().any(|t| t.starts_with("p99")), "{texts:?}");
        assert!(svg.contains("polyline") || svg.contains("<path"), "no lines drawn");
    }
}
