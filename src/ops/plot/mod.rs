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
