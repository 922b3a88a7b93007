//! A line chart as inline SVG, drawn on the server (no chart library in the browser). Colours
//! are SVG presentation attributes, not `style`, so the page's Content-Security-Policy holds.

use maud::{Markup, html};

/// Distinct on white and for the common colour-vision deficiencies (Okabe–Ito).
pub const PALETTE: [&str; 8] =
    ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];

pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: &'static str,
    /// Eval loss is dashed beside its run's training loss in the same colour.
    pub dashed: bool,
}

const W: f64 = 800.0;
const H: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

/// About `n` round tick values covering `[lo, hi]` (steps of 1, 2 or 5 × 10^k).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..).map(|i| first + i as f64 * step).take_while(|v| *v <= hi + step * 1e-9).take(50).collect()
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// The chart; `description` is what a screen reader says for it.
pub fn line_chart(description: &str, x_label: &str, y_label: &str, series: &[Series]) -> Markup {
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let empty = !x0.is_finite();
    if !empty {
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = if y1 > y0 { (y1 - y0) * 0.06 } else { y0.abs().max(1.0) * 0.1 };
        y0 -= pad;
        y1 += pad;
    }
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
    let xt = if empty { vec![] } else { ticks(x0, x1, 8) };
    let yt = if empty { vec![] } else { ticks(y0, y1, 5) };
    let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(description) font-family="sans-serif" font-size="12" {
            title { (description) }
            rect x=(LEFT) y=(TOP) width=(W - LEFT - RIGHT) height=(H - TOP - BOTTOM) fill="#fff" stroke="#d0d7de" {}
            @if empty {
                text x=(W / 2.0) y=(H / 2.0) text-anchor="middle" fill="#57606a" { "no points yet" }
            }
            @for t in &yt {
                line x1=(LEFT) x2=(W - RIGHT) y1=(sy(*t)) y2=(sy(*t)) stroke="#eef1f4" {}
                text x=(LEFT - 6.0) y=(sy(*t) + 4.0) text-anchor="end" fill="#57606a" { (tick_label(*t, ystep)) }
            }
            @for t in &xt {
                line x1=(sx(*t)) x2=(sx(*t)) y1=(H - BOTTOM) y2=(H - BOTTOM + 4.0) stroke="#57606a" {}
                text x=(sx(*t)) y=(H - BOTTOM + 17.0) text-anchor="middle" fill="#57606a" { (tick_label(*t, xstep)) }
            }
            text x=(LEFT + (W - LEFT - RIGHT) / 2.0) y=(H - 6.0) text-anchor="middle" fill="#1b1f24" { (x_label) }
            text x="14" y=(TOP + (H - TOP - BOTTOM) / 2.0) text-anchor="middle" fill="#1b1f24" transform={"rotate(-90 14 " (TOP + (H - TOP - BOTTOM) / 2.0) ")"} { (y_label) }
            @for s in series {
                @let d = path(&s.points, &sx, &sy);
                @if !d.is_empty() {
                    path d=(d) fill="none" stroke=(s.color) stroke-width="2" stroke-dasharray=[s.dashed.then_some("6 4")] {}
                    // A lone point (one eval so far) is invisible as a path.
                    @if s.points.len() == 1 {
                        circle cx=(sx(s.points[0].0)) cy=(sy(s.points[0].1)) r="3" fill=(s.color) {}
                    }
                }
            }
            @for (i, s) in series.iter().enumerate() {
                @let y = TOP + 14.0 + i as f64 * 16.0;
                line x1=(W - RIGHT - 190.0) x2=(W - RIGHT - 166.0) y1=(y - 4.0) y2=(y - 4.0) stroke=(s.color) stroke-width="2" stroke-dasharray=[s.dashed.then_some("6 4")] {}
                text x=(W - RIGHT - 160.0) y=(y) fill="#1b1f24" { (truncate(&s.label, 26)) }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

fn path(points: &[(f64, f64)], sx: &impl Fn(f64) -> f64, sy: &impl Fn(f64) -> f64) -> String {
    let mut d = String::new();
    for &(x, y) in points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
        let cmd = if d.is_empty() { 'M' } else { 'L' };
        d.push_str(&format!("{cmd}{:.1} {:.1} ", sx(x), sy(y)));
    }
    d.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(2.31, 2.87, 5);
        assert!(t.iter().all(|v| (2.31..=2.87).contains(v)), "{t:?}");
        // (2.87 - 2.31) / 5 = 0.112 rounds up to a step of 0.2: 2.4, 2.6, 2.8.
        assert_eq!(t.len(), 3, "{t:?}");
        assert!((t[1] - t[0] - 0.2).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn a_hostile_label_is_escaped_in_the_svg() {
        let s = Series {
            label: "<script>x</script>".into(),
            points: vec![(1.0, 2.0), (2.0, 1.0)],
            color: PALETTE[0],
            dashed: false,
        };
        let svg = line_chart("<b>", "step", "loss", &[s]).into_string();
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
        assert!(!svg.contains('\n'), "one line, so it fits one server-sent event data field");
    }

    #[test]
    fn an_empty_chart_says_so() {
        assert!(line_chart("x", "step", "loss", &[]).into_string().contains("no points yet"));
    }
}
