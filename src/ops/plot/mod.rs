//! `plot …`: figures as SVG files (plotters' SVG backend).
//!
//! A plot operator returns a `Figure`: a store directory holding `figure.svg`, with the kind
//! and title in its payload. The `plot KIND(args) [to "file.svg"]` statement writes the SVG
//! next to the run's tables (and to the file when given); `save fig to "x.svg"` copies it.

pub mod bar;
pub mod heatmap;
pub mod line;

use crate::diag::OpError;
use crate::ops::OpCtx;
use crate::value::{Artifact, Kind, Value};
use std::sync::Arc;

/// The file a `Figure` directory holds.
pub const FIGURE_FILE: &str = "figure.svg";

/// A drawing error from plotters.
pub(crate) fn plot_err(e: impl std::fmt::Display) -> OpError {
    OpError::new(
        "smelt::plot::draw",
        format!("drawing the figure failed: {e}"),
    )
}

/// Writes `svg` into the node's output and returns the `Figure` artifact.
pub(crate) fn figure_artifact(
    cx: &OpCtx,
    kind: &str,
    svg: &str,
    title: &str,
) -> Result<Value, OpError> {
    let dir = cx.out_dir.join("figure");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(FIGURE_FILE), svg)?;
    Ok(Value::Artifact(Arc::new(Artifact {
        kind: Kind::Figure,
        dir,
        key: cx.key,
        data: serde_json::json!({"plot": kind, "title": title, "file": FIGURE_FILE}),
    })))
}

/// The renderer of a chart drawn from two columns of a table: `(table, x, y, group, title)` → SVG.
pub(crate) type TableRender =
    fn(&crate::report::Table, &str, &str, Option<&str>, &str) -> Result<String, OpError>;

/// `plot bar|line(table, x, y, group, title)`: reads the arguments, draws with `render` (titled
/// `"{y} {joiner} {x}"` unless `title` is given) and returns the `Figure`.
pub(crate) fn table_plot(
    cx: &OpCtx,
    args: &crate::ops::Args,
    kind: &str,
    joiner: &str,
    render: TableRender,
) -> Result<Value, OpError> {
    let t = bar::table_arg(args)?;
    let (x, y) = (args.str("x")?, args.str("y")?);
    let group = args.get("group")?.as_str();
    let title = match args.get("title")? {
        Value::Str(s) => s.to_string(),
        _ => format!("{y} {joiner} {x}"),
    };
    let svg = render(&t, x, y, group, &title)?;
    figure_artifact(cx, kind, &svg, &title)
}
