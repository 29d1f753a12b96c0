//! Result tables: built from values, written as Markdown, CSV and JSON.
//!
//! `report EXPR as "name"` turns any value into a [`Table`]: a record is one row, a list of
//! records is one row each, a list of scalars is an indexed column, a scalar is one cell, a
//! table artifact is itself. Numbers print with 4 decimals in Markdown and in full in CSV/JSON.

use crate::value::{fmt_float, Kind, Value};
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// Build a table from a realised value.
    pub fn from_value(v: &Value) -> Table {
        match v {
            Value::Artifact(a) if a.kind == Kind::Table => {
                Table::from_json(&a.data).unwrap_or_else(|| cell(v))
            }
            Value::Artifact(a) if a.kind == Kind::Partition => {
                crate::tensors::partition::Partition::from_json(&a.data)
                    .map(|p| p.table())
                    .unwrap_or_else(|| cell(v))
            }
            Value::Record(r) => Table {
                columns: r.keys().cloned().collect(),
                rows: vec![r.values().map(flat).collect()],
            },
            Value::List(items)
                if !items.is_empty() && items.iter().all(|x| matches!(x, Value::Record(_))) =>
            {
                let mut columns: Vec<String> = Vec::new();
                for it in items.iter() {
                    if let Value::Record(r) = it {
                        for k in r.keys() {
                            if !columns.contains(k) {
                                columns.push(k.clone());
                            }
                        }
                    }
                }
                let rows = items
                    .iter()
                    .map(|it| match it {
                        Value::Record(r) => columns
                            .iter()
                            .map(|c| r.get(c).map(flat).unwrap_or(Value::None))
                            .collect(),
                        _ => unreachable!("all items are records"),
                    })
                    .collect();
                Table { columns, rows }
            }
            Value::List(items) => Table {
                columns: vec!["index".into(), "value".into()],
                rows: items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| vec![Value::Int(i as i64), flat(x)])
                    .collect(),
            },
            other => cell(other),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "columns": self.columns,
            "rows": self.rows.iter().map(|r| r.iter().map(scalar_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(j: &serde_json::Value) -> Option<Table> {
        let columns = j
            .get("columns")?
            .as_array()?
            .iter()
            .map(|c| c.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()?;
        let rows = j
            .get("rows")?
            .as_array()?
            .iter()
            .map(|r| {
                r.as_array()
                    .map(|cells| cells.iter().map(json_scalar).collect())
            })
            .collect::<Option<Vec<Vec<Value>>>>()?;
        Some(Table { columns, rows })
    }

    pub fn to_markdown(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(md_cell).collect())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r.get(i).map_or(0, |c| c.len()))
                    .max()
                    .unwrap_or(0)
                    .max(self.columns[i].len())
                    .max(3)
            })
            .collect();
        let line = |vals: &[String]| {
            let parts: Vec<String> = vals
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!(" {v:<w$} "))
                .collect();
            format!("|{}|", parts.join("|"))
        };
        let mut out = vec![
            line(&self.columns),
            format!(
                "|{}|",
                widths
                    .iter()
                    .map(|w| format!("-{}-", "-".repeat(*w)))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
        ];
        out.extend(cells.iter().map(|r| line(r)));
        out.join("\n") + "\n"
    }

    pub fn to_csv(&self) -> String {
        let esc = |s: String| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s
            }
        };
        let mut out = self
            .columns
            .iter()
            .cloned()
            .map(esc)
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        for r in &self.rows {
            out += &(r
                .iter()
                .map(|v| esc(csv_cell(v)))
                .collect::<Vec<_>>()
                .join(",")
                + "\n");
        }
        out
    }
}

fn cell(v: &Value) -> Table {
    Table {
        columns: vec!["value".into()],
        rows: vec![vec![flat(v)]],
    }
}

/// Cells hold scalars; anything else is shown by its short rendering.
fn flat(v: &Value) -> Value {
    match v {
        Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Str(_) | Value::None => v.clone(),
        Value::Artifact(a) if a.kind == Kind::Model => Value::str(
            a.data
                .get("name")
                .and_then(|n| n.as_str())
                .map(String::from)
                .unwrap_or_else(|| format!("model {}", a.key.short())),
        ),
        other => Value::str(other.display()),
    }
}

fn md_cell(v: &Value) -> String {
    match v {
        Value::Float(x) => fmt_float(*x),
        Value::Str(s) => s.to_string(),
        other => other.display(),
    }
}

fn csv_cell(v: &Value) -> String {
    match v {
        Value::Float(x) => format!("{x}"),
        Value::Str(s) => s.to_string(),
        Value::None => String::new(),
        other => other.display(),
    }
}

fn scalar_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => json!(i),
        Value::Float(x) if x.is_finite() => json!(x),
        Value::Float(x) => json!(x.to_string()),
        Value::Bool(b) => json!(b),
        Value::Str(s) => json!(s.as_ref()),
        Value::None => serde_json::Value::Null,
        other => json!(other.display()),
    }
}

fn json_scalar(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => Value::str(s),
        other => Value::str(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn list_of_records_to_all_formats() {
        let row = |m: &str, acc: f64| {
            let mut r = crate::value::Record::new();
            r.insert("model".to_string(), Value::str(m));
            r.insert("acc".to_string(), Value::Float(acc));
            Value::Record(Arc::new(r))
        };
        let t = Table::from_value(&Value::list(vec![row("a", 0.5), row("b,c", 0.25)]));
        assert_eq!(t.columns, vec!["model", "acc"]);
        assert!(t.to_markdown().contains("| 0.25 "));
        assert!(t.to_csv().contains("\"b,c\",0.25"));
        assert_eq!(Table::from_json(&t.to_json()), Some(t));
    }

    #[test]
    fn scalar_and_list() {
        assert_eq!(
            Table::from_value(&Value::Int(3)).rows,
            vec![vec![Value::Int(3)]]
        );
        let t = Table::from_value(&Value::list(vec![Value::Float(1.5)]));
        assert_eq!(t.rows[0], vec![Value::Int(0), Value::Float(1.5)]);
    }
}
