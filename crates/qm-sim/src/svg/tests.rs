//! The charts' tests: well-formed SVG, text where a reader looks for it, deterministic output,
//! the log axis's decades.

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

/// Checks that the document is one well-formed `<svg>` element: tags balance, text and
/// attributes are escaped, no NaN or infinity leaked in. Returns the tag names, in order.
fn assert_valid(svg: &str) -> Vec<&str> {
    let svg = svg.trim_end();
    assert!(svg.starts_with("<svg "), "bad start: {svg}");
    assert!(svg.ends_with("</svg>"), "bad end: {svg}");
    assert!(svg.contains(r#"viewBox="0 0 800 450""#));
    assert!(!svg.contains("NaN"), "NaN in {svg}");
    assert!(!svg.contains("inf"), "infinity in {svg}");
    let mut stack: Vec<&str> = Vec::new();
    let mut tags = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        assert_escaped(&rest[..start]);
        let len = rest[start..].find('>').expect("unterminated tag");
        let tag = &rest[start + 1..start + len];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in {tag}"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name), "mismatched closing tag in {svg}");
        } else {
            let name = tag.split_whitespace().next().expect("empty tag");
            let name = name.trim_end_matches('/');
            assert!(!stack.is_empty() || name == "svg", "{name} outside <svg>");
            tags.push(name);
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[start + len + 1..];
    }
    assert_escaped(rest);
    assert!(stack.is_empty(), "unclosed tags {stack:?} in {svg}");
    tags
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

/// The contents of every `<text>` element, in order.
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
        .map(|(text, _)| text.trim())
        .collect()
}

/// The `points` of every `<polyline>` with the stroke of palette colour `i`.
fn lines_of(svg: &str, i: usize) -> Vec<&str> {
    let RGBColor(r, g, b) = PALETTE[i];
    let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
    svg.split("<polyline")
        .skip(1)
        .filter(|l| l.split('>').next().is_some_and(|tag| tag.contains(&stroke)))
        .filter_map(|l| l.split("points=\"").nth(1)?.split('"').next())
        .map(str::trim)
        .collect()
}

#[test]
fn line_chart_has_title_labels_and_a_legend_entry_per_series() {
    let svg = line_chart(
        "Queue <wait> & \"p99\"",
        "time (s)",
        "jobs",
        &[
            series("default", &[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)]),
            series("fifo", &[(0.0, 2.0), (2.0, 5.0)]),
        ],
    );
    assert_valid(&svg);
    let texts = texts(&svg);
    assert!(texts.contains(&"Queue &lt;wait&gt; &amp; &quot;p99&quot;"));
    assert!(texts.contains(&"time (s)") && texts.contains(&"jobs"));
    assert_eq!(texts.iter().filter(|&&t| t == "default").count(), 1);
    assert_eq!(texts.iter().filter(|&&t| t == "fifo").count(), 1);
    assert_eq!(lines_of(&svg, 0).len(), 1);
    assert_eq!(lines_of(&svg, 0)[0].split(' ').count(), 3);
    assert_eq!(lines_of(&svg, 1).len(), 1);
    // Ticks 0..5 on y, 0..2 on x.
    for tick in ["0", "1", "2", "5"] {
        assert!(texts.contains(&tick), "no tick {tick} in {texts:?}");
    }
}

#[test]
fn step_chart_draws_horizontal_then_vertical() {
    let svg = step_chart(
        "Wait CDF",
        "wait (hours)",
        "fraction of jobs",
        Scale::Linear,
        &[
            series("default", &[(0.0, 0.0), (5.0, 0.5), (9.0, 1.0)]),
            series("empty", &[]),
            series("static", &[(1.0, 0.2), (3.0, 1.0)]),
        ],
    );
    assert_valid(&svg);
    let line = lines_of(&svg, 0);
    assert_eq!(line.len(), 1);
    let vertices: Vec<(i32, i32)> = line[0]
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(vertices.len(), 5);
    for (i, w) in vertices.windows(2).enumerate() {
        if i % 2 == 0 {
            assert_eq!(w[0].1, w[1].1, "horizontal first: {vertices:?}");
        } else {
            assert_eq!(w[0].0, w[1].0, "then vertical: {vertices:?}");
        }
    }
    assert!(lines_of(&svg, 1).is_empty());
    assert_eq!(lines_of(&svg, 2).len(), 1);
    assert!(
        texts(&svg).contains(&"empty"),
        "empty series keep their legend entry"
    );
}

#[test]
fn log_axis_has_a_tick_at_every_decade_and_clamps_to_its_floor() {
    let waits = [(0.0, 0.25), (0.5, 0.5), (3.0, 0.75), (400.0, 1.0)];
    let svg = step_chart(
        "Queueing delay",
        "wait (hours, log)",
        "fraction of jobs",
        Scale::Log { floor: 0.01 },
        &[series("default", &waits)],
    );
    assert_valid(&svg);
    let texts = texts(&svg);
    let decades = ["0.01", "0.1", "1", "10", "100", "1000"];
    for tick in decades {
        assert!(texts.contains(&tick), "no tick {tick} in {texts:?}");
    }
    assert!(!texts.contains(&"0.001") && !texts.contains(&"10000"));
    // Labelled ticks are evenly spaced: one decade each.
    let x_of = |label: &str| -> i32 {
        let at = svg.rfind(&format!(">\n{label}\n</text>")).unwrap();
        let tag = &svg[svg[..at].rfind("<text").unwrap()..at];
        tag.split("x=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let xs: Vec<i32> = decades.iter().map(|d| x_of(d)).collect();
    let gaps: Vec<i32> = xs.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g > 0 && (g - gaps[0]).abs() <= 1),
        "{xs:?}"
    );
    // The zero wait is drawn at the floor: the line starts on the axis' left end.
    let first = lines_of(&svg, 0)[0].split(' ').next().unwrap();
    let x: i32 = first.split_once(',').unwrap().0.parse().unwrap();
    assert!((x - xs[0]).abs() <= 1, "{first} vs {xs:?}");
    // Minor grid lines at 2..9 x each decade, five decades.
    assert!(svg.matches("<line").count() >= 5 * 8);
}

