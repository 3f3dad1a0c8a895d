//! The Benchmarks page's pictures, drawn as SVG from the same results file the table comes from
//! (`latest.json`): throughput by review size, and the latency distribution at a fixed rate, each
//! for sidecar-injector and the Go baseline. `bench run` and `bench render` write them next to
//! `latest.md`; the book includes them inline.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::corpus::Size;
use crate::report::{Report, Stats};

/// The throughput picture's file name.
pub const THROUGHPUT: &str = "throughput.svg";
/// The latency picture's file name.
pub const LATENCY: &str = "latency.svg";

const OURS: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const GO: RGBColor = RGBColor(0xd9, 0x5f, 0x02);
const SIZE: (u32, u32) = (760, 420);

/// Writes both pictures into `dir`.
///
/// # Errors
/// When the report lacks the figures a picture needs, or a file cannot be written.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join(THROUGHPUT), throughput(report)?)?;
    std::fs::write(dir.join(LATENCY), latency(report)?)?;
    Ok(())
}

/// One server's medians (with min and max) along a picture's x axis.
struct Series {
    name: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(usize, Stats)>,
}

fn stats(report: &Report, id: &str, go: bool) -> Option<Stats> {
    let figure = report.figure(id)?;
    if go { figure.go.clone() } else { figure.ours.clone() }
}

/// Max throughput (p99 within the size's bound) by review size, log scale.
///
/// # Errors
/// When the report has no throughput figures.
pub fn throughput(report: &Report) -> anyhow::Result<String> {
    let series: Vec<Series> = [("sidecar-injector", OURS, false), ("Go baseline", GO, true)]
        .into_iter()
        .map(|(name, color, go)| Series {
            name: name.to_owned(),
            color,
            dashed: false,
            points: Size::ALL
                .iter()
                .enumerate()
                .filter_map(|(i, size)| Some((i, stats(report, &format!("max_rps_{}", size.name()), go)?)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let labels: Vec<String> = Size::ALL.iter().map(|s| format!("{} review", s.name())).collect();
    draw(
        "Max throughput on one core, by review size (median, min–max of the runs)",
        "reviews/s (log scale)",
        &labels,
        &series,
    )
}

/// Latency percentiles at the fixed rates of the 2k and 10k runs, log scale.
///
/// # Errors
/// When the report has no fixed-rate latency figures.
pub fn latency(report: &Report) -> anyhow::Result<String> {
    let quantiles = [("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")];
    let mut series = Vec::new();
    for size in [Size::K2, Size::K10] {
        let rate = report
            .figure(&format!("p50_ms_{}", size.name()))
            .map(|f| f.section.split(" at a fixed ").nth(1).unwrap_or("").replace(" (open loop)", ""))
            .unwrap_or_default();
        for (server, color, go) in [("sidecar-injector", OURS, false), ("Go baseline", GO, true)] {
            let points: Vec<(usize, Stats)> = quantiles
                .iter()
                .enumerate()
                .filter_map(|(i, (_, id))| Some((i, stats(report, &format!("{id}_{}", size.name()), go)?)))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: format!("{server}, {} reviews at {rate}", size.name()),
                    color,
                    dashed: size == Size::K10,
                    points,
                });
            }
        }
    }
    let labels: Vec<String> = quantiles.iter().map(|(name, _)| (*name).to_owned()).collect();
    draw(
        "Latency at a fixed rate, open loop (median, min–max of the runs)",
        "ms from the scheduled send (log scale)",
        &labels,
        &series,
    )
}

fn draw(title: &str, y_label: &str, x_labels: &[String], series: &[Series]) -> anyhow::Result<String> {
    let values = || series.iter().flat_map(|s| s.points.iter().map(|(_, p)| p)).filter(|p| p.min > 0.0);
    let low = values().map(|p| p.min).fold(f64::INFINITY, f64::min);
    let high = values().map(|p| p.max).fold(0.0, f64::max);
    anyhow::ensure!(low.is_finite() && high > 0.0, "no figures to draw for `{title}`");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        // Headroom above the highest figure for the legend.
        plot(&root, title, y_label, x_labels, series, (low / 2.0, high * 40.0))
            .map_err(|e| anyhow::anyhow!("drawing `{title}`: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("drawing `{title}`: {e}"))?;
    }
    Ok(svg)
}

fn plot(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    x_labels: &[String],
    series: &[Series],
    (low, high): (f64, f64),
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let last = x_labels.len().saturating_sub(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0..last).into_segmented(), (low..high).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(x_labels.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => x_labels.get(*i).cloned().unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .y_desc(y_label)
        .y_label_formatter(&|y| crate::report::sig(*y))
        .draw()?;
    for s in series {
        let style = ShapeStyle { color: s.color.to_rgba(), filled: true, stroke_width: 2 };
        let line: Vec<(SegmentValue<usize>, f64)> =
            s.points.iter().map(|(i, p)| (SegmentValue::CenterOf(*i), p.median)).collect();
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(line.clone(), 6, 4, style))?.label(&s.name).legend(
                move |(x, y)| plotters::element::DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, style),
            );
        } else {
            chart
                .draw_series(LineSeries::new(line.clone(), style))?
                .label(&s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart.draw_series(line.iter().map(|point| Circle::new(point.clone(), 3, style)))?;
        chart.draw_series(
            s.points
                .iter()
                .map(|(i, p)| ErrorBar::new_vertical(SegmentValue::CenterOf(*i), p.min, p.median, p.max, style, 8)),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_results_draw_both_pictures() {
        let report = crate::regress::load(&crate::runner::workspace_root().join("bench/results/latest.json")).unwrap();
        let throughput = throughput(&report).unwrap();
        let latency = latency(&report).unwrap();
        for svg in [&throughput, &latency] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
            assert!(!svg.contains("\n\n"), "a blank line would end the book's inline HTML block");
        }
        assert!(throughput.contains("sidecar-injector") && throughput.contains("Go baseline"));
        assert!(throughput.contains("1m review"));
        assert!(latency.contains("10k reviews at 1,000/s"), "{latency}");
        // One error bar per size and server: 4 sizes × 2 servers.
        assert!(throughput.matches("<polyline").count() >= 2, "{throughput}");
    }
}
