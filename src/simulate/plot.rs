//! Line charts as SVG text, for the figures of docs/SIMULATION.md: no
//! plotting crate, one polyline per series.

use std::fmt::Write;

/// A line chart of `series` (label, points), x in seconds shown as
/// minutes; y from `y_range`.
pub fn line_chart(
    title: &str,
    y_label: &str,
    y_range: (f64, f64),
    series: &[(&str, Vec<(f64, f64)>)],
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 380.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 180.0;
    const TOP: f64 = 36.0;
    const BOTTOM: f64 = 44.0;
    const COLOURS: [&str; 6] = [
        "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b",
    ];
    let (x_min, x_max) = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (x_min, x_max) = if x_max > x_min {
        (x_min, x_max)
    } else {
        (0.0, 1.0)
    };
    let (y_min, y_max) = y_range;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |v: f64| LEFT + (v - x_min) / (x_max - x_min) * pw;
    let y = |v: f64| TOP + (1.0 - (v.clamp(y_min, y_max) - y_min) / (y_max - y_min)) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for k in 0..=5 {
        let v = y_min + (y_max - y_min) * k as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.3}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    let minutes = (x_max - x_min) / 60.0;
    let step = [10.0, 15.0, 30.0, 60.0, 120.0]
        .into_iter()
        .find(|&st| minutes / st <= 8.0)
        .unwrap_or(240.0);
    let mut m = (x_min / 60.0 / step).ceil() * step;
    while m * 60.0 <= x_max {
        let xx = x(m * 60.0);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{m:.0}</text>"##,
            TOP + ph,
            TOP + ph + 16.0
        );
        m += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">minutes</text>"#,
        LEFT + pw / 2.0,
        H - 8.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(y_label)
    );
    for (i, (label, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = TOP + 14.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + pw + 12.0,
            LEFT + pw + 32.0,
            LEFT + pw + 38.0,
            ly + 4.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Means of `points` over windows of `window` points: a 5 s sample is
/// noisy at the scale of a four-hour chart.
pub fn smooth(points: &[(u64, f64)], window: usize) -> Vec<(f64, f64)> {
    points
        .chunks(window.max(1))
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0 as f64).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_polyline_per_series() {
        let svg = line_chart(
            "t <1>",
            "speed",
            (0.0, 1.0),
            &[
                ("a", vec![(0.0, 0.5), (600.0, 0.7)]),
                ("b", vec![(0.0, 1.0)]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
        assert_eq!(
            smooth(&[(0, 1.0), (10, 3.0), (20, 5.0)], 2),
            [(5.0, 2.0), (20.0, 5.0)]
        );
    }
}