#[test]
fn log_axis_survives_degenerate_input() {
    let cases: Vec<(Scale, Vec<Series>)> = vec![
        (Scale::Log { floor: 0.01 }, vec![]),
        (
            Scale::Log { floor: 0.01 },
            vec![series("zeros", &[(0.0, 1.0)])],
        ),
        (Scale::Log { floor: 0.0 }, vec![series("x", &[(5.0, 1.0)])]),
        (
            Scale::Log { floor: f64::NAN },
            vec![series("x", &[(-5.0, 1.0)])],
        ),
        (
            Scale::Log { floor: 1e-300 },
            vec![series("wide", &[(1e-300, 0.0), (1e300, 1.0)])],
        ),
    ];
    for (scale, case) in cases {
        let svg = step_chart("t", "x", "y", scale, &case);
        assert_valid(&svg);
        assert!(
            texts(&svg)
                .iter()
                .filter(|t| t.starts_with("1e") || t.starts_with('0') || t.starts_with('1'))
                .count()
                >= 2
        );
    }
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
    let tags = assert_valid(&svg);
    let texts = texts(&svg);
    assert!(texts.contains(&"GPU hours &lt;by team&gt;") && texts.contains(&"hours"));
    for name in ["a", "b", "c", "default", "fifo", "static"] {
        assert_eq!(texts.iter().filter(|&&t| t == name).count(), 1, "{name}");
    }
    // 6 bars and 3 legend swatches, besides the background and the frame.
    let filled = |i: usize| {
        let RGBColor(r, g, b) = PALETTE[i];
        svg.matches(&format!("fill=\"#{r:02X}{g:02X}{b:02X}\""))
            .count()
    };
    assert_eq!((filled(0), filled(1), filled(2)), (4, 1, 4));
    assert!(tags.iter().filter(|&&t| t == "rect").count() >= 9);
    assert_eq!(svg.matches("rotate(").count(), 1, "only the y axis label");
}

#[test]
fn bar_chart_turns_many_labels() {
    let teams: Vec<String> = (0..12).map(|i| format!("6214e{i}")).collect();
    let values: Vec<f64> = (0..12u8).map(f64::from).collect();
    let svg = bar_chart(
        "Mean wait per team",
        "hours",
        &teams,
        &[bars("fifo", &values)],
    );
    assert_valid(&svg);
    assert_eq!(svg.matches("rotate(270").count(), 1 + 12);
    assert!(texts(&svg).contains(&"6214e11"));
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
        let drawn = case
            .iter()
            .filter(|s| finite_points(&s.points).len() > 1)
            .count();
        let line = line_chart("t", "x", "y", case);
        assert_valid(&line);
        assert_eq!(lines_of(&line, 0).len(), drawn, "{case:?}");
        let step = step_chart("t", "x", "y", Scale::Linear, case);
        assert_valid(&step);
        assert_eq!(lines_of(&step, 0).len(), drawn);
    }
    let dot = line_chart("t", "x", "y", &[series("one", &[(3.0, 4.0)])]);
    assert_eq!(dot.matches("<circle").count(), 1);
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
fn tick_labels_are_short() {
    let labels =
        |axis: &Axis| -> Vec<String> { axis.ticks.iter().map(|&t| axis.label(t)).collect() };
    assert_eq!(
        labels(&Axis::linear(0.0, 1.0)),
        ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    );
    assert_eq!(labels(&Axis::linear(0.0, 3e6)), ["0", "1e6", "2e6", "3e6"]);
    assert_eq!(labels(&Axis::linear(0.001, 0.0042))[1], "2e-3");
    assert_eq!(labels(&Axis::log(0.5, 20.0)), ["0.1", "1", "10", "100"]);
    assert_eq!(labels(&Axis::log(1e-6, 1e-5)), ["1e-6", "1e-5"]);
    let wide = Axis::log(1e-20, 1e20);
    assert_eq!(wide.ticks.len(), 11, "every 4th decade of 40");
    assert!(wide.minor.is_empty());
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
    assert!(lines_of(&svg, 0)[0].split(' ').count() <= MAX_POINTS);
    assert!(svg.len() < 30_000, "{} bytes", svg.len());

    let step = step_chart(
        "big",
        "x",
        "y",
        Scale::Log { floor: 1.0 },
        &[series("s", &points)],
    );
    assert_valid(&step);
    assert!(lines_of(&step, 0)[0].split(' ').count() <= MAX_POINTS);
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
    let log = Scale::Log { floor: 0.1 };
    assert_eq!(
        step_chart("t", "x", "y", log, &input),
        step_chart("t", "x", "y", log, &input)
    );
    let cats = categories(&["a", "b"]);
    let b = [bars("default", &[1.0, 2.0])];
    assert_eq!(
        bar_chart("t", "y", &cats, &b),
        bar_chart("t", "y", &cats, &b)
    );
}
