//! The two SVG charts of a run, written by hand: horizontal bars of throughput as a ratio to
//! the ceiling, and latency percentiles on a logarithmic axis. Text is SVG `<text>` (the
//! viewer's sans-serif font), so nothing here needs a font file or a plotting library.

use std::fmt::Write as _;

/// One scenario's numbers at one concurrency, as the charts need them.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub(crate) scenario: String,
    pub(crate) connections: u32,
    /// Requests/s divided by the ceiling's of the same run, same origin delay.
    pub(crate) ratio: f64,
    /// p50, p95, p99, p99.9 in milliseconds.
    pub(crate) latency: [f64; 4],
}

const SERIES: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];
const PERCENTILES: [&str; 4] = ["p50", "p95", "p99", "p99.9"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Scenarios in first-seen order, and the concurrencies in first-seen order.
fn axes(points: &[Point]) -> (Vec<String>, Vec<u32>) {
    let mut scenarios: Vec<String> = Vec::new();
    let mut connections: Vec<u32> = Vec::new();
    for p in points {
        if !scenarios.contains(&p.scenario) {
            scenarios.push(p.scenario.clone());
        }
        if !connections.contains(&p.connections) {
            connections.push(p.connections);
        }
    }
    (scenarios, connections)
}

fn find<'a>(points: &'a [Point], scenario: &str, c: u32) -> Option<&'a Point> {
    points
        .iter()
        .find(|p| p.scenario == scenario && p.connections == c)
}

fn header(out: &mut String, width: f64, height: f64, title: &str) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{:.0}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\" \
         font-weight=\"bold\">{}</text>",
        width / 2.0,
        escape(title)
    );
}

fn legend(out: &mut String, x: f64, y: f64, entries: &[(String, &str)]) {
    let mut x = x;
    for (label, color) in entries {
        let _ = writeln!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y - 10.0,
            x + 16.0,
            y,
            escape(label)
        );
        x += 24.0 + 7.5 * label.len() as f64;
    }
}

/// Throughput as a ratio to the ceiling: one row per scenario, one bar per concurrency,
/// a dashed line at 1.0.
pub(crate) fn throughput_svg(points: &[Point], title: &str) -> String {
    let (scenarios, connections) = axes(points);
    let label_w = 230.0;
    let plot_w = 560.0;
    let bar_h = 11.0;
    let row_h = bar_h * connections.len() as f64 + 8.0;
    let top = 58.0;
    let height = top + row_h * scenarios.len() as f64 + 40.0;
    let width = label_w + plot_w + 70.0;
    let max = points
        .iter()
        .map(|p| p.ratio)
        .filter(|r| r.is_finite())
        .fold(1.0_f64, f64::max);
    let step = [0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|step| max / step <= 8.0)
        .unwrap_or(20.0);
    let max = (max / step).ceil() * step + step / 2.0;
    let x_of = |v: f64| label_w + plot_w * (v / max);

    let mut out = String::new();
    header(&mut out, width, height, title);
    let entries: Vec<(String, &str)> = connections
        .iter()
        .zip(SERIES)
        .map(|(c, color)| (format!("{c} connections"), color))
        .collect();
    legend(&mut out, label_w, 44.0, &entries);
    let bottom = top + row_h * scenarios.len() as f64;
    // Grid and axis labels every `step`.
    let mut tick = 0.0;
    while tick <= max + 1e-9 {
        let x = x_of(tick);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}×</text>",
            bottom + 16.0,
            trim_ratio(tick)
        );
        tick += step;
    }
    for (i, scenario) in scenarios.iter().enumerate() {
        let y0 = top + row_h * i as f64 + 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y0 + row_h / 2.0,
            escape(scenario)
        );
        for (j, &c) in connections.iter().enumerate() {
            let Some(p) = find(points, scenario, c).filter(|p| p.ratio.is_finite()) else {
                continue;
            };
            let y = y0 + bar_h * j as f64;
            let _ = writeln!(
                out,
                "<rect x=\"{label_w:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{:.2}</text>",
                x_of(p.ratio) - label_w,
                bar_h - 1.0,
                SERIES[j % SERIES.len()],
                x_of(p.ratio) + 3.0,
                y + bar_h - 2.0,
                p.ratio
            );
        }
    }
    let one = x_of(1.0);
    let _ = writeln!(
        out,
        "<line x1=\"{one:.1}\" y1=\"{top:.1}\" x2=\"{one:.1}\" y2=\"{bottom:.1}\" stroke=\"black\" \
         stroke-dasharray=\"4 3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">requests/s ÷ the ceiling (same run, same origin delay)</text>\n</svg>",
        label_w + plot_w / 2.0,
        bottom + 34.0
    );
    out
}

