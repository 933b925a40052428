//! SVG charts for the simulator's reports, drawn with `plotters`' SVG backend.
//!
//! Each function returns a complete `<svg>` document (800 x 450, white background,
//! sans-serif text, a legend on the right) as a `String`, ready to be written next to a
//! report:
//!
//! - [`line_chart`]: one line per [`Series`], for values over time;
//! - [`step_chart`]: the same drawn as steps (horizontal, then vertical), for CDFs and
//!   piecewise-constant quantities, with a linear or logarithmic x axis ([`Scale`]);
//! - [`bar_chart`]: grouped bars, one group per category and one bar per [`BarSeries`],
//!   for comparing policies per team.
//!
//! `plotters` is built without fonts: the SVG backend writes `<text>` elements and leaves
//! the glyphs to the viewer, so label widths are estimated. Ticks are chosen here, not by
//! `plotters`: 3-6 "nice" ticks (1, 2, 2.5, 5 x 10^k) on a linear axis, powers of ten on a
//! logarithmic one. The output is deterministic (the same input gives the same bytes) and
//! series `i` always gets palette colour `i % 10`, so a policy keeps its colour across
//! charts when the series are passed in the same order. Bad input never panics: empty
//! series, a single point, all-equal values, negative values and non-finite values (which
//! are skipped) all give a valid, if sparse, chart. Long series are downsampled (min/max
//! per bucket, first and last points kept) to at most 1,000 points, so files stay small.

use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of every chart, in SVG user units.
const WIDTH: u32 = 800;
/// Height of every chart, in SVG user units.
const HEIGHT: u32 = 450;
/// Width of the legend column on the right.
const LEGEND_WIDTH: u32 = 160;
/// Most points drawn per series; longer series are downsampled.
const MAX_POINTS: usize = 1000;
/// Bar charts with more categories than this write their labels vertically.
const ROTATE_ABOVE: usize = 8;
/// Most category labels drawn; with more categories, every k-th one is labelled.
const MAX_CATEGORY_LABELS: usize = 40;
/// Longest category label, in characters.
const MAX_LABEL_CHARS: usize = 14;
/// Longest legend entry, in characters.
const LEGEND_LABEL_CHARS: usize = 18;
/// Most decades labelled on a logarithmic axis; wider axes label every k-th decade.
const MAX_DECADES: usize = 10;
const FONT: &str = "sans-serif";
/// Series colours (Tableau 10); series `i` gets `PALETTE[i % PALETTE.len()]`.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
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

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Evenly spaced values, 3-6 "nice" ticks.
    Linear,
    /// Logarithmic, with a tick at every power of ten. Values below `floor` (zero among
    /// them) are drawn at `floor`: say so in the axis label. A `floor` that is not
    /// positive and finite counts as 1.
    Log {
        /// The smallest value drawn.
        floor: f64,
    },
}

/// A line chart: one line per series, axes with nice ticks, labels, a legend.
///
/// The axes span the data (widened to the outer ticks); the y axis starts at
/// `min(0, data min)`.
///
/// ```
/// use qm_sim::svg::{line_chart, Series};
///
/// let fifo = Series {
///     name: "fifo".to_string(),
///     points: vec![(0.0, 1.0), (60.0, 3.0)],
/// };
/// let svg = line_chart("Queue length", "time (s)", "jobs", &[fifo]);
/// assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
/// ```
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    xy_chart(title, x_label, y_label, Scale::Linear, series, false)
}

/// A step chart, for CDFs: like [`line_chart`] but drawn as steps (from each point, a
/// horizontal segment to the next point's x, then a vertical one to its y), with the x
/// axis on `x_scale`.
pub fn step_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_scale: Scale,
    series: &[Series],
) -> String {
    xy_chart(title, x_label, y_label, x_scale, series, true)
}

