//! `plot heatmap(matrix, title=…, annotate=true, digits=2)`: a labelled 2-D `Matrix` as an SVG
//! heat map (rows top to bottom, columns left to right, a colour bar with the value range).
//!
//! Made for paper 2's weight matrices (target rows × source columns, the target's own cell
//! empty) and paper 1's task affinities, but any 2-D matrix works. Non-finite cells (a
//! similarity matrix stores NaN where target = source) are drawn light grey without a value;
//! the colour scale spans the finite values (white → dark blue). Axis titles are the matrix's
//! axis names and tick labels its labels (indices when unlabelled). Rendering is plotters' SVG
//! backend; text is emitted as SVG `<text>`, so no fonts are needed to draw.

use super::{figure_artifact, plot_err};
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::tensors::matrix::Matrix;
use crate::types::Ty;
use crate::value::{Kind, Value};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub struct Heatmap;

static SIG: Signature = Signature {
    id: "plot.heatmap",
    version: 1,
    summary: "Draw a 2-D Matrix as an SVG heat map with labelled axes and a colour bar.",
    doc: "Rows run top to bottom and columns left to right, labelled with the matrix's labels; \
          the axis titles are its axis names. Non-finite cells (e.g. the target's own column of \
          a similarity matrix) are grey and unlabelled. With `annotate`, every finite cell shows \
          its value with `digits` decimals. `plot heatmap(m) [to \"file.svg\"]` writes the SVG \
          next to the run's tables (and to the file when given).",
    params: &[
        Param::req("matrix", Ty::Matrix, "A 2-D matrix (similarity, weights, affinity)."),
        Param::opt("title", Ty::Opt(&Ty::Str), Const::None, "Title above the plot (default: what produced the matrix)."),
        Param::opt("annotate", Ty::Bool, Const::Bool(true), "Write each cell's value in it."),
        Param::opt("digits", Ty::Int, Const::Int(2), "Decimals of the cell values.").range(0.0, 8.0),
    ],
    returns: Ty::Figure,
    ret_fn: None,
    examples: &["let lm = load model(\"assets/models/minilm-l3-v8k\")\nlet ts = [load task(\"experiments/data/\" + n) for n in [\"movies\", \"restaurants\", \"topics\"]]\nlet loras = [train lora(lm, t, head=prompt) for t in ts]\nplot heatmap(similarity loss(loras, ts), title=\"Loss similarity\") to \"loss.svg\""],
    reference: Some("Lv et al. (ACL 2023), Figure 2 (weights heat map)"),
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// White → dark blue at `t ∈ [0, 1]`.
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// Labels of axis `k`: its own, or indices.
fn labels(m: &Matrix, k: usize) -> Vec<String> {
    match m.axes[k].labels.is_empty() {
        true => (0..m.shape[k]).map(|i| i.to_string()).collect(),
        false => m.axes[k].labels.clone(),
    }
}

/// Renders the SVG text of a heat map of `m`.
pub fn render(m: &Matrix, title: &str, annotate: bool, digits: usize) -> Result<String, OpError> {
    if m.shape.len() != 2 || m.rows() == 0 || m.cols() == 0 {
        return Err(OpError::new(
            "smelt::plot::shape",
            format!(
                "a heat map needs a non-empty 2-D matrix; `{}` has shape {:?}",
                m.what, m.shape
            ),
        )
        .with_help("kernels are 4-D: plot a similarity, weight or affinity matrix"));
    }
    let (rows, cols) = (m.rows(), m.cols());
    let (row_labels, col_labels) = (labels(m, 0), labels(m, 1));
    let finite: Vec<f64> = m.values.iter().copied().filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if finite.is_empty() {
        (0.0, 1.0)
    } else {
        (lo, hi)
    };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let longest = |l: &[String]| l.iter().map(|s| s.chars().count()).max().unwrap_or(1) as u32;
    let (y_area, x_area) = (
        (longest(&row_labels) * 7 + 30).min(260),
        (longest(&col_labels) * 7 + 30).min(260),
    );
    let cell = 48u32;
    let width = y_area + cols as u32 * cell + 130;
    let height = x_area + rows as u32 * cell + 60;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (main, bar) = root.split_horizontally(width - 110);
        let mut chart = ChartBuilder::on(&main)
            .caption(title, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(x_area)
            .y_label_area_size(y_area)
            .build_cartesian_2d((0..cols).into_segmented(), (0..rows).into_segmented())
            .map_err(plot_err)?;
        // Row 0 at the top: drawn at y = rows − 1.
        let flip = |i: usize| rows - 1 - i;
        let rot = longest(&col_labels) > 6;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols)
            .y_labels(rows)
            .x_desc(m.axes[1].name.as_str())
            .y_desc(m.axes[0].name.as_str())
            .x_label_style(match rot {
                true => ("sans-serif", 12)
                    .into_font()
                    .transform(FontTransform::Rotate90),
                false => ("sans-serif", 12).into_font(),
            })
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(j) if *j < cols => col_labels[*j].clone(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(y) if *y < rows => row_labels[flip(*y)].clone(),
                _ => String::new(),
            })
            .draw()
            .map_err(plot_err)?;
        let grey = RGBColor(225, 225, 225);
        let cells = (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j)));
        chart
            .draw_series(cells.map(|(i, j)| {
                let v = m.get(i, j);
                let colour = if v.is_finite() {
                    shade((v - lo) / span)
                } else {
                    grey
                };
                let y = flip(i);
                Rectangle::new(
                    [
                        (SegmentValue::Exact(j), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(j + 1), SegmentValue::Exact(y + 1)),
                    ],
                    colour.filled(),
                )
            }))
            .map_err(plot_err)?;
        if annotate {
            let centre = Pos::new(HPos::Center, VPos::Center);
            for i in 0..rows {
                for j in 0..cols {
                    let v = m.get(i, j);
                    if !v.is_finite() {
                        continue;
                    }
                    let ink = if (v - lo) / span > 0.55 {
                        &WHITE
                    } else {
                        &BLACK
                    };
                    let style = ("sans-serif", 11).into_font().color(ink).pos(centre);
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{v:.digits$}"),
                            (SegmentValue::CenterOf(j), SegmentValue::CenterOf(flip(i))),
                            style,
                        )))
                        .map_err(plot_err)?;
                }
            }
        }
        // Colour bar: 64 bands from lo (bottom) to hi (top).
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(40)
            .margin_bottom(x_area as i32)
            .margin_right(50)
            .y_label_area_size(0)
            .right_y_label_area_size(45)
            .build_cartesian_2d(0f64..1f64, lo..lo + span)
            .map_err(plot_err)?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_formatter(&|v| format!("{v:.digits$}"))
            .draw()
            .map_err(plot_err)?;
        let bands = 64;
        cb.draw_series((0..bands).map(|k| {
            let (a, b) = (k as f64 / bands as f64, (k + 1) as f64 / bands as f64);
            Rectangle::new(
                [(0.0, lo + a * span), (1.0, lo + b * span)],
                shade((a + b) / 2.0).filled(),
            )
        }))
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

