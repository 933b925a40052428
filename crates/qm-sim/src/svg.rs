//! Standalone SVG charts for the simulator's reports, built with nothing but `std`.
//!
//! Each function returns a complete `<svg>` document (800 x 450, white background,
//! sans-serif text) as a `String`, ready to be written next to a report:
//!
//! - [`line_chart`]: one polyline per [`Series`], for values over time;
//! - [`step_chart`]: the same drawn as steps (horizontal, then vertical), for CDFs and
//!   piecewise-constant quantities;
//! - [`bar_chart`]: grouped bars, one group per category and one bar per [`BarSeries`],
//!   for comparing policies per team.
//!
//! The output is deterministic (the same input gives the same bytes), coordinates are
//! written with at most two decimals, text is XML-escaped, and series `i` always gets
//! palette colour `i % 10`, so the same policy keeps its colour across charts when the
//! series are passed in the same order. Bad input never panics: empty series, a single
//! point, all-equal values, negative values and non-finite values (which are skipped)
//! all give a valid, if sparse, chart. Long series are downsampled (min/max per bucket,
//! first and last points kept) to at most 2,000 points, so files stay small.

use std::fmt::{self, Write};

/// Width of every chart, in SVG user units.
const WIDTH: f64 = 800.0;
/// Height of every chart, in SVG user units.
const HEIGHT: f64 = 450.0;
/// Room for the y tick labels and the y axis label.
const MARGIN_LEFT: f64 = 70.0;
/// Room for the legend.
const MARGIN_RIGHT: f64 = 170.0;
/// Room for the title.
const MARGIN_TOP: f64 = 40.0;
/// Room for the x tick labels and the x axis label.
const MARGIN_BOTTOM: f64 = 55.0;
/// Room for rotated category labels.
const MARGIN_BOTTOM_ROTATED: f64 = 95.0;
/// Most points drawn per series; longer series are downsampled.
const MAX_POINTS: usize = 2000;
/// Bar charts with more categories than this rotate their labels.
const ROTATE_ABOVE: usize = 8;
/// Most category labels drawn; with more categories, every k-th one is labelled.
const MAX_CATEGORY_LABELS: usize = 40;
/// Longest horizontal category label, in characters.
const MAX_LABEL_CHARS: usize = 24;
/// Longest rotated category label, in characters.
const ROTATED_LABEL_CHARS: usize = 14;
/// Longest legend entry, in characters.
const LEGEND_LABEL_CHARS: usize = 20;
/// Vertical distance between legend entries.
const LEGEND_ROW: f64 = 20.0;
/// Series colours (Tableau 10); series `i` gets `PALETTE[i % PALETTE.len()]`.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One named series of (x, y) points, in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry, e.g. a policy name.
    pub name: String,
    /// The points, in x order; points with a NaN or infinite coordinate are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One named series of bars: `values[i]` is the bar for category `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    /// The legend entry, e.g. a policy name.
    pub name: String,
    /// One value per category; NaN or infinite values, and values past the last
    /// category, are not drawn.
    pub values: Vec<f64>,
}

/// A line chart: one polyline per series, axes with 5-6 "nice" ticks (1, 2, 2.5, 5 x 10^k),
/// labels, a legend.
///
/// The x axis spans the data (widened to the outer ticks); the y axis spans
/// `min(0, data min)` to the data max. A series with one point is drawn as a dot.
///
/// ```
/// use qm_sim::svg::{line_chart, Series};
///
/// let fifo = Series {
///     name: "fifo".to_string(),
///     points: vec![(0.0, 1.0), (60.0, 3.0)],
/// };
/// let svg = line_chart("Queue length", "time (s)", "jobs", &[fifo]);
/// assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
/// ```
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    xy_chart(title, x_label, y_label, series, Style::Line)
}

/// A step chart for CDFs: like [`line_chart`] but drawn as steps (horizontal then vertical).
///
/// Each series is one `<path>`: from each point, a horizontal segment to the next point's
/// x, then a vertical one to its y.
pub fn step_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    xy_chart(title, x_label, y_label, series, Style::Step)
}