/// Grouped bars: one group per category, one bar per series (`series.values[i]` belongs
/// to `categories[i]`).
///
/// The y axis spans `min(0, data min)` to `max(0, data max)`, and bars grow from zero, so
/// negative values point down. With more than 8 categories the labels are written
/// vertically; with more than 40, only every k-th category is labelled.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[BarSeries],
) -> String {
    let n = categories.len();
    let finite = series
        .iter()
        .flat_map(|s| s.values.iter().take(n))
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = extent(finite).map_or((0.0, 1.0), |(lo, hi)| (lo.min(0.0), hi.max(0.0)));
    let y = Axis::linear(lo, hi);
    // No ticks on x: the category labels are drawn under the bars' groups instead.
    let x = Axis {
        lo: 0.0,
        hi: n.max(1) as f64,
        ticks: Vec::new(),
        minor: Vec::new(),
        log: false,
    };
    let every = n.div_ceil(MAX_CATEGORY_LABELS).max(1);
    // `plotters` centres rotated tick labels on their tick; these hang from the axis.
    let (label_area, label_style) = if n > ROTATE_ABOVE {
        let pos = Pos::new(HPos::Right, VPos::Center);
        (
            95,
            label_font().transform(FontTransform::Rotate270).pos(pos),
        )
    } else {
        (35, label_font().pos(Pos::new(HPos::Center, VPos::Top)))
    };
    let group = 0.8 / series.len().max(1) as f64;
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    render(title, &names, |area| {
        let mut chart = chart(area, &x, &y, label_area)?;
        let y_tick = |v: &f64| y.label(*v);
        style_mesh(&mut chart.configure_mesh())
            .disable_x_mesh()
            .y_label_formatter(&y_tick)
            .y_desc(y_label)
            .draw()?;
        for (si, s) in series.iter().enumerate() {
            let colour = PALETTE[si % PALETTE.len()].filled();
            let bars = s.values.iter().take(n).enumerate();
            chart.draw_series(bars.filter(|(_, v)| v.is_finite()).map(|(ci, &v)| {
                let left = ci as f64 + 0.1 + group * si as f64;
                Rectangle::new([(left, 0.0), (left + group, v)], colour)
            }))?;
        }
        let labels = categories.iter().enumerate().step_by(every);
        chart.draw_series(labels.map(|(ci, name)| {
            let text = Text::new(truncate(name, MAX_LABEL_CHARS), (0, 6), label_style.clone());
            EmptyElement::at((ci as f64 + 0.5, y.lo)) + text
        }))?;
        Ok(())
    })
}

fn xy_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_scale: Scale,
    series: &[Series],
    step: bool,
) -> String {
    let floor = match x_scale {
        Scale::Linear => None,
        Scale::Log { floor } if floor.is_finite() && floor > 0.0 => Some(floor),
        Scale::Log { .. } => Some(1.0),
    };
    // A step has two vertices per point: halve the budget.
    let limit = if step { MAX_POINTS / 2 } else { MAX_POINTS };
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let mut points = finite_points(&s.points);
            if let Some(floor) = floor {
                points.iter_mut().for_each(|p| p.0 = p.0.max(floor));
            }
            let points = downsample(points, limit);
            if step {
                steps(&points)
            } else {
                points
            }
        })
        .collect();
    let (x_lo, x_hi) = extent(lines.iter().flatten().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = extent(lines.iter().flatten().map(|p| p.1))
        .map_or((0.0, 1.0), |(lo, hi)| (lo.min(0.0), hi));
    let x = match floor {
        None => Axis::linear(x_lo, x_hi),
        Some(floor) => Axis::log(x_lo.max(floor), x_hi.max(floor)),
    };
    let y = Axis::linear(y_lo, y_hi);
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    render(title, &names, |area| {
        let mut chart = chart(area, &x, &y, 50)?;
        style_mesh(&mut chart.configure_mesh())
            .x_label_formatter(&|v| x.label(*v))
            .y_label_formatter(&|v| y.label(*v))
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for (i, line) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = line.iter().map(|&(px, py)| (x.map(px), py)).collect();
            match points[..] {
                [] => {}
                [only] => {
                    chart.draw_series([Circle::new(only, 3, colour.filled())])?;
                }
                _ => {
                    chart.draw_series([PathElement::new(points, colour.stroke_width(2))])?;
                }
            }
        }
        Ok(())
    })
}

/// What drawing gives: nothing, or `plotters`' error.
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// A part of a chart's SVG document, in pixels.
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The coordinates of a chart: both axes are an [`Axis`].
type Coords = Cartesian2d<Axis, Axis>;

/// Draws a chart: white background, `title` on top, `draw` fills the area left of the
/// legend, then the legend (a colour swatch and a name per series) on the right.
fn render(title: &str, names: &[&str], draw: impl FnOnce(&Area<'_>) -> Drawn) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        // An error can only come from the layout of a degenerate chart; what was drawn
        // before it is kept, and the backend closes the document when dropped.
        let _ = (|| -> Drawn {
            root.fill(&WHITE)?;
            let body = root.titled(title, (FONT, 24))?;
            let (plot, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
            draw(&plot)?;
            for (i, name) in names.iter().enumerate() {
                let y = 30 + 22 * i as i32;
                let colour = PALETTE[i % PALETTE.len()];
                legend.draw(&Rectangle::new([(8, y - 5), (28, y + 5)], colour.filled()))?;
                let style = label_font().pos(Pos::new(HPos::Left, VPos::Center));
                legend.draw(&Text::new(
                    truncate(name, LEGEND_LABEL_CHARS),
                    (36, y),
                    style,
                ))?;
            }
            root.present()?;
            Ok(())
        })();
    }
    out
}

/// The font of tick labels, category labels and legend entries.
fn label_font() -> TextStyle<'static> {
    TextStyle::from((FONT, 16))
}