impl Operator for Heatmap {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        let m = Matrix::read(&args.artifact("matrix", Kind::Matrix)?.dir)?;
        let title = match args.get("title")? {
            Value::Str(s) => s.to_string(),
            _ => m.what.clone(),
        };
        let digits = args.int("digits")?.clamp(0, 8) as usize;
        let svg = render(&m, &title, args.bool("annotate")?, digits)?;
        figure_artifact(cx, "heatmap", &svg, &title)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::matrix::Axis;

    fn names(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cells_labels_and_colour_bar_are_drawn() {
        let m = Matrix::new2(
            "similarity.loss",
            Axis::new("target", names(&["movies", "topics"])),
            Axis::new("source", names(&["movies", "topics", "restaurants"])),
            vec![f64::NAN, 0.25, 0.75, 0.5, f64::NAN, 1.0],
        )
        .unwrap();
        let svg = render(&m, "weights", true, 2).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "weights",
            "movies",
            "restaurants",
            "target",
            "source",
            "0.25",
            "1.00",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Two NaN cells are grey and carry no value text.
        assert_eq!(svg.matches("#E1E1E1").count(), 2, "grey cells");
        assert!(!svg.contains("NaN"));
        // 6 cells + 64 colour-bar bands + the background rectangles.
        assert!(svg.matches("<rect").count() >= 70);
    }

    #[test]
    fn a_4d_kernel_is_refused_with_a_hint() {
        let axes = ["a", "b", "c", "d"].map(Axis::unlabelled).to_vec();
        let k = Matrix::new("kernel.sgd", vec![1, 1, 1, 1], axes, vec![1.0]).unwrap();
        let e = render(&k, "k", true, 2).unwrap_err();
        assert_eq!(e.code, "smelt::plot::shape");
        assert!(e.help.unwrap().contains("kernels"));
    }
}