/// Grouped bars: one group per category, one bar per series (`series.values[i]` belongs
/// to `categories[i]`).
///
/// The y axis spans `min(0, data min)` to `max(0, data max)`, and bars grow from zero, so
/// negative values point down. With more than 8 categories the labels are rotated by -45
/// degrees; with more than 40, only every k-th category is labelled. Each bar carries a
/// `<title>` tooltip with its series, category and value.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[BarSeries],
) -> String {
    let mut out = String::new();
    // Writing into a `String` cannot fail.
    let _ = write_bar_chart(&mut out, title, y_label, categories, series);
    out
}

/// How [`xy_chart`] joins consecutive points.
#[derive(Clone, Copy)]
enum Style {
    /// Straight lines, as a `<polyline>`.
    Line,
    /// Horizontal then vertical, as a `<path>`.
    Step,
}

fn xy_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], style: Style) -> String {
    let mut out = String::new();
    // Writing into a `String` cannot fail.
    let _ = write_xy_chart(&mut out, title, x_label, y_label, series, style);
    out
}

fn write_xy_chart(
    out: &mut String,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    style: Style,
) -> fmt::Result {
    // A step path has up to two vertices per point: halve the budget to stay near 2,000.
    let limit = match style {
        Style::Line => MAX_POINTS,
        Style::Step => MAX_POINTS / 2,
    };
    let cleaned: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| downsample(finite_points(&s.points), limit))
        .collect();
    let (x_lo, x_hi) = extent(cleaned.iter().flatten().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = extent(cleaned.iter().flatten().map(|p| p.1))
        .map_or((0.0, 1.0), |(lo, hi)| (lo.min(0.0), hi));
    let x_axis = Axis::new(x_lo, x_hi);
    let y_axis = Axis::new(y_lo, y_hi);
    let area = Area::new(MARGIN_BOTTOM);

    open(out, title)?;
    draw_y_axis(out, &area, &y_axis, y_label)?;
    draw_x_axis(out, &area, &x_axis, x_label)?;
    draw_frame(out, &area)?;
    for (i, points) in cleaned.iter().enumerate() {
        let Some(&(first_x, first_y)) = points.first() else {
            continue;
        };
        let colour = palette_colour(i);
        let start_x = fmt_num(area.px(&x_axis, first_x));
        let start_y = fmt_num(area.py(&y_axis, first_y));
        match style {
            Style::Line => {
                write!(out, "<polyline points=\"{start_x},{start_y}")?;
                for &(x, y) in &points[1..] {
                    let px = fmt_num(area.px(&x_axis, x));
                    let py = fmt_num(area.py(&y_axis, y));
                    write!(out, " {px},{py}")?;
                }
                writeln!(
                    out,
                    r#"" fill="none" stroke="{colour}" stroke-width="1.5" stroke-linejoin="round"/>"#
                )?;
            }
            Style::Step => {
                write!(out, "<path d=\"M{start_x} {start_y}")?;
                for &(x, y) in &points[1..] {
                    let px = fmt_num(area.px(&x_axis, x));
                    let py = fmt_num(area.py(&y_axis, y));
                    write!(out, "H{px}V{py}")?;
                }
                writeln!(
                    out,
                    r#"" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
                )?;
            }
        }
        if points.len() == 1 {
            writeln!(
                out,
                r#"<circle cx="{start_x}" cy="{start_y}" r="3" fill="{colour}"/>"#
            )?;
        }
    }
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    draw_legend(out, &names)?;
    close(out);
    Ok(())
}

