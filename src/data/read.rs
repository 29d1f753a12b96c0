//! Line-level readers for task files: JSONL (the shared schema) and TSV/CSV with a header row.
//!
//! Readers return [`RawRow`]s with the 1-based line each example starts on, so every later error
//! (a label outside the label space, a missing `text_b` on a pair task) can name the file and the
//! line. Labels stay raw (an index or a name) until [`resolve_label`] maps them into a label
//! space; the readers know nothing about label spaces.

use super::{BAD_FILE, BAD_LABEL, LAYOUT_HELP};
use crate::diag::OpError;
use std::path::Path;

/// A label as written in a file: an index (`1`) or a name (`"positive"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawLabel {
    Index(i64),
    Name(String),
}

impl std::fmt::Display for RawLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawLabel::Index(i) => write!(f, "{i}"),
            RawLabel::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// One example as read from a file, before its label is resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// 1-based line number where the example starts.
    pub line: usize,
    /// An explicit `id` field, when the file has one (files written by the store do).
    pub id: Option<usize>,
    pub text: String,
    pub text_b: Option<String>,
    pub label: RawLabel,
}

/// Supported file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Tsv,
    Csv,
}

impl Format {
    /// Extensions tried, in order, when a split is named without one.
    pub const EXTENSIONS: [&'static str; 3] = ["jsonl", "tsv", "csv"];

    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "jsonl" | "json" => Some(Format::Jsonl),
            "tsv" => Some(Format::Tsv),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// Read every example of a JSONL, TSV or CSV file.
pub fn read_rows(path: &Path) -> Result<Vec<RawRow>, OpError> {
    let format = Format::of(path).ok_or_else(|| {
        OpError::new(
            BAD_FILE,
            format!("`{}`: unknown task file format", path.display()),
        )
        .with_help("use a `.jsonl`, `.tsv` or `.csv` file")
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        OpError::new(
            "smelt::io::missing_file",
            format!("cannot read `{}`: {e}", path.display()),
        )
        .with_help(LAYOUT_HELP)
    })?;
    match format {
        Format::Jsonl => parse_jsonl(&text, path),
        Format::Tsv => parse_delimited(&text, '\t', path),
        Format::Csv => parse_delimited(&text, ',', path),
    }
}

fn bad(path: &Path, line: usize, what: impl std::fmt::Display) -> OpError {
    OpError::new(
        BAD_FILE,
        format!("line {line} of `{}`: {what}", path.display()),
    )
}

/// Parse JSONL text: one object per non-blank line with `text`, optional `text_b`, `label`.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<RawRow>, OpError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(path, n, format!("invalid JSON ({e})")).with_help(
                "each line must be one JSON object such as {\"text\": \"…\", \"label\": 0}",
            )
        })?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(path, n, "expected a JSON object").with_help(LAYOUT_HELP))?;
        let text = match obj.get("text") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => return Err(bad(path, n, "no `text` string field").with_help(LAYOUT_HELP)),
        };
        let text_b = match obj.get("text_b") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad(path, n, "`text_b` must be a string")),
        };
        let label = match obj.get("label") {
            Some(serde_json::Value::Number(x)) => match x.as_i64() {
                Some(i) => RawLabel::Index(i),
                None => return Err(bad(path, n, format!("label {x} is not an integer index"))),
            },
            Some(serde_json::Value::String(s)) => RawLabel::Name(s.clone()),
            _ => {
                return Err(bad(path, n, "no `label` field (an index or a label name)")
                    .with_help(LAYOUT_HELP))
            }
        };
        let id = obj.get("id").and_then(|x| x.as_u64()).map(|x| x as usize);
        rows.push(RawRow {
            line: n,
            id,
            text,
            text_b,
            label,
        });
    }
    Ok(rows)
}

