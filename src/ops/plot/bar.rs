//! `plot bar(table, x=COLUMN, y=COLUMN, group=COLUMN?)`: a bar chart of a results table — one
//! bar per row, categories along x in order of first appearance, and with `group` one bar per
//! group value side by side in each category (with a legend).
//!
//! `table` is a `Table` (e.g. from `evaluate`) or a list of records (what a comprehension
//! builds). The y axis starts at 0 (or below, for negative values), so bar heights are
//! proportional to the values. Two rows with the same (x, group) are an error: aggregate them
//! first. Also home to the table-reading helpers `plot line` shares.

use super::plot_err;
use crate::diag::OpError;
use crate::ops::{Args, Const, Determinism, OpCtx, OpKind, Operator, Param, Signature};
use crate::report::Table;
use crate::types::Ty;
use crate::value::Value;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub struct Bar;

/// The `table` parameter type: a Table or a list of records.
pub(crate) const TABLE_TY: Ty = Ty::Either(&Ty::Table, &Ty::List(&Ty::Record));

static SIG: Signature = Signature {
    id: "plot.bar",
    version: 1,
    summary: "Bar chart of a table: x column as categories, y column as heights, optional group column.",
    doc: "One bar per row: categories (the `x` column's values, in order of first appearance) \
          along the x axis, heights from the numeric `y` column, the y axis from 0. With \
          `group`, each category holds one bar per group value, coloured and named in a legend. \
          Accepts a `Table` or a list of records. `plot bar(…) [to \"file.svg\"]` writes the SVG \
          next to the run's tables (and to the file when given).",
    params: &[
        Param::req("table", TABLE_TY, "A results table or a list of records."),
        Param::req("x", Ty::Str, "Column of the categories."),
        Param::req("y", Ty::Str, "Column of the (numeric) bar heights."),
        Param::opt("group", Ty::Opt(&Ty::Str), Const::None, "Column whose values become side-by-side bars."),
        Param::opt("title", Ty::Opt(&Ty::Str), Const::None, "Title above the chart (default: `y by x`)."),
    ],
    returns: Ty::Figure,
    ret_fn: None,
    examples: &["plot bar([{method: \"average\", acc: 0.71}, {method: \"ties\", acc: 0.74}], x=\"method\", y=\"acc\") to \"acc.svg\""],
    reference: None,
    determinism: Determinism::Pure,
    kind: OpKind::Node,
    same_length: &[],
    cheap: true,
};

/// Colours of the series, in order (then the palette repeats).
pub(crate) const SERIES: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn column_err(t: &Table, name: &str) -> OpError {
    OpError::new(
        "smelt::plot::column",
        format!("the table has no column `{name}`"),
    )
    .with_help(format!("its columns are: {}", t.columns.join(", ")))
}

/// Index of column `name`.
pub(crate) fn column(t: &Table, name: &str) -> Result<usize, OpError> {
    t.columns
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| column_err(t, name))
}

/// A cell as a label.
pub(crate) fn label(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => other.display(),
    }
}

/// A cell as a number, or an error naming the column and row.
pub(crate) fn number(v: &Value, col: &str, row: usize) -> Result<f64, OpError> {
    v.as_f64().ok_or_else(|| {
        OpError::new(
            "smelt::plot::not_numeric",
            format!(
                "row {row} of column `{col}` is {}, not a number",
                v.display()
            ),
        )
    })
}

/// The table argument.
pub(crate) fn table_arg(args: &Args) -> Result<Table, OpError> {
    let t = Table::from_value(args.get("table")?);
    if t.rows.is_empty() {
        return Err(OpError::new("smelt::plot::empty", "the table has no rows"));
    }
    Ok(t)
}