fn write_bar_chart(
    out: &mut String,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[BarSeries],
) -> fmt::Result {
    let n = categories.len();
    let rotate = n > ROTATE_ABOVE;
    let area = Area::new(if rotate {
        MARGIN_BOTTOM_ROTATED
    } else {
        MARGIN_BOTTOM
    });
    let finite = series
        .iter()
        .flat_map(|s| s.values.iter().take(n))
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = extent(finite).map_or((0.0, 1.0), |(lo, hi)| (lo.min(0.0), hi.max(0.0)));
    let y_axis = Axis::new(lo, hi);

    open(out, title)?;
    draw_y_axis(out, &area, &y_axis, y_label)?;
    draw_frame(out, &area)?;

    let group = area.width / n.max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    let zero = area.py(&y_axis, 0.0);
    for (si, s) in series.iter().enumerate() {
        let bars: Vec<(usize, f64)> = s
            .values
            .iter()
            .take(n)
            .copied()
            .enumerate()
            .filter(|&(_, v)| v.is_finite())
            .collect();
        if bars.is_empty() {
            continue;
        }
        writeln!(out, r#"<g class="bars" fill="{}">"#, palette_colour(si))?;
        for (ci, v) in bars {
            let x = area.left + group * (ci as f64 + 0.1) + bar * si as f64;
            let y = area.py(&y_axis, v);
            let (top, height) = if y < zero {
                (y, zero - y)
            } else {
                (zero, y - zero)
            };
            let tooltip = format!("{}, {}: {}", s.name, categories[ci], fmt_value(v));
            writeln!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>"#,
                fmt_num(x),
                fmt_num(top),
                fmt_num(bar),
                fmt_num(height),
                escape(&tooltip)
            )?;
        }
        writeln!(out, "</g>")?;
    }
    let (l, r, z) = (fmt_num(area.left), fmt_num(area.right()), fmt_num(zero));
    writeln!(
        out,
        r##"<line x1="{l}" y1="{z}" x2="{r}" y2="{z}" stroke="#333"/>"##
    )?;

    let every = n.div_ceil(MAX_CATEGORY_LABELS).max(1);
    let max_chars = if rotate {
        ROTATED_LABEL_CHARS
    } else {
        ((group / 7.0) as usize).clamp(3, MAX_LABEL_CHARS)
    };
    let y = fmt_num(area.bottom() + if rotate { 12.0 } else { 18.0 });
    for (ci, category) in categories.iter().enumerate().step_by(every) {
        let x = fmt_num(area.left + group * (ci as f64 + 0.5));
        let text = escape(&truncate(category, max_chars));
        if rotate {
            writeln!(
                out,
                r#"<text x="{x}" y="{y}" font-size="11" text-anchor="end" transform="rotate(-45 {x} {y})">{text}</text>"#
            )?;
        } else {
            writeln!(
                out,
                r#"<text x="{x}" y="{y}" font-size="11" text-anchor="middle">{text}</text>"#
            )?;
        }
    }
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    draw_legend(out, &names)?;
    close(out);
    Ok(())
}

/// The plotting area inside the margins, in SVG user units.
struct Area {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Area {
    fn new(bottom_margin: f64) -> Area {
        Area {
            left: MARGIN_LEFT,
            top: MARGIN_TOP,
            width: WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
            height: HEIGHT - MARGIN_TOP - bottom_margin,
        }
    }

    fn right(&self) -> f64 {
        self.left + self.width
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }

    /// The horizontal position of data value `v` on `axis`.
    fn px(&self, axis: &Axis, v: f64) -> f64 {
        self.left + axis.frac(v) * self.width
    }

    /// The vertical position of data value `v` on `axis` (SVG y grows downwards).
    fn py(&self, axis: &Axis, v: f64) -> f64 {
        self.bottom() - axis.frac(v) * self.height
    }
}

/// One axis: its data range (widened to the outer ticks) and its ticks.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Axis {
        let (lo, hi) = pad(lo, hi);
        let ticks = nice_ticks(lo, hi);
        let lo = ticks.first().map_or(lo, |&t| t.min(lo));
        let hi = ticks.last().map_or(hi, |&t| t.max(hi));
        Axis { lo, hi, ticks }
    }

    /// The distance between ticks.
    fn step(&self) -> f64 {
        match self.ticks.as_slice() {
            [a, b, ..] => b - a,
            _ => self.hi - self.lo,
        }
    }

    /// Where `v` falls between `lo` (0) and `hi` (1).
    fn frac(&self, v: f64) -> f64 {
        let span = self.hi - self.lo;
        if span.is_finite() && span > 0.0 {
            (v - self.lo) / span
        } else {
            0.5
        }
    }
}

