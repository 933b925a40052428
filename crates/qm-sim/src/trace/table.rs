//! The table reader under every trace format: a CSV file split into a header and rows, with
//! columns found by name and every fault reported as ``file:line: column `name`: expected ...,
//! found ...`` ([`TraceError`]).
//!
//! The CSV dialect: fields are separated by commas and trimmed of surrounding whitespace. A
//! field may be enclosed in double quotes, which keeps commas and whitespace inside it; a
//! doubled `""` inside stands for one quote. A quoted field cannot span lines. Every row has as
//! many fields as the header. Blank lines are skipped, and so is a leading byte-order mark.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Why a trace could not be read. Its message reads
/// ``file:line: column `name`: expected ..., found ...`` (without the column where the fault
/// is not in one field), or `file: cannot read the trace: ...` for an I/O error.
#[derive(Debug)]
pub struct TraceError {
    /// The file name as given to [`load`](super::load) or [`parse`](super::parse).
    pub file: String,
    /// 1-based, the header being line 1; 0 for an I/O error.
    pub line: usize,
    pub column: Option<String>,
    pub expected: String,
    /// What was there, as printed: a field's text is quoted.
    pub found: String,
    /// The I/O error, where the file could not be read at all.
    pub io: Option<std::io::Error>,
}

/// Reads a whole file for a loader: its name as `path` spells it (for error messages) and its
/// text.
pub(crate) fn read_file(path: &Path) -> Result<(String, String), TraceError> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(error) => Err(TraceError::io(&name, error)),
    }
}

impl TraceError {
    pub(crate) fn at(
        file: &str,
        line: usize,
        column: Option<&str>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> TraceError {
        TraceError {
            file: file.to_string(),
            line,
            column: column.map(str::to_string),
            expected: expected.into(),
            found: found.into(),
            io: None,
        }
    }

    pub(crate) fn io(file: &str, error: std::io::Error) -> TraceError {
        TraceError {
            file: file.to_string(),
            line: 0,
            column: None,
            expected: "a readable trace file".to_string(),
            found: error.to_string(),
            io: Some(error),
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(error) = &self.io {
            return write!(f, "{}: cannot read the trace: {error}", self.file);
        }
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(column) = &self.column {
            write!(f, "column `{column}`: ")?;
        }
        write!(f, "expected {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io
            .as_ref()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

const SECONDS: &str = "a non-negative number of seconds";
const POSITIVE_SECONDS: &str = "a positive number of seconds";
/// Seconds beyond this do not fit the signed arithmetic of the rebase.
const MAX_SECONDS: u64 = i64::MAX as u64;

/// A CSV file: its header and its non-blank rows, split into trimmed fields.
pub(crate) struct Table {
    header_line: usize,
    header: Vec<String>,
    rows: Vec<Row>,
}

pub(crate) struct Row {
    /// 1-based line in the file.
    pub(crate) line: usize,
    /// 1-based among the data rows.
    pub(crate) number: u64,
    fields: Vec<String>,
}

impl Table {
    pub(crate) fn read(file: &str, text: &str) -> Result<Table, TraceError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut header: Option<(usize, Vec<String>)> = None;
        let mut rows = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let fields = split_fields(raw).map_err(|expected| {
                TraceError::at(file, line, None, expected, format!("{:?}", raw.trim()))
            })?;
            match header.as_ref().map(|(_, names)| names.len()) {
                None => {
                    for (i, name) in fields.iter().enumerate() {
                        if fields[..i].contains(name) {
                            return Err(TraceError::at(
                                file,
                                line,
                                Some(name.as_str()),
                                "distinct column names in the header",
                                "it twice",
                            ));
                        }
                    }
                    header = Some((line, fields));
                }
                Some(width) => {
                    if fields.len() != width {
                        return Err(TraceError::at(
                            file,
                            line,
                            None,
                            format!("{width} fields, as in the header"),
                            format!("{} fields", fields.len()),
                        ));
                    }
                    let number = rows.len() as u64 + 1;
                    rows.push(Row {
                        line,
                        number,
                        fields,
                    });
                }
            }
        }
        match header {
            Some((header_line, header)) => Ok(Table {
                header_line,
                header,
                rows,
            }),
            None => Err(TraceError::at(
                file,
                1,
                None,
                "a header line naming the columns",
                "an empty file",
            )),
        }
    }

    pub(crate) fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|column| column == name)
    }

    /// The indices of the columns `names`, or an error naming the missing ones.
    pub(crate) fn require<const N: usize>(
        &self,
        file: &str,
        names: [&str; N],
    ) -> Result<[usize; N], TraceError> {
        let mut indices = [0; N];
        let mut missing = Vec::new();
        for (slot, name) in indices.iter_mut().zip(names) {
            match self.column(name) {
                Some(index) => *slot = index,
                None => missing.push(name),
            }
        }
        match missing.first() {
            None => Ok(indices),
            Some(&first) => Err(TraceError::at(
                file,
                self.header_line,
                Some(first),
                format!("a header with the required columns {}", names.join(", ")),
                format!("no column `{}`", missing.join("`, `")),
            )),
        }
    }

    pub(crate) fn records<'a>(&'a self, file: &'a str) -> impl Iterator<Item = Rec<'a>> + 'a {
        self.rows.iter().map(move |row| Rec {
            file,
            header: &self.header,
            row,
        })
    }
}

