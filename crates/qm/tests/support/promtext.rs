//! A strict parser of the Prometheus text exposition format (0.0.4), for tests: every line
//! must be a `# HELP`, a `# TYPE` or a sample with a valid name, labels and value; a metric's
//! samples follow its `# TYPE`; histograms have cumulative buckets ending in `+Inf` that
//! equal `_count`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// Parses `{a="x",b="y"}` from the start of `s`; returns the labels and the rest.
fn labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut out = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        }
        let eq = rest.find('=').ok_or("expected =")?;
        let name = &rest[..eq];
        if !valid_label(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|c| c.1) != Some('"') {
            return Err("expected a quoted label value".into());
        }
        let mut val = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                val.push(match c {
                    'n' => '\n',
                    '\\' => '\\',
                    '"' => '"',
                    other => return Err(format!("bad escape \\{other}")),
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(eq + 1 + i + 1);
                break;
            } else {
                val.push(c);
            }
        }
        let end = end.ok_or("unterminated label value")?;
        if out.insert(name.to_string(), val).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err("TYPE given twice".into()));
                    }
                    current = Some(name.to_string());
                }
                _ => return Err(err("bad comment line".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let v = value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        let family = current
            .clone()
            .ok_or_else(|| err("a sample before any TYPE".into()))?;
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        if base != family {
            return Err(err(format!("sample of {base} under TYPE {family}")));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: v,
        });
    }
    // Histograms: cumulative buckets, +Inf equal to _count.
    for (name, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = out
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .collect();
        let counts: Vec<f64> = buckets.iter().map(|s| s.value).collect();
        if counts.windows(2).any(|w| w[1] < w[0]) {
            return Err(format!("{name}: buckets not cumulative"));
        }
        let inf = buckets
            .iter()
            .find(|s| s.labels.get("le").map(String::as_str) == Some("+Inf"))
            .ok_or(format!("{name}: no +Inf bucket"))?;
        let count = out
            .iter()
            .find(|s| s.name == format!("{name}_count"))
            .ok_or(format!("{name}: no _count"))?;
        if inf.value != count.value {
            return Err(format!("{name}: +Inf bucket differs from _count"));
        }
    }
    Ok(out)
}

/// The value of the sample `name` with exactly these labels.
pub fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn the_parser_refuses_what_the_format_forbids() {
    assert!(parse("# TYPE a gauge\na{b=\"c\"} 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "a sample without TYPE");
    assert!(
        parse("# TYPE a gauge\na{b=c} 1\n").is_err(),
        "an unquoted label value"
    );
    assert!(parse("# TYPE a gauge\n9a 1\n").is_err(), "a bad name");
    assert!(parse("# TYPE a gauge\na x\n").is_err(), "a bad value");
    assert!(parse(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
    )
    .is_err());
    let s = parse("# TYPE a gauge\na{b=\"x\\\"y\\\\z\"} +Inf\n").unwrap();
    assert_eq!(s[0].labels["b"], "x\"y\\z");
}
