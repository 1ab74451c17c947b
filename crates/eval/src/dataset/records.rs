//! Reading JSON, JSON-lines and CSV benchmark files into located records with typed field access.

use super::DataError;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a record sits in its file: JSON-lines and CSV have lines, a JSON array has indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// 1-based line number.
    Line(usize),
    /// 1-based position in a JSON array or object.
    Record(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Record(n) => write!(f, "record {n}"),
        }
    }
}

/// One JSON record with its file and place, so every field error can name all three.
pub struct Rec<'a> {
    pub v: &'a Value,
    pub file: &'a Path,
    pub loc: Loc,
}

impl<'a> Rec<'a> {
    pub fn err(&self, field: &str, msg: impl Into<String>) -> DataError {
        DataError::at(self.file, Some(self.loc), Some(field), msg)
    }

    pub fn has(&self, field: &str) -> bool {
        self.v.get(field).is_some_and(|v| !v.is_null())
    }

    pub fn get(&self, field: &str) -> Result<&'a Value, DataError> {
        match self.v.get(field) {
            Some(v) if !v.is_null() => Ok(v),
            _ => Err(self.err(field, "missing")),
        }
    }

    /// A required string field (numbers are accepted and printed, as some exports store ids so).
    pub fn str(&self, field: &str) -> Result<String, DataError> {
        match self.get(field)? {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(self.err(field, format!("expected a string, found {}", kind(other)))),
        }
    }

    pub fn opt_str(&self, field: &str) -> Option<String> {
        match self.v.get(field) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    /// A required non-negative integer, also accepted as a numeric string.
    pub fn int(&self, field: &str) -> Result<i64, DataError> {
        let v = self.get(field)?;
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        n.ok_or_else(|| self.err(field, format!("expected an integer, found {}", show(v))))
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a value for error messages.
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// The records of a `.jsonl` file, or of a `.json` file holding an array of records.
pub fn read_json_records(path: &Path) -> Result<Vec<(Loc, Value)>, DataError> {
    let text = read_text(path)?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            DataError::at(
                path,
                Some(Loc::Line(e.line())),
                None,
                format!("invalid JSON: {e}"),
            )
        })?;
        return Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (Loc::Record(i + 1), v))
            .collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            DataError::at(
                path,
                Some(Loc::Line(i + 1)),
                None,
                format!("invalid JSON: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(DataError::at(
                path,
                Some(Loc::Line(i + 1)),
                None,
                format!("expected a JSON object, found {}", kind(&v)),
            ));
        }
        out.push((Loc::Line(i + 1), v));
    }
    Ok(out)
}

/// The first record of a JSON-lines or JSON file, for layout detection: a JSON-lines file's
/// first line is read alone (train files are large); arrays and multi-line objects whole.
pub fn first_json_record(path: &Path) -> Result<Option<Value>, DataError> {
    use std::io::BufRead;
    let file = std::fs::File::open(path)
        .map_err(|e| DataError::at(path, None, None, format!("cannot read: {e}")))?;
    let mut first = String::new();
    for line in std::io::BufReader::new(file).lines() {
        let line =
            line.map_err(|e| DataError::at(path, None, None, format!("cannot read: {e}")))?;
        if !line.trim().is_empty() {
            first = line;
            break;
        }
    }
    let trimmed = first.trim_start();
    if trimmed.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(&first) {
            return Ok(Some(v));
        }
    } else if !trimmed.starts_with('[') {
        return Ok(None);
    }
    // A JSON array, or an object spread over lines (PubMedQA's ori_pqal.json).
    let text = read_text(path)?;
    let whole: Value = serde_json::from_str(&text).map_err(|e| {
        DataError::at(
            path,
            Some(Loc::Line(e.line())),
            None,
            format!("invalid JSON: {e}"),
        )
    })?;
    Ok(match whole {
        Value::Array(values) => values.into_iter().next(),
        other => Some(other),
    })
}

pub fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path)
        .map_err(|e| DataError::at(path, None, None, format!("cannot read: {e}")))
}

/// A JSON object read with its keys in file order (serde_json's own map sorts them, and the
/// order of PubMedQA's questions is what `--limit` takes the first of).
pub struct OrderedObject(pub Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

pub fn read_ordered_object(path: &Path) -> Result<OrderedObject, DataError> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| {
        DataError::at(
            path,
            Some(Loc::Line(e.line())),
            None,
            format!("invalid JSON: {e}"),
        )
    })
}

/// Rows of a headerless CSV file with their 1-based line numbers.
pub fn read_csv_rows(path: &Path) -> Result<Vec<(Loc, Vec<String>)>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| DataError::at(path, None, None, format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| {
            let line = e.position().map(|p| Loc::Line(p.line() as usize));
            DataError::at(path, line, None, format!("invalid CSV: {e}"))
        })?;
        let line = row.position().map(|p| p.line() as usize).unwrap_or(0);
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        out.push((Loc::Line(line), row.iter().map(str::to_string).collect()));
    }
    Ok(out)
}

/// Lower-cased file name, for matching split and subject names.
pub fn file_name_lower(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

pub fn display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
