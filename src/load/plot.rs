//! `wsctl load plot`: a report's per-second series drawn as one self-contained SVG: messages
//! per second (sent, delivered), end-to-end latency (p50, p99) and connections, over seconds of
//! the run, with the traffic start marked. Written by hand rather than with plotters: three line
//! charts are ~200 lines of SVG text, and plotters' text layout wants a font backend (a C or
//! font-file dependency) that this toolkit does not otherwise need.

use std::fmt::Write as _;

use super::report::{Report, SeriesPoint};

/// Canvas size in px: readable on a laptop screen and in a PR.
const WIDTH: f64 = 1100.0;
const PANEL_HEIGHT: f64 = 170.0;
/// Room for the y-axis labels (left), the legend (right), and titles between panels.
const LEFT: f64 = 90.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 60.0;
const GAP: f64 = 52.0;
/// Line colours: colour-blind-safe (Okabe-Ito).
const BLUE: &str = "#0072B2";
const GREEN: &str = "#009E73";
const ORANGE: &str = "#E69F00";
const RED: &str = "#D55E00";
const PURPLE: &str = "#CC79A7";

struct Line<'a> {
    label: &'a str,
    color: &'a str,
    dashed: bool,
    value: fn(&SeriesPoint) -> f64,
    /// Drawn only where this holds (latency: only seconds with deliveries).
    defined: fn(&SeriesPoint) -> bool,
}

/// Per second, whatever the point's width (a busy runtime can stretch a tick).
fn per_s(n: u64, p: &SeriesPoint) -> f64 {
    n as f64 / if p.dt_s > 0.0 { p.dt_s } else { 1.0 }
}

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    lines: Vec<Line<'a>>,
}

/// The SVG document for `r`'s series.
pub fn svg(r: &Report) -> String {
    let panels = [
        Panel {
            title: "Throughput",
            unit: "messages / s",
            lines: vec![
                Line { label: "sent/s", color: BLUE, dashed: false, value: |p| per_s(p.sent, p), defined: |_| true },
                Line { label: "delivered/s", color: GREEN, dashed: true, value: |p| per_s(p.delivered, p), defined: |_| true },
            ],
        },
        Panel {
            title: "End-to-end latency of the deliveries in each second",
            unit: "ms",
            lines: vec![
                Line { label: "p50", color: ORANGE, dashed: false, value: |p| p.p50_ms, defined: |p| p.delivered > 0 },
                Line { label: "p99", color: RED, dashed: false, value: |p| p.p99_ms, defined: |p| p.delivered > 0 },
            ],
        },
        Panel {
            title: "Connections up",
            unit: "connections",
            lines: vec![Line { label: "connections", color: PURPLE, dashed: false, value: |p| p.connections as f64, defined: |_| true }],
        },
    ];
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "wsctl load: {} users x {} conn, {} pattern, {:.2} msgs/s per conn, {} sent, {} delivered, {} lost",
        r.run.clients, r.run.connections_per_user, r.run.pattern, r.run.rate_per_connection, r.messages.sent, r.messages.delivered, r.audit.lost
    );
    let _ = write!(out, r#"<text x="{LEFT}" y="28" font-size="16" font-weight="bold">{}</text>"#, escape(&title));
    let t_max = r.series.iter().map(|p| p.t).fold(1.0, f64::max);
    for (i, panel) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL_HEIGHT + GAP);
        draw_panel(&mut out, panel, &r.series, y0, t_max, r.run.traffic_start_s);
        if i + 1 == panels.len() {
            let _ = write!(out, r#"<text x="{}" y="{}" text-anchor="end">seconds since the run started</text>"#, WIDTH - RIGHT, y0 + PANEL_HEIGHT + 36.0);
        }
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel<'_>, series: &[SeriesPoint], y0: f64, t_max: f64, traffic_start: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let y_max = series.iter().flat_map(|p| panel.lines.iter().filter(move |l| (l.defined)(p)).map(move |l| (l.value)(p))).fold(0.0, f64::max);
    let (step, top) = nice_axis(y_max);
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| y0 + PANEL_HEIGHT - v / top * PANEL_HEIGHT;
    let _ = write!(out, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, y0 - 10.0, escape(panel.title));
    // Grid and y labels.
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let yy = y(v);
        let _ = write!(out, r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##, LEFT + plot_w);
        let _ = write!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 8.0, yy + 4.0, fmt_num(v));
        v += step;
    }
    let _ = write!(
        out,
        r#"<text transform="translate({},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        LEFT - 62.0,
        y0 + PANEL_HEIGHT / 2.0,
        escape(panel.unit)
    );
    // X axis: ticks every nice number of seconds.
    let (t_step, _) = nice_axis(t_max);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = write!(out, r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{}" y2="{}" stroke="#999"/>"##, y0 + PANEL_HEIGHT, y0 + PANEL_HEIGHT + 5.0);
        let _ = write!(out, r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#, y0 + PANEL_HEIGHT + 19.0, fmt_num(t));
        t += t_step;
    }
    let _ = write!(out, r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#333"/>"##);
    if traffic_start > 0.0 && traffic_start < t_max {
        let xx = x(traffic_start);
        let _ = write!(out, r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{y0}" y2="{}" stroke="#666" stroke-dasharray="2,3"/>"##, y0 + PANEL_HEIGHT);
        let _ = write!(out, r##"<text x="{:.1}" y="{}" fill="#666" font-size="11">traffic starts</text>"##, xx + 4.0, y0 + 14.0);
    }
    for (i, line) in panel.lines.iter().enumerate() {
        let points: Vec<String> = series.iter().filter(|p| (line.defined)(p)).map(|p| format!("{:.1},{:.1}", x(p.t), y((line.value)(p)))).collect();
        let dash = if line.dashed { r#" stroke-dasharray="7,4""# } else { "" };
        let _ = write!(out, r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#, line.color, points.join(" "));
        // Legend, right of the panel.
        let ly = y0 + 20.0 + i as f64 * 22.0;
        let lx = LEFT + plot_w + 16.0;
        let _ = write!(out, r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="3"{dash}/>"#, lx + 28.0, line.color);
        let _ = write!(out, r#"<text x="{}" y="{}">{}</text>"#, lx + 36.0, ly + 4.0, escape(line.label));
    }
}

/// A tick step (1, 2 or 5 times a power of ten) giving about five ticks, and the axis top (a
/// multiple of the step at or above `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() { max } else { 1.0 };
    let raw = max / 5.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * pow).find(|s| *s >= raw).unwrap_or(10.0 * pow);
    (step, (max / step).ceil() * step)
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_numbers_above_the_data() {
        assert_eq!(nice_axis(57_000.0), (20_000.0, 60_000.0));
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
        assert_eq!(nice_axis(7.3), (2.0, 8.0));
        assert_eq!(fmt_num(60_000.0), "60k");
        assert_eq!(fmt_num(0.25), "0.25");
    }

    #[test]
    fn an_svg_is_drawn_for_a_series() {
        let series = (1..=10).map(|t| SeriesPoint { t: f64::from(t), dt_s: 1.0, sent: 100, delivered: 99, p99_ms: 2.5, connections: 50, ..SeriesPoint::default() }).collect();
        let r = Report { series, ..Report::default() };
        let s = svg(&r);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 5);
        assert!(s.contains("delivered/s") && s.contains("messages / s") && s.contains("seconds since the run started"));
    }
}
