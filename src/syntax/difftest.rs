//! TEMPORARY differential test: new parser vs the original one.
use crate::source::FileId;

fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if let Ok(s) = std::fs::read_to_string(&p) {
            out.push(s);
        }
    }
}

static PANICS_FIXED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PANICS_BOTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn run<T: std::fmt::Debug>(f: impl FnOnce() -> T) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => format!("{v:?}"),
        Err(_) => "PANIC".into(),
    }
}

fn same(src: &str) -> bool {
    let f = FileId(0);
    let a = run(|| super::parser::parse(f, src));
    let b = run(|| super::parser_old::parse(f, src));
    let c = run(|| super::parser::parse_expr(f, src));
    let d = run(|| super::parser_old::parse_expr(f, src));
    let e = run(|| super::parser::parse_line(f, src));
    let g = run(|| super::parser_old::parse_line(f, src));
    for (x, y) in [(&a, &b), (&c, &d), (&e, &g)] {
        if y == "PANIC" && x != "PANIC" {
            PANICS_FIXED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        if y == "PANIC" {
            PANICS_BOTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    assert_eq!(a, b, "parse {src:?}");
    assert_eq!(c, d, "parse_expr {src:?}");
    assert_eq!(e, g, "parse_line {src:?}");
    a.starts_with("Err") || c.starts_with("Err")
}

#[test]
fn differential() {
    let mut corpus = Vec::new();
    walk(std::path::Path::new("tests/data"), &mut corpus);
    walk(std::path::Path::new("experiments"), &mut corpus);
    walk(std::path::Path::new("stdlib"), &mut corpus);
    let extra = [
        "let x = f(1, 2",
        "x = 1",
        "a < b < c",
        "let let = 1",
        "\"abc",
        "let x = [1 2]",
        "def f(x) {\n let y = 1\n}",
        "let x = 1 +",
        "let r = {a = 1}",
        "x == 1 = 2",
        "let x = not",
        "report 1 as",
        "let s = \"\\q\"",
        "99999999999999999999999",
        "1e999",
        "((((((",
        "plot heatmap(",
        "def f(a: List<Int) = 1",
        "[x for let in xs]",
        "use a.",
        "save x",
        "expect a within",
        "config { a: 1 b: 2 }",
        "let x = a.b.c[1][2](3)",
        "f(x)(1)",
        "let x = y let",
        "é",
        "let é = 1",
        "# only comment",
        "## doc\nlet x = 1",
    ];
    corpus.extend(extra.iter().map(|s| s.to_string()));
    let mut n = 0;
    let mut errs = 0;
    let inserts = [
        "", "(", ")", "]", "}", "=", ",", "\"", "let ", " + ", "<", "#", "\n", "as", "1.5e", "é",
    ];
    for src in &corpus {
        let bounds: Vec<usize> = (0..=src.len())
            .filter(|&i| src.is_char_boundary(i))
            .collect();
        let step = (bounds.len() / 400).max(1);
        for &i in bounds.iter().step_by(step) {
            for ins in inserts {
                let s = format!("{}{}{}", &src[..i], ins, &src[i..]);
                errs += same(&s) as usize;
                n += 1;
            }
            // truncation and single-char deletion
            errs += same(&src[..i]) as usize;
            if let Some(c) = src[i..].chars().next() {
                let s = format!("{}{}", &src[..i], &src[i + c.len_utf8()..]);
                errs += same(&s) as usize;
            }
            n += 2;
        }
    }
    // deep nesting
    for k in [50, 98, 99, 100, 101, 102, 300, 5000] {
        for s in [
            format!("{}1{}", "(".repeat(k), ")".repeat(k)),
            format!("{}1", "-".repeat(k)),
            format!("1{}", " + 1".repeat(k)),
            format!("xs{}", "[0]".repeat(k)),
            format!("a{}", ".b".repeat(k)),
            format!("def f(x: {}Int{}) = x", "List<".repeat(k), ">".repeat(k)),
            format!("[x for {}x{} in xs]", "(".repeat(k), ")".repeat(k)),
            format!("let x = {}1{}", "{a: ".repeat(k), "}".repeat(k)),
        ] {
            same(&s);
            n += 1;
        }
    }
    eprintln!(
        "compared {n} inputs, {errs} with errors, old panics fixed {:?}, panics in both {:?}",
        PANICS_FIXED, PANICS_BOTH
    );
}
