//! Bar and line figures through the language: `plot bar(…)`/`plot line(…)` on a list of
//! records (what a comprehension builds), written next to the run's tables and to the named
//! file. Checked: the SVG files exist, carry the title, axis names, categories and series
//! names, and their bars / line points follow the data. The exact geometry is unit-tested in
//! src/ops/plot/{bar,line}.rs; a missing column is an error that lists the columns.

use smelt::diag::render_all;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use std::path::Path;

fn run_text(t: &Path, name: &str, text: &str) -> Result<RunOutcome, String> {
    let f = t.join(name);
    std::fs::write(&f, text).unwrap();
    let mut s = Session::new();
    let opts = RunOptions {
        store: t.join("store"),
        out: t.join("runs"),
        ..Default::default()
    };
    match run(&mut s, &f, &opts) {
        Ok(o) if o.failed.is_empty() => Ok(o),
        Ok(o) => Err(render_all(&o.failed, &s.sources, false, 100)),
        Err(d) => Err(render_all(&d, &s.sources, false, 100)),
    }
}

/// Heights of the `<rect>`s filled with plotters' first series colour (#1F77B4), in order.
fn bar_heights(svg: &str) -> Vec<f64> {
    svg.split("<rect")
        .skip(1)
        .map(|t| &t[..t.find("/>").unwrap()])
        .filter(|t| t.contains("fill=\"#1F77B4\""))
        .map(|t| {
            let s = &t[t.find(" height=\"").unwrap() + 9..];
            s[..s.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

#[test]
fn bar_and_line_figures_are_written_with_their_labels_and_follow_the_data() {
    let t = tempfile::tempdir().unwrap();
    let (bar, line) = (t.path().join("bar.svg"), t.path().join("line.svg"));
    let text = format!(
        "let rows = [{{method: \"average\", acc: 0.25}}, {{method: \"ties\", acc: 0.75}}, {{method: \"dare\", acc: 0.5}}]\n\
         plot bar(rows, x=\"method\", y=\"acc\", title=\"Merges\") to \"{}\"\n\
         let sweep = [{{alpha: a, acc: 1.0 - a * a, method: \"ta\"}} for a in [0.0, 0.5, 1.0]] ++ [{{alpha: a, acc: 0.5, method: \"avg\"}} for a in [0.0, 1.0]]\n\
         plot line(sweep, x=\"alpha\", y=\"acc\", group=\"method\") to \"{}\"\n",
        bar.display(),
        line.display()
    );
    let out = run_text(t.path(), "figs.exp", &text).unwrap();
    let svg = std::fs::read_to_string(&bar).unwrap();
    for s in ["Merges", "method", "acc", "average", "ties", "dare"] {
        assert!(svg.contains(s), "bar chart lacks {s}");
    }
    let h = bar_heights(&svg);
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(
        (h[1] / h[0] - 3.0).abs() < 0.1 && (h[2] / h[0] - 2.0).abs() < 0.1,
        "{h:?}"
    );
    let svg = std::fs::read_to_string(&line).unwrap();
    for s in ["acc against alpha", "alpha", "ta", "avg"] {
        assert!(svg.contains(s), "line chart lacks {s}");
    }
    assert!(svg.matches("<polyline").count() >= 2, "one line per method");
    // Both figures also sit next to the run's tables.
    for f in ["bar.svg", "line.svg"] {
        assert!(out.run_dir.join(f).exists(), "{f} not in the run directory");
    }
}

#[test]
fn a_missing_column_lists_the_columns() {
    let t = tempfile::tempdir().unwrap();
    let e = run_text(
        t.path(),
        "bad.exp",
        "plot bar([{method: \"a\", acc: 0.5}], x=\"method\", y=\"accuracy\")\n",
    )
    .unwrap_err();
    assert!(
        e.contains("smelt::plot::column") && e.contains("method, acc"),
        "{e}"
    );
}