/// Widens an empty range: `[0, 0]` becomes `[0, 1]`, `[v, v]` becomes `v -/+ 10%`.
fn pad(lo: f64, hi: f64) -> (f64, f64) {
    let finite = lo.is_finite() && hi.is_finite();
    if !finite {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else if lo.abs() < f64::MIN_POSITIVE {
        (0.0, 1.0)
    } else {
        let d = lo.abs() * 0.1;
        (lo - d, lo + d)
    }
}

/// Evenly spaced ticks covering `[lo, hi]`, with a step of 1, 2, 2.5 or 5 x 10^k: the
/// smallest such step that needs at most 5 intervals (3 to 6 ticks).
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let range = hi - lo;
    // A finite range also means finite ends.
    let usable = range.is_finite() && range > 0.0;
    if !usable {
        return if lo.is_finite() && hi.is_finite() {
            vec![lo, hi]
        } else {
            vec![0.0, 1.0]
        };
    }
    // `powi` keeps powers of ten exact (10, 0.1), so ticks like 20.0 come out exact.
    let magnitude = 10f64.powi((range / 5.0).log10().floor() as i32);
    for factor in [1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 25.0, 50.0] {
        let step = factor * magnitude;
        let valid_step = step.is_finite() && step > 0.0;
        if !valid_step {
            continue;
        }
        // The slack keeps float noise (0.30000000000000004 / 0.1) from adding a tick.
        let first = (lo / step + 1e-9).floor();
        let last = (hi / step - 1e-9).ceil();
        let intervals = last - first;
        if intervals <= 5.0 {
            let ticks: Vec<f64> = (0..=intervals.max(0.0) as usize)
                .map(|i| (first + i as f64) * step)
                .collect();
            if ticks.iter().all(|t| t.is_finite()) {
                return ticks;
            }
            break;
        }
    }
    vec![lo, hi]
}

/// Writes the document head: the `<svg>` element, a title for screen readers, the white
/// background and the visible title.
fn open(out: &mut String, title: &str) -> fmt::Result {
    let (w, h) = (fmt_num(WIDTH), fmt_num(HEIGHT));
    let title = escape(title);
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(out, "<title>{title}</title>")?;
    writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#)?;
    writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{title}</text>"#,
        fmt_num(WIDTH / 2.0)
    )
}

fn close(out: &mut String) {
    out.push_str("</svg>");
}

/// Horizontal grid lines, tick labels and the rotated axis label on the left.
fn draw_y_axis(out: &mut String, area: &Area, axis: &Axis, label: &str) -> fmt::Result {
    let step = axis.step();
    let (l, r) = (fmt_num(area.left), fmt_num(area.right()));
    let label_x = fmt_num(area.left - 8.0);
    for &t in &axis.ticks {
        let py = area.py(axis, t);
        let (y, text_y) = (fmt_num(py), fmt_num(py + 4.0));
        writeln!(
            out,
            r##"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}" stroke="#e5e5e5"/>"##
        )?;
        writeln!(
            out,
            r##"<text x="{label_x}" y="{text_y}" text-anchor="end" fill="#333">{}</text>"##,
            fmt_tick(t, step)
        )?;
    }
    if axis.lo < 0.0 && axis.hi > 0.0 {
        let y = fmt_num(area.py(axis, 0.0));
        writeln!(
            out,
            r##"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}" stroke="#999"/>"##
        )?;
    }
    let cy = fmt_num(area.top + area.height / 2.0);
    writeln!(
        out,
        r#"<text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})">{}</text>"#,
        escape(label)
    )
}

