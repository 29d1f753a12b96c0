//! `plot line(table, x=COLUMN, y=COLUMN, group=COLUMN?)`: a line chart of a results table —
//! e.g. accuracy against the merge coefficient α of a sweep, one line per method.
//!
//! Both columns must be numeric. Each group value (or the whole table without `group`) is one
//! series, drawn as a polyline through its points sorted by x, with a dot at every point and a
//! legend naming the series. Axes span the data with a small margin. Table reading is shared
//! with `plot bar` (src/ops/plot/bar.rs).

use super::bar::{column, distinct, label, number, SERIES, TABLE_TY};
use super::plot_err;
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::report::Table;
use crate::types::Ty;
use crate::value::Value;
use plotters::prelude::*;

pub struct Line;

static SIG: Signature = Signature {
    id: "plot.line",
    version: 1,
    summary: "Line chart of a table: numeric x and y columns, one line per value of an optional group column.",
    doc: "Each series (one per value of `group`, in order of first appearance; the whole table \
          without it) is drawn through its points sorted by x, with a dot at every point and a \
          legend naming the series. Both columns must be numeric. Accepts a `Table` or a list \
          of records, e.g. `[{alpha: a, acc: …} for a in alphas]`.",
    params: &[
        Param::req("table", TABLE_TY, "A results table or a list of records."),
        Param::req("x", Ty::Str, "Column of the x values (numeric)."),
        Param::req("y", Ty::Str, "Column of the y values (numeric)."),
        Param::opt("group", Ty::Opt(&Ty::Str), Const::None, "Column whose values name the lines."),
        Param::opt("title", Ty::Opt(&Ty::Str), Const::None, "Title above the chart (default: `y against x`)."),
    ],
    returns: Ty::Figure,
    ret_fn: None,
    examples: &["plot line([{alpha: a, acc: 1.0 - a * a} for a in [0.0, 0.5, 1.0]], x=\"alpha\", y=\"acc\")"],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// The series: name and points sorted by x.
type Series = (String, Vec<(f64, f64)>);

fn series(t: &Table, x: &str, y: &str, group: Option<&str>) -> Result<Vec<Series>, OpError> {
    let (xi, yi) = (column(t, x)?, column(t, y)?);
    let gi = group.map(|g| column(t, g)).transpose()?;
    let names = match gi {
        Some(g) => distinct(t.rows.iter().map(|r| label(&r[g]))),
        None => vec![y.to_string()],
    };
    let mut out: Vec<Series> = names.into_iter().map(|n| (n, Vec::new())).collect();
    for (r, row) in t.rows.iter().enumerate() {
        let s = gi.map_or(0, |g| {
            out.iter()
                .position(|(n, _)| *n == label(&row[g]))
                .unwrap_or(0)
        });
        out[s]
            .1
            .push((number(&row[xi], x, r)?, number(&row[yi], y, r)?));
    }
    for (_, pts) in &mut out {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

/// A data range with a 5% margin (or ±1 when flat).
fn span(vals: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let v: Vec<f64> = vals.filter(|x| x.is_finite()).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    lo - pad..hi + pad
}

/// Renders the SVG text of a line chart of `t`.
pub fn render(
    t: &Table,
    x: &str,
    y: &str,
    group: Option<&str>,
    title: &str,
) -> Result<String, OpError> {
    let all = series(t, x, y, group)?;
    let pts = || all.iter().flat_map(|(_, p)| p.iter());
    let (xr, yr) = (span(pts().map(|p| p.0)), span(pts().map(|p| p.1)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(xr, yr)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .draw()
            .map_err(plot_err)?;
        for (s, (name, p)) in all.iter().enumerate() {
            let colour = SERIES[s % SERIES.len()];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    p.clone(),
                    colour.stroke_width(2),
                )))
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(px, py)| {
                    PathElement::new(vec![(px, py), (px + 16, py)], colour.stroke_width(2))
                });
            chart
                .draw_series(p.iter().map(|&q| Circle::new(q, 3, colour.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

impl Operator for Line {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        super::table_plot(cx, args, "line", "against", render)
    }
}

#[cfg(test)]
mod tests {
    use super::super::bar::tests::table;
    use super::*;

    /// The points of every `<polyline>` with stroke `colour`.
    fn polylines(svg: &str, colour: &RGBColor) -> Vec<Vec<(f64, f64)>> {
        let stroke = format!(
            "stroke=\"#{:02X}{:02X}{:02X}\"",
            colour.0, colour.1, colour.2
        );
        svg.split("<polyline")
            .skip(1)
            .map(|t| &t[..t.find("/>").unwrap()])
            .filter(|t| t.contains(&stroke))
            .map(|t| {
                let s = &t[t.find("points=\"").unwrap() + 8..];
                s[..s.find('"').unwrap()]
                    .split_whitespace()
                    .map(|p| {
                        let (a, b) = p.split_once(',').unwrap();
                        (a.parse().unwrap(), b.parse().unwrap())
                    })
                    .collect()
            })
            // Legend swatches are flat; data lines here are not.
            .filter(|p: &Vec<(f64, f64)>| p.iter().any(|q| (q.1 - p[0].1).abs() > 0.5))
            .collect()
    }

    #[test]
    fn points_follow_the_data_sorted_by_x_one_line_per_group() {
        let row =
            |m: &str, a: f64, acc: f64| vec![Value::str(m), Value::Float(a), Value::Float(acc)];
        // Rows out of x order on purpose.
        let t = table(
            &["method", "alpha", "acc"],
            vec![
                row("ta", 1.0, 0.5),
                row("ta", 0.0, 0.9),
                row("ta", 0.5, 0.7),
                row("ties", 0.0, 0.6),
                row("ties", 1.0, 0.8),
            ],
        );
        let svg = render(&t, "alpha", "acc", Some("method"), "sweep").unwrap();
        for text in ["sweep", "alpha", "acc", "ta", "ties"] {
            assert!(svg.contains(text), "missing {text}");
        }
        let ta: Vec<_> = polylines(&svg, &SERIES[0]).into_iter().collect();
        assert_eq!(ta.len(), 1, "one 3-point line for `ta`");
        let p = &ta[0];
        // x increasing in equal steps (0, 0.5, 1); y pixels: higher acc is higher up (smaller y),
        // and the drops 0.9 → 0.7 → 0.5 are equal.
        assert!(p[0].0 < p[1].0 && p[1].0 < p[2].0);
        assert!(
            ((p[1].0 - p[0].0) - (p[2].0 - p[1].0)).abs() <= 1.0,
            "{p:?}"
        );
        assert!(p[0].1 < p[1].1 && p[1].1 < p[2].1, "{p:?}");
        assert!(
            ((p[1].1 - p[0].1) - (p[2].1 - p[1].1)).abs() <= 1.0,
            "{p:?}"
        );
        let ties: Vec<_> = polylines(&svg, &SERIES[1]).into_iter().collect();
        assert_eq!(ties.len(), 1);
        // ties at x = 0 (0.6) sits below ta at x = 0 (0.9); same x pixel.
        assert!((ties[0][0].0 - p[0].0).abs() <= 1.0 && ties[0][0].1 > p[0].1);
    }

    #[test]
    fn non_numeric_columns_are_refused() {
        let t = table(
            &["m", "acc"],
            vec![vec![Value::str("a"), Value::Float(0.5)]],
        );
        let e = render(&t, "m", "acc", None, "t").unwrap_err();
        assert_eq!(e.code, "smelt::plot::not_numeric");
        assert!(e.message.contains("column `m`"), "{}", e.message);
    }
}