/// One data row, with what it takes to name its fields in errors.
pub(crate) struct Rec<'a> {
    file: &'a str,
    header: &'a [String],
    pub(crate) row: &'a Row,
}

impl<'a> Rec<'a> {
    pub(crate) fn cell(&self, index: usize) -> Cell<'a> {
        let header: &'a [String] = self.header;
        let row: &'a Row = self.row;
        Cell {
            file: self.file,
            line: row.line,
            column: &header[index],
            text: &row.fields[index],
        }
    }

    /// The field of an optional column: `None` where the column is absent or the field empty.
    pub(crate) fn optional(&self, index: Option<usize>) -> Option<Cell<'a>> {
        index
            .map(|index| self.cell(index))
            .filter(|cell| !cell.text.is_empty())
    }
}

/// One field, with its place for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Cell<'a> {
    pub(crate) file: &'a str,
    pub(crate) line: usize,
    pub(crate) column: &'a str,
    pub(crate) text: &'a str,
}

impl Cell<'_> {
    pub(crate) fn error(&self, expected: impl Into<String>) -> TraceError {
        TraceError::at(
            self.file,
            self.line,
            Some(self.column),
            expected,
            format!("{:?}", self.text),
        )
    }

    pub(crate) fn number<T: FromStr>(&self, expected: &str) -> Result<T, TraceError> {
        self.text.parse().map_err(|_| self.error(expected))
    }

    /// Whole seconds, from an integer or a decimal number, rounded up or down.
    pub(crate) fn seconds(&self, round_up: bool) -> Result<u64, TraceError> {
        if let Ok(whole) = self.text.parse::<u64>() {
            return if whole <= MAX_SECONDS {
                Ok(whole)
            } else {
                Err(self.error(SECONDS))
            };
        }
        match self.text.parse::<f64>() {
            Ok(value) if value.is_finite() && (0.0..=9.0e18).contains(&value) => {
                let rounded = if round_up {
                    value.ceil()
                } else {
                    value.floor()
                };
                Ok(rounded as u64)
            }
            _ => Err(self.error(SECONDS)),
        }
    }

    pub(crate) fn positive_seconds(&self) -> Result<u64, TraceError> {
        match self.seconds(true) {
            Ok(0) | Err(_) => Err(self.error(POSITIVE_SECONDS)),
            Ok(seconds) => Ok(seconds),
        }
    }

    pub(crate) fn flag(&self) -> Result<bool, TraceError> {
        match self.text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(self.error("true or false")),
        }
    }
}

/// Splits one CSV line into trimmed fields; the error says what was expected.
fn split_fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err("a closing double quote"),
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("a comma after a closing double quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field.trim_end().to_string());
                        break;
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_split_with_quotes_and_whitespace() {
        assert_eq!(
            split_fields(r#" a , "b, ""c""" ,,"  d  " "#).unwrap(),
            vec!["a", "b, \"c\"", "", "  d  "]
        );
        assert_eq!(split_fields("x,").unwrap(), vec!["x", ""]);
        assert!(split_fields("a,\"b").is_err());
        assert!(split_fields("\"a\"b").is_err());
    }
}