/// Split delimited text into records of fields with the line each record starts on. CSV fields
/// may be quoted (`"a, b"`, `""` for a quote, newlines inside quotes); TSV fields are raw.
fn records(text: &str, delim: char, path: &Path) -> Result<Vec<(usize, Vec<String>)>, OpError> {
    let quoting = delim == ',';
    let mut out = Vec::new();
    let (mut line, mut start) = (1usize, 1usize);
    let (mut field, mut fields) = (String::new(), Vec::new());
    let (mut in_quotes, mut was_quoted) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if quoting && field.is_empty() && !was_quoted => {
                in_quotes = true;
                was_quoted = true;
            }
            c if c == delim => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
                if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                    out.push((start, std::mem::take(&mut fields)));
                }
                fields.clear();
                line += 1;
                start = line;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err(bad(path, start, "unterminated quoted field"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
}

/// Parse TSV (`delim = '\t'`) or CSV (`','`) text with a header naming `text`, `label` and
/// optionally `text_b` (aliases: `sentence`/`sentence1`, `sentence2`; other columns are ignored).
pub fn parse_delimited(text: &str, delim: char, path: &Path) -> Result<Vec<RawRow>, OpError> {
    let recs = records(text, delim, path)?;
    let Some(((_, header), body)) = recs.split_first() else {
        return Ok(Vec::new());
    };
    let col = |names: &[&str]| {
        header
            .iter()
            .position(|h| names.contains(&h.trim().trim_start_matches('\u{feff}')))
    };
    let help = "the first row names the columns: text, label and (pair tasks) text_b";
    let text_col = col(&["text", "sentence", "sentence1"])
        .ok_or_else(|| bad(path, 1, "the header has no `text` column").with_help(help))?;
    let label_col = col(&["label"])
        .ok_or_else(|| bad(path, 1, "the header has no `label` column").with_help(help))?;
    let b_col = col(&["text_b", "sentence2"]);
    let id_col = col(&["id"]);
    let mut rows = Vec::with_capacity(body.len());
    for (line, fields) in body {
        if fields.len() != header.len() {
            return Err(bad(
                path,
                *line,
                format!(
                    "{} fields, but the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let label = fields[label_col].trim().to_string();
        rows.push(RawRow {
            line: *line,
            id: id_col.and_then(|c| fields[c].trim().parse().ok()),
            text: fields[text_col].clone(),
            text_b: b_col.map(|c| fields[c].clone()),
            label: RawLabel::Name(label),
        });
    }
    Ok(rows)
}

/// Map a raw label into `labels`: an index must be in range; a name must be one of the labels
/// (or an index written as text, as in TSV files).
pub fn resolve_label(
    raw: &RawLabel,
    labels: &[String],
    path: &Path,
    line: usize,
) -> Result<usize, OpError> {
    let index = match raw {
        RawLabel::Index(i) => Some(*i),
        RawLabel::Name(s) => match labels.iter().position(|l| l == s) {
            Some(i) => return Ok(i),
            None => s.trim().parse::<i64>().ok(),
        },
    };
    match index {
        Some(i) if i >= 0 && (i as usize) < labels.len() => Ok(i as usize),
        _ => Err(OpError::new(
            BAD_LABEL,
            format!(
                "label {raw} on line {line} of `{}` is outside the label space [{}]",
                path.display(),
                labels.join(", ")
            ),
        )
        .with_help(format!(
            "labels are indices 0..{} or names from labels.json; fix the line or add the label to \
             labels.json",
            labels.len().saturating_sub(1)
        ))),
    }
}

/// Infer a label space from raw labels (single files without `labels.json`): all indices give
/// `"0"..="max"`, otherwise the sorted distinct names.
pub fn infer_labels(rows: &[RawRow]) -> Vec<String> {
    let ints: Option<Vec<i64>> = rows
        .iter()
        .map(|r| match &r.label {
            RawLabel::Index(i) => Some(*i),
            RawLabel::Name(s) => s.trim().parse().ok(),
        })
        .collect();
    match ints {
        Some(v) if v.iter().all(|&i| i >= 0) => {
            let max = v.iter().copied().max().unwrap_or(-1);
            (0..=max).map(|i| i.to_string()).collect()
        }
        _ => {
            let mut names: Vec<String> = rows.iter().map(|r| r.label.to_plain()).collect();
            names.sort();
            names.dedup();
            names
        }
    }
}

impl RawLabel {
    fn to_plain(&self) -> String {
        match self {
            RawLabel::Index(i) => i.to_string(),
            RawLabel::Name(s) => s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t/train.jsonl")
    }

    #[test]
    fn jsonl_rows_and_blank_lines() {
        let t = "{\"text\": \"a\", \"label\": 1}\n\n{\"text\": \"b\", \"text_b\": \"c\", \"label\": \"pos\", \"id\": 7}\n";
        let rows = parse_jsonl(t, p()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].id, Some(7));
        assert_eq!(rows[1].text_b.as_deref(), Some("c"));
        assert_eq!(rows[1].label, RawLabel::Name("pos".into()));
    }

    #[test]
    fn bad_json_names_file_and_line() {
        let t = "{\"text\": \"a\", \"label\": 1}\n{\"text\": oops}\n";
        let e = parse_jsonl(t, p()).unwrap_err();
        assert_eq!(e.code, BAD_FILE);
        assert!(
            e.message.contains("line 2 of `t/train.jsonl`"),
            "{}",
            e.message
        );
        let e = parse_jsonl("{\"label\": 1}\n", p()).unwrap_err();
        assert!(e.message.contains("no `text`"), "{}", e.message);
    }

    #[test]
    fn csv_quotes_and_tsv() {
        let csv = "label,text\npos,\"hello, \"\"world\"\"\"\nneg,\"two\nlines\"\nneg,x\n";
        let rows = parse_delimited(csv, ',', Path::new("a.csv")).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].text, "hello, \"world\"");
        assert_eq!(rows[1].text, "two\nlines");
        assert_eq!((rows[1].line, rows[2].line), (3, 5));
        let tsv = "text\ttext_b\tlabel\na\tb\t1\r\nc\td\t0\n";
        let rows = parse_delimited(tsv, '\t', Path::new("a.tsv")).unwrap();
        assert_eq!(rows[1].text_b.as_deref(), Some("d"));
        assert_eq!(rows[1].label, RawLabel::Name("0".into()));
        let e = parse_delimited("text\tlabel\na\tb\tc\n", '\t', Path::new("a.tsv")).unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        let e = parse_delimited("sent\tlabel\n", '\t', Path::new("a.tsv")).unwrap_err();
        assert!(e.message.contains("no `text` column"), "{}", e.message);
    }

    #[test]
    fn labels_resolve_by_index_or_name() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        assert_eq!(
            resolve_label(&RawLabel::Index(1), &labels, p(), 1).unwrap(),
            1
        );
        assert_eq!(
            resolve_label(&RawLabel::Name("neg".into()), &labels, p(), 1).unwrap(),
            0
        );
        assert_eq!(
            resolve_label(&RawLabel::Name("1".into()), &labels, p(), 1).unwrap(),
            1
        );
        let e = resolve_label(&RawLabel::Index(2), &labels, p(), 9).unwrap_err();
        assert_eq!(e.code, BAD_LABEL);
        assert!(e.message.contains("label 2 on line 9"), "{}", e.message);
        let e = resolve_label(&RawLabel::Name("meh".into()), &labels, p(), 3).unwrap_err();
        assert!(e.message.contains("\"meh\""), "{}", e.message);
    }

    #[test]
    fn inferred_label_spaces() {
        let row = |l: RawLabel| RawRow {
            line: 1,
            id: None,
            text: String::new(),
            text_b: None,
            label: l,
        };
        let ints = [row(RawLabel::Index(2)), row(RawLabel::Name("0".into()))];
        assert_eq!(infer_labels(&ints), vec!["0", "1", "2"]);
        let names = [
            row(RawLabel::Name("b".into())),
            row(RawLabel::Name("a".into())),
        ];
        assert_eq!(infer_labels(&names), vec!["a", "b"]);
    }
}