/// Vertical grid lines, tick marks, tick labels and the axis label below.
fn draw_x_axis(out: &mut String, area: &Area, axis: &Axis, label: &str) -> fmt::Result {
    let step = axis.step();
    let top = fmt_num(area.top);
    let bottom = fmt_num(area.bottom());
    let tick_end = fmt_num(area.bottom() + 5.0);
    let label_y = fmt_num(area.bottom() + 18.0);
    for &t in &axis.ticks {
        let x = fmt_num(area.px(axis, t));
        writeln!(
            out,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#e5e5e5"/>"##
        )?;
        writeln!(
            out,
            r##"<line x1="{x}" y1="{bottom}" x2="{x}" y2="{tick_end}" stroke="#333"/>"##
        )?;
        writeln!(
            out,
            r##"<text x="{x}" y="{label_y}" text-anchor="middle" fill="#333">{}</text>"##,
            fmt_tick(t, step)
        )?;
    }
    writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        fmt_num(area.left + area.width / 2.0),
        fmt_num(area.bottom() + 40.0),
        escape(label)
    )
}

/// The left and bottom axis lines.
fn draw_frame(out: &mut String, area: &Area) -> fmt::Result {
    let (l, r) = (fmt_num(area.left), fmt_num(area.right()));
    let (t, b) = (fmt_num(area.top), fmt_num(area.bottom()));
    writeln!(
        out,
        r##"<line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="#333"/>"##
    )?;
    writeln!(
        out,
        r##"<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/>"##
    )
}

/// One swatch and name per series in the right margin; entries that do not fit are
/// summarised as "+N more".
fn draw_legend(out: &mut String, names: &[&str]) -> fmt::Result {
    let x = WIDTH - MARGIN_RIGHT + 16.0;
    let (swatch_x, text_x) = (fmt_num(x), fmt_num(x + 18.0));
    let capacity = ((HEIGHT - MARGIN_TOP - 10.0) / LEGEND_ROW) as usize;
    let shown = if names.len() > capacity {
        capacity - 1
    } else {
        names.len()
    };
    for (i, name) in names.iter().take(shown).enumerate() {
        let y = MARGIN_TOP + LEGEND_ROW * i as f64;
        writeln!(
            out,
            r#"<rect x="{swatch_x}" y="{}" width="12" height="12" fill="{}"/>"#,
            fmt_num(y),
            palette_colour(i)
        )?;
        writeln!(
            out,
            r#"<text x="{text_x}" y="{}">{}</text>"#,
            fmt_num(y + 10.5),
            escape(&truncate(name, LEGEND_LABEL_CHARS))
        )?;
    }
    if shown < names.len() {
        let y = MARGIN_TOP + LEGEND_ROW * shown as f64;
        writeln!(
            out,
            r#"<text x="{swatch_x}" y="{}">+{} more</text>"#,
            fmt_num(y + 10.5),
            names.len() - shown
        )?;
    }
    Ok(())
}