/// Distinct values in order of first appearance.
pub(crate) fn distinct(xs: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in xs {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Renders the SVG text of a bar chart of `t`.
pub fn render(
    t: &Table,
    x: &str,
    y: &str,
    group: Option<&str>,
    title: &str,
) -> Result<String, OpError> {
    let (xi, yi) = (column(t, x)?, column(t, y)?);
    let gi = group.map(|g| column(t, g)).transpose()?;
    let cats = distinct(t.rows.iter().map(|r| label(&r[xi])));
    let groups = match gi {
        Some(g) => distinct(t.rows.iter().map(|r| label(&r[g]))),
        None => vec![String::new()],
    };
    // heights[c][g]
    let mut heights: Vec<Vec<Option<f64>>> = vec![vec![None; groups.len()]; cats.len()];
    for (r, row) in t.rows.iter().enumerate() {
        let c = cats.iter().position(|s| *s == label(&row[xi])).unwrap_or(0);
        let g = gi.map_or(0, |g| {
            groups
                .iter()
                .position(|s| *s == label(&row[g]))
                .unwrap_or(0)
        });
        if heights[c][g].is_some() {
            return Err(OpError::new(
                "smelt::plot::duplicate",
                format!(
                    "two rows have {x} = {}{}",
                    cats[c],
                    gi.map_or(String::new(), |_| format!(
                        " and {} = {}",
                        group.unwrap_or(""),
                        groups[g]
                    ))
                ),
            )
            .with_help("aggregate the rows first (e.g. with `mean`), or give `group`"));
        }
        heights[c][g] = Some(number(&row[yi], y, r)?);
    }
    let vals: Vec<f64> = heights.iter().flatten().flatten().copied().collect();
    let lo = vals.iter().copied().fold(0.0, f64::min);
    let hi = vals.iter().copied().fold(0.0, f64::max);
    let pad = if hi > lo { (hi - lo) * 0.08 } else { 1.0 };
    let (lo, hi) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let longest = cats.iter().map(|s| s.chars().count()).max().unwrap_or(1) as u32;
    let x_area = (longest * 7 + 40).min(220);
    let width = (cats.len() as u32 * (groups.len() as u32 * 28 + 24) + 200).max(420);
    let height = 420 + x_area;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(x_area)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..cats.len() as f64, lo..hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc(x)
            .y_desc(y)
            .draw()
            .map_err(plot_err)?;
        let slot = 0.8 / groups.len() as f64;
        for (g, name) in groups.iter().enumerate() {
            let colour = SERIES[g % SERIES.len()];
            let bars: Vec<(usize, f64)> = (0..cats.len())
                .filter_map(|c| heights[c][g].map(|h| (c, h)))
                .collect();
            let series = chart
                .draw_series(bars.iter().map(|&(c, h)| {
                    let x0 = c as f64 + 0.1 + g as f64 * slot;
                    Rectangle::new([(x0, 0.0), (x0 + slot, h)], colour.filled())
                }))
                .map_err(plot_err)?;
            if gi.is_some() {
                series.label(name.as_str()).legend(move |(px, py)| {
                    Rectangle::new([(px, py - 5), (px + 10, py + 5)], colour.filled())
                });
            }
        }
        if gi.is_some() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(plot_err)?;
        }
        // Category names under the axis, centred on their bars.
        let rot = longest > 8;
        for (c, name) in cats.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(c as f64 + 0.5, lo));
            let style = ("sans-serif", 12).into_font();
            let style = match rot {
                true => style
                    .transform(FontTransform::Rotate90)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
                false => style.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
            };
            root.draw(&Text::new(name.clone(), (px, py + 8), style))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

impl Operator for Bar {
    fn signature(&self) -> &'static Signature {
        &SIG
    }

    fn run(&self, cx: &mut OpCtx, args: &Args) -> Result<Value, OpError> {
        super::table_plot(cx, args, "bar", "by", render)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn table(columns: &[&str], rows: Vec<Vec<Value>>) -> Table {
        Table {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            rows,
        }
    }

    /// Every `<rect …>` whose fill is `colour` (hex, as plotters writes it): (x, y, w, h).
    pub(crate) fn rects(svg: &str, colour: &RGBColor) -> Vec<(f64, f64, f64, f64)> {
        let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", colour.0, colour.1, colour.2);
        let attr = |tag: &str, name: &str| -> f64 {
            let key = format!(" {name}=\"");
            let s = &tag[tag.find(&key).expect(name) + key.len()..];
            s[..s.find('"').unwrap()].parse().unwrap()
        };
        svg.split("<rect")
            .skip(1)
            .map(|t| &t[..t.find("/>").unwrap()])
            .filter(|t| t.contains(&fill) && !t.contains("opacity=\"0.8\""))
            .map(|t| {
                (
                    attr(t, "x"),
                    attr(t, "y"),
                    attr(t, "width"),
                    attr(t, "height"),
                )
            })
            .collect()
    }

    #[test]
    fn bar_heights_are_proportional_to_the_values() {
        let t = table(
            &["method", "acc"],
            vec![
                vec![Value::str("average"), Value::Float(0.2)],
                vec![Value::str("ties"), Value::Float(0.8)],
                vec![Value::str("dare"), Value::Float(0.4)],
            ],
        );
        let svg = render(&t, "method", "acc", None, "acc by method").unwrap();
        for text in ["acc by method", "average", "ties", "dare", "method", "acc"] {
            assert!(svg.contains(text), "missing {text}");
        }
        let bars = rects(&svg, &SERIES[0]);
        assert_eq!(bars.len(), 3, "{bars:?}");
        // Same baseline; heights 0.2 : 0.8 : 0.4, left to right in row order.
        let base = bars[0].1 + bars[0].3;
        for b in &bars {
            assert!((b.1 + b.3 - base).abs() <= 1.0, "{bars:?}");
        }
        assert!(bars[0].0 < bars[1].0 && bars[1].0 < bars[2].0);
        let r = |a: usize, b: usize| bars[a].3 / bars[b].3;
        assert!((r(1, 0) - 4.0).abs() < 0.1, "{bars:?}");
        assert!((r(2, 0) - 2.0).abs() < 0.1, "{bars:?}");
    }

    #[test]
    fn groups_get_their_own_colour_and_legend_and_duplicates_are_refused() {
        let row = |m: &str, t: &str, a: f64| vec![Value::str(m), Value::str(t), Value::Float(a)];
        let t = table(
            &["model", "task", "acc"],
            vec![
                row("base", "cb", 0.5),
                row("merged", "cb", 0.6),
                row("base", "rte", 0.3),
                row("merged", "rte", 0.9),
            ],
        );
        let svg = render(&t, "task", "acc", Some("model"), "t").unwrap();
        assert!(
            svg.contains("base") && svg.contains("merged"),
            "legend names"
        );
        let (b, m) = (rects(&svg, &SERIES[0]), rects(&svg, &SERIES[1]));
        // Two bars each plus one legend swatch each (the small 10-pixel square).
        let bars = |v: Vec<(f64, f64, f64, f64)>| -> Vec<(f64, f64, f64, f64)> {
            v.into_iter().filter(|r| r.2 > 11.0).collect()
        };
        let (b, m) = (bars(b), bars(m));
        assert_eq!((b.len(), m.len()), (2, 2), "{b:?} {m:?}");
        assert!((m[1].3 / b[1].3 - 3.0).abs() < 0.1, "rte: 0.9 vs 0.3");
        assert!(
            b[0].0 < m[0].0 && m[0].0 < b[1].0,
            "side by side within a category"
        );
        let dup = table(
            &["x", "y"],
            vec![
                vec![Value::str("a"), Value::Int(1)],
                vec![Value::str("a"), Value::Int(2)],
            ],
        );
        assert_eq!(
            render(&dup, "x", "y", None, "t").unwrap_err().code,
            "smelt::plot::duplicate"
        );
        let e = render(&dup, "x", "nope", None, "t").unwrap_err();
        assert!(e.help.unwrap().contains("x, y"));
    }
}