/// Latency percentiles on a log axis: one panel per concurrency, one row per scenario,
/// p50 → p99.9 joined by a line.
pub(crate) fn latency_svg(points: &[Point], title: &str) -> String {
    let (scenarios, connections) = axes(points);
    let label_w = 230.0;
    let panel_w = 330.0;
    let gap = 30.0;
    let row_h = 18.0;
    let top = 76.0;
    let bottom = top + row_h * scenarios.len() as f64;
    let height = bottom + 44.0;
    let width = label_w + (panel_w + gap) * connections.len() as f64 + 10.0;
    let values = points
        .iter()
        .flat_map(|p| p.latency)
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi { (0.1, 100.0) } else { (lo, hi) };
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    let mut out = String::new();
    header(&mut out, width, height, title);
    let entries: Vec<(String, &str)> = PERCENTILES
        .iter()
        .zip(SERIES)
        .map(|(p, color)| (p.to_string(), color))
        .collect();
    legend(&mut out, label_w, 44.0, &entries);
    for (i, scenario) in scenarios.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            top + row_h * i as f64 + row_h / 2.0 + 4.0,
            escape(scenario)
        );
    }
    for (k, &c) in connections.iter().enumerate() {
        let x0 = label_w + (panel_w + gap) * k as f64;
        let x_of = |v: f64| x0 + panel_w * (v.log10() - lo.log10()) / (hi.log10() - lo.log10());
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{c} connections</text>",
            x0 + panel_w / 2.0,
            top - 8.0
        );
        // Decades, with 2× and 5× minor lines.
        let mut decade = lo;
        while decade <= hi * 1.0001 {
            for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
                let v = decade * m;
                if v > hi * 1.0001 {
                    break;
                }
                let x = x_of(v);
                let _ = writeln!(
                    out,
                    "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"{}\"/>",
                    if major { "#bbb" } else { "#eee" }
                );
                if major || hi / lo <= 100.0 {
                    let _ = writeln!(
                        out,
                        "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                        bottom + 14.0,
                        trim(v)
                    );
                }
            }
            decade *= 10.0;
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">ms (log scale)</text>",
            x0 + panel_w / 2.0,
            bottom + 32.0
        );
        for (i, scenario) in scenarios.iter().enumerate() {
            let Some(p) = find(points, scenario, c) else {
                continue;
            };
            let y = top + row_h * i as f64 + row_h / 2.0;
            let xs: Vec<f64> = p
                .latency
                .iter()
                .map(|&v| if v > 0.0 { x_of(v) } else { f64::NAN })
                .collect();
            if xs.iter().all(|x| x.is_finite()) {
                let _ = writeln!(
                    out,
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#888\"/>",
                    xs[0], xs[3]
                );
            }
            for (j, x) in xs.iter().enumerate() {
                if x.is_finite() {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{}\"><title>{} {} c={c}: {:.2} ms</title></circle>",
                        SERIES[j],
                        escape(scenario),
                        PERCENTILES[j],
                        p.latency[j]
                    );
                }
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The points as tab-separated lines (scenario, connections, ratio, p50, p95, p99, p99.9),
/// so that [`read_tsv`] can draw the charts again without running the benchmark.
pub(crate) fn to_tsv(points: &[Point]) -> String {
    let mut out = String::from("scenario\tconnections\tratio\tp50\tp95\tp99\tp99.9\n");
    for p in points {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.scenario,
            p.connections,
            p.ratio,
            p.latency[0],
            p.latency[1],
            p.latency[2],
            p.latency[3]
        );
    }
    out
}

/// Reads what [`to_tsv`] wrote.
pub(crate) fn read_tsv(text: &str) -> Vec<Point> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let num = |i: usize| {
                f.get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            Some(Point {
                scenario: f.first()?.to_string(),
                connections: f.get(1)?.parse().ok()?,
                ratio: num(2),
                latency: [num(3), num(4), num(5), num(6)],
            })
        })
        .collect()
}

fn trim_ratio(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn trim(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let points = vec![
            Point {
                scenario: "raw".into(),
                connections: 64,
                ratio: 1.0,
                latency: [0.4, 0.9, 1.3, 4.0],
            },
            Point {
                scenario: "a <b> & c".into(),
                connections: 400,
                ratio: f64::NAN,
                latency: [2.0, f64::NAN, 9.0, 20.0],
            },
        ];
        let back = read_tsv(&to_tsv(&points));
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].scenario, "a <b> & c");
        assert_eq!(back[0].latency, points[0].latency);
        for svg in [throughput_svg(&points, "t"), latency_svg(&points, "l")] {
            assert!(svg.starts_with("<svg"));
            assert!(svg.trim_end().ends_with("</svg>"));
            assert!(!svg.contains("NaN"));
            assert!(svg.contains("a &lt;b&gt; &amp; c"));
        }
    }
}