fn palette_colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The points with both coordinates finite.
fn finite_points(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .copied()
        .filter(|&(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// Cuts `points` down to at most `limit` points, keeping the first and the last and,
/// in each of `(limit - 2) / 2` buckets between them, the lowest and the highest point
/// (in their original order), so spikes survive.
fn downsample(points: Vec<(f64, f64)>, limit: usize) -> Vec<(f64, f64)> {
    let n = points.len();
    if n <= limit || limit < 4 {
        return points;
    }
    let inner = &points[1..n - 1];
    let buckets = (limit - 2) / 2;
    let mut kept = Vec::with_capacity(limit);
    kept.push(points[0]);
    for b in 0..buckets {
        let chunk = &inner[b * inner.len() / buckets..(b + 1) * inner.len() / buckets];
        if chunk.is_empty() {
            continue;
        }
        let (mut low, mut high) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[low].1 {
                low = i;
            }
            if p.1 > chunk[high].1 {
                high = i;
            }
        }
        kept.push(chunk[low.min(high)]);
        if low != high {
            kept.push(chunk[low.max(high)]);
        }
    }
    kept.push(points[n - 1]);
    kept
}

/// The smallest and largest of `values`, or `None` when there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Escapes `&`, `<`, `>`, `"` and `'` for XML text and attributes; tabs and line breaks
/// become spaces and other control characters (invalid in XML 1.0) are dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if u32::from(c) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max_chars` characters, ending in "…" when cut.
fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// `v` with at most two decimals and no trailing zeros; "0" for non-finite values and
/// for anything that rounds to zero.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    let s = format!("{v:.2}");
    let trimmed = trim_zeros(&s);
    if trimmed == "-0" {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `v` in scientific notation with at most two decimals, e.g. "2.5e-3".
fn fmt_exp(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    let s = format!("{v:.2e}");
    if let Some((mantissa, exponent)) = s.split_once('e') {
        return format!("{}e{exponent}", trim_zeros(mantissa));
    }
    s
}

/// A tick label: plain when two decimals show the step exactly, "M"/"G" suffixes for
/// millions and billions when they do too, scientific notation otherwise.
fn fmt_tick(v: f64, step: f64) -> String {
    let a = v.abs();
    if a >= 1e12 || (a > 0.0 && !is_two_decimal(step)) {
        fmt_exp(v)
    } else if a >= 1e9 && is_two_decimal(step / 1e9) {
        format!("{}G", fmt_num(v / 1e9))
    } else if a >= 1e6 && is_two_decimal(step / 1e6) {
        format!("{}M", fmt_num(v / 1e6))
    } else {
        fmt_num(v)
    }
}

/// A value for a tooltip: plain, or scientific when two decimals would lose it.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1e12 || (a > 0.0 && a < 0.01) {
        fmt_exp(v)
    } else {
        fmt_num(v)
    }
}

/// Whether `v` is a whole number of hundredths (up to float noise).
fn is_two_decimal(v: f64) -> bool {
    let hundredths = v * 100.0;
    (hundredths - hundredths.round()).abs() <= 1e-6 * hundredths.abs().max(1.0)
}

/// Drops trailing zeros after a decimal point, and the point itself if nothing follows.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_owned(),
            points: points.to_vec(),
        }
    }

    fn bars(name: &str, values: &[f64]) -> BarSeries {
        BarSeries {
            name: name.to_owned(),
            values: values.to_vec(),
        }
    }

    fn categories(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    /// Checks the prologue and the end, that tags balance, that text is escaped and that
    /// no NaN or infinity leaked into the output.
    fn assert_valid(svg: &str) {
        assert!(
            svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg""#),
            "bad start: {svg}"
        );
        assert!(svg.ends_with("</svg>"), "bad end: {svg}");
        assert!(svg.contains(r#"viewBox="0 0 800 450""#));
        assert!(svg.contains(r#"fill="white""#));
        assert!(svg.contains(r#"font-family="sans-serif""#));
        assert!(!svg.contains("NaN"), "NaN in {svg}");
        assert!(!svg.contains("inf"), "infinity in {svg}");
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            assert_escaped(&rest[..start]);
            let len = rest[start..].find('>').expect("unterminated tag");
            let tag = &rest[start + 1..start + len];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched closing tag in {svg}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().expect("empty tag"));
            }
            rest = &rest[start + len + 1..];
        }
        assert_escaped(rest);
        assert!(stack.is_empty(), "unclosed tags {stack:?} in {svg}");
    }

    fn assert_escaped(text: &str) {
        assert!(!text.contains('>'), "raw '>' in {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|&e| entity.starts_with(e)),
                "raw '&' in {text:?}"
            );
        }
    }

    #[test]
    fn line_chart_draws_one_polyline_per_series() {
        let svg = line_chart(
            "Queue <wait> & \"p99\" 'x'",
            "time (s)",
            "jobs",
            &[
                series("default", &[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)]),
                series("fifo", &[(0.0, 2.0), (2.0, 5.0)]),
            ],
        );
        assert_valid(&svg);
        assert!(svg.contains("Queue &lt;wait&gt; &amp; &quot;p99&quot; &apos;x&apos;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">default</text>") && svg.contains(">fifo</text>"));
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]));
    }

    #[test]
    fn step_chart_draws_one_path_per_non_empty_series() {
        let svg = step_chart(
            "Wait CDF",
            "wait (hours)",
            "fraction of jobs",
            &[
                series("default", &[(0.0, 0.0), (5.0, 0.5), (9.0, 1.0)]),
                series("empty", &[]),
                series("static", &[(1.0, 0.2), (3.0, 1.0)]),
            ],
        );
        assert_valid(&svg);
        assert!(svg.contains("Wait CDF"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("<path d=\"M") && svg.contains('H') && svg.contains('V'));
        assert!(
            svg.contains(">empty</text>"),
            "empty series keep their legend entry"
        );
    }

    #[test]
    fn bar_chart_draws_grouped_bars() {
        let svg = bar_chart(
            "GPU hours <by team>",
            "hours",
            &categories(&["a", "b", "c"]),
            &[
                bars("default", &[1.0, 2.0, 3.0]),
                bars("fifo", &[]),
                bars("static", &[2.0, -1.0, 0.5]),
            ],
        );
        assert_valid(&svg);
        assert!(svg.contains("GPU hours &lt;by team&gt;"));
        assert_eq!(svg.matches(r#"<g class="bars""#).count(), 2);
        assert_eq!(svg.matches("</rect>").count(), 6);
        assert!(!svg.contains("rotate(-45"));
    }

    #[test]
    fn bar_chart_rotates_many_labels() {
        let teams: Vec<String> = (0..12).map(|i| format!("6214e{i}")).collect();
        let values: Vec<f64> = (0..12u8).map(f64::from).collect();
        let svg = bar_chart(
            "Mean wait per team",
            "hours",
            &teams,
            &[bars("fifo", &values)],
        );
        assert_valid(&svg);
        assert!(svg.contains("rotate(-45"));
        assert!(svg.contains(">6214e11</text>"));
        assert_eq!(svg.matches("</rect>").count(), 12);
    }

    #[test]
    fn bar_chart_survives_bad_input() {
        assert_valid(&bar_chart("", "", &[], &[]));
        assert_valid(&bar_chart("t", "y", &categories(&["a"]), &[]));
        assert_valid(&bar_chart(
            "t",
            "y",
            &categories(&["a", "b"]),
            &[bars("zero", &[0.0, 0.0])],
        ));
        let svg = bar_chart(
            "t",
            "y",
            &categories(&["a", "b"]),
            &[
                bars("bad", &[f64::NAN, f64::INFINITY]),
                bars("short", &[1.0]),
                bars("long", &[-1.0, 2.0, 3.0, 4.0]),
            ],
        );
        assert_valid(&svg);
        assert_eq!(svg.matches(r#"<g class="bars""#).count(), 2);
        assert_eq!(svg.matches("</rect>").count(), 3);
    }

    #[test]
    fn xy_charts_survive_bad_input() {
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![series("empty", &[])],
            vec![series(
                "bad",
                &[
                    (f64::NAN, 1.0),
                    (1.0, f64::INFINITY),
                    (f64::NEG_INFINITY, 0.0),
                ],
            )],
            vec![series("one", &[(3.0, 4.0)])],
            vec![series("flat", &[(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)])],
            vec![series("same", &[(2.0, 1.0), (2.0, 1.0)])],
            vec![series("zeros", &[(0.0, 0.0), (0.0, 0.0)])],
            vec![series("negative", &[(-5.0, -3.0), (-1.0, -7.5)])],
            vec![series("mixed", &[(0.0, f64::NAN), (1.0, 2.0), (2.0, -2.0)])],
            vec![series("huge", &[(0.0, 1e300), (1.0, -1e300)])],
            vec![series(
                "extreme",
                &[(-f64::MAX, f64::MAX), (f64::MAX, -f64::MAX)],
            )],
            vec![series("tiny", &[(0.0, 1e-9), (1e-9, 2e-9)])],
        ];
        for case in &cases {
            let non_empty = case
                .iter()
                .filter(|s| !finite_points(&s.points).is_empty())
                .count();
            let line = line_chart("t", "x", "y", case);
            assert_valid(&line);
            assert_eq!(line.matches("<polyline").count(), non_empty);
            let step = step_chart("t", "x", "y", case);
            assert_valid(&step);
            assert_eq!(step.matches("<path").count(), non_empty);
        }
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(
            nice_ticks(0.0, 97.0),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0).len(), 6);
        let ranges = [
            (0.0, 97.0),
            (0.0, 1.0),
            (-3.0, 7.0),
            (0.0, 51.0),
            (12.0, 13.0),
            (0.001, 0.0042),
            (-1e6, 3e7),
            (5.0, 5.5),
            (0.0, 3600.0),
            (-250.0, -1.0),
        ];
        for (lo, hi) in ranges {
            let ticks = nice_ticks(lo, hi);
            assert!((3..=6).contains(&ticks.len()), "{lo}..{hi}: {ticks:?}");
            let eps = (hi - lo) * 1e-6;
            assert!(ticks[0] <= lo + eps, "{lo}..{hi}: {ticks:?}");
            assert!(ticks[ticks.len() - 1] >= hi - eps, "{lo}..{hi}: {ticks:?}");
            let step = ticks[1] - ticks[0];
            for w in ticks.windows(2) {
                assert!((w[1] - w[0] - step).abs() <= step * 1e-9, "{ticks:?}");
            }
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 2.5, 5.0, 10.0]
                    .iter()
                    .any(|m| (m - mantissa).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
        }
    }

    #[test]
    fn numbers_have_at_most_two_decimals() {
        assert_eq!(fmt_num(1.0), "1");
        assert_eq!(fmt_num(1.239), "1.24");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(-3.1), "-3.1");
        assert_eq!(fmt_num(-0.001), "0");
        assert_eq!(fmt_num(f64::NAN), "0");
        assert_eq!(fmt_tick(0.0, 0.2), "0");
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
        assert_eq!(fmt_tick(2_000_000.0, 500_000.0), "2M");
        assert_eq!(fmt_tick(0.005, 0.001), "5e-3");
        assert_eq!(fmt_value(0.0025), "2.5e-3");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a&b<c>\"d'"), "a&amp;b&lt;c&gt;&quot;d&apos;");
        assert_eq!(escape("x\u{1}\ny"), "x y");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn long_series_are_downsampled() {
        let points: Vec<(f64, f64)> = (0..100_000u32)
            .map(|i| (f64::from(i), f64::from(i * 7919 % 1000)))
            .collect();
        let kept = downsample(points.clone(), MAX_POINTS);
        assert!(kept.len() <= MAX_POINTS && kept.len() > MAX_POINTS / 2);
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(kept.iter().any(|p| p.1 == 999.0), "peaks survive");

        let svg = line_chart("big", "x", "y", &[series("s", &points)]);
        assert_valid(&svg);
        let drawn = svg
            .split("<polyline points=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a polyline");
        assert!(drawn.split(' ').count() <= MAX_POINTS);
        assert!(svg.len() < 100_000, "{} bytes", svg.len());

        let step = step_chart("big", "x", "y", &[series("s", &points)]);
        assert_valid(&step);
        assert!(step.matches('H').count() < MAX_POINTS);
    }

    #[test]
    fn output_is_deterministic() {
        let input = [
            series("default", &[(0.0, 0.1), (1.5, 0.7), (3.0, 1.0)]),
            series("fifo", &[(0.5, 0.2), (2.0, 1.0)]),
        ];
        assert_eq!(
            line_chart("t", "x", "y", &input),
            line_chart("t", "x", "y", &input)
        );
        assert_eq!(
            step_chart("t", "x", "y", &input),
            step_chart("t", "x", "y", &input)
        );
        let cats = categories(&["a", "b"]);
        let b = [bars("default", &[1.0, 2.0])];
        assert_eq!(
            bar_chart("t", "y", &cats, &b),
            bar_chart("t", "y", &cats, &b)
        );
    }
}