/// Sets the grid's and labels' looks: bold grid lines light grey, minor ones lighter,
/// axis descriptions a little larger than tick labels.
fn style_mesh<'m, 'a, 'b, DB: DrawingBackend>(
    mesh: &'m mut MeshStyle<'a, 'b, Axis, Axis, DB>,
) -> &'m mut MeshStyle<'a, 'b, Axis, Axis, DB> {
    mesh.label_style(label_font())
        .axis_desc_style((FONT, 18))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.05))
}

/// A chart on `area` with axes `x` and `y` and room for their labels (`x_label_area`
/// pixels below the plot).
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    x: &Axis,
    y: &Axis,
    x_label_area: u32,
) -> Result<ChartContext<'a, SVGBackend<'b>, Coords>, Box<dyn std::error::Error>> {
    let chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(x_label_area)
        .y_label_area_size(65)
        .build_cartesian_2d(x.clone(), y.clone())?;
    Ok(chart)
}

/// One axis: its range (widened to the outer ticks) and its ticks. A logarithmic axis
/// holds log10 of the values, and its labels undo it.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    /// Unlabelled grid lines (2 to 9 times each power of ten on a log axis).
    minor: Vec<f64>,
    log: bool,
}

impl Axis {
    fn linear(lo: f64, hi: f64) -> Axis {
        let (lo, hi) = pad(lo, hi);
        let ticks = nice_ticks(lo, hi);
        let lo = ticks.first().map_or(lo, |&t| t.min(lo));
        let hi = ticks.last().map_or(hi, |&t| t.max(hi));
        Axis {
            lo,
            hi,
            ticks,
            minor: Vec::new(),
            log: false,
        }
    }

    /// A log axis from the power of ten at or below `lo` to the one at or above `hi`;
    /// both must be positive.
    fn log(lo: f64, hi: f64) -> Axis {
        let first = lo.log10().floor().clamp(-300.0, 300.0) as i32;
        let last = (hi.log10().ceil().clamp(-300.0, 300.0) as i32).max(first + 1);
        let every = (last - first)
            .unsigned_abs()
            .div_ceil(MAX_DECADES as u32)
            .max(1);
        let decades = first..=last;
        Axis {
            lo: f64::from(first),
            hi: f64::from(last),
            ticks: decades
                .clone()
                .step_by(every as usize)
                .map(f64::from)
                .collect(),
            minor: decades
                .filter(|_| every == 1)
                .flat_map(|k| (2..10).map(move |m| f64::from(k) + f64::from(m).log10()))
                .filter(|&v| v < f64::from(last))
                .collect(),
            log: true,
        }
    }

    /// The axis coordinate of data value `v`.
    fn map(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    /// The label of the tick at axis coordinate `v`.
    fn label(&self, v: f64) -> String {
        if self.log {
            let k = v.round() as i32;
            return if (-3..=4).contains(&k) {
                trim_zeros(&format!("{:.3}", 10f64.powi(k))).to_owned()
            } else {
                format!("1e{k}")
            };
        }
        let step = match self.ticks.as_slice() {
            [a, b, ..] => b - a,
            _ => self.hi - self.lo,
        };
        let hundredths = step * 100.0;
        let two_decimals = (hundredths - hundredths.round()).abs() <= 1e-6 * hundredths.abs();
        if v == 0.0 || (v.abs() < 1e6 && two_decimals) {
            trim_zeros(&format!("{v:.2}")).to_owned()
        } else {
            let s = format!("{v:.2e}");
            match s.split_once('e') {
                Some((mantissa, exponent)) => format!("{}e{exponent}", trim_zeros(mantissa)),
                None => s,
            }
        }
    }
}

/// How `plotters` places values and grid lines on an [`Axis`].
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        let frac = if span.is_finite() && span > 0.0 {
            (v - self.lo) / span
        } else {
            0.5
        };
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Step vertices for `points`: before each point after the first, a corner at its x and
/// the previous point's y.
fn steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, &(x, y)) in points.iter().enumerate() {
        if i > 0 {
            out.push((x, points[i - 1].1));
        }
        out.push((x, y));
    }
    out
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

/// The smallest and largest of `values`, or `None` when there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
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

/// Drops trailing zeros after a decimal point, and the point itself if nothing follows.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
