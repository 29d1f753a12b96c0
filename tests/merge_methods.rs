//! `merge ties | dare | slerp` and the shared tensor filters through the language, on the
//! committed MiniLM checkpoint: header-only rejection of bad filters during `smelt check`,
//! closed-form identities between methods on real weights, reproducible DARE masks, and
//! excluded tensors copied bit for bit from the base.

use smelt::diag::render_all;
use smelt::eval::Mode;
use smelt::run::{run, RunOptions};
use smelt::session::Session;
use smelt::tensors::model_dir::ModelDir;
use std::path::Path;

const MODEL: &str = "assets/models/minilm-l3-v8k";

/// The first diagnostic of `smelt check` on a program (tensor headers only).
fn check_err(text: &str) -> (String, String, u64) {
    let mut s = Session::new();
    let p = s
        .load_source("m.exp", text, Path::new("m.exp"), &[])
        .unwrap();
    let mut fp = smelt::cache::Fingerprinter::in_memory();
    let settings = s.settings(&p);
    let (ev, res) = s.evaluate(&p, Mode::Check, None, &mut fp, settings, None);
    drop(ev);
    let d = res.expect_err("the program must be rejected");
    let snippet = s.sources.snippet(d.span.unwrap()).to_string();
    (d.code.to_string(), snippet, fp.bytes_hashed)
}

#[test]
fn bad_filters_are_rejected_from_headers_with_a_span() {
    let (code, span, hashed) = check_err(&format!(
        "let m = load model(\"{MODEL}\")\nlet c = model perturb(m, seed=1)\nlet t = merge ties(m, [c], exclude=[\"classifier\"])\n"
    ));
    // The perturbed copy is not realised during check, but the base's header is enough.
    assert_eq!(code, "smelt::check::no_match");
    assert_eq!(span, "merge ties(m, [c], exclude=[\"classifier\"])");
    assert_eq!(hashed, 0, "check mode reads no tensor data");
    let (code, span, _) = check_err(&format!(
        "let m = load model(\"{MODEL}\")\nlet s = merge slerp(m, m, include=[\"encoder\"], exclude=[\"encoder\"])\n"
    ));
    assert_eq!(code, "smelt::check::no_match");
    assert!(span.starts_with("merge slerp("), "{span}");
}

/// Run a program whose last lines save models to `dir/<name>`; returns the opened outputs.
fn run_and_open(text: &str, names: &[&str]) -> (tempfile::TempDir, Vec<ModelDir>) {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("p.exp");
    let mut program = text.to_string();
    for n in names {
        program += &format!("save {n} to \"{}\"\n", t.path().join(n).display());
    }
    std::fs::write(&f, &program).unwrap();
    let opts = RunOptions {
        store: t.path().join("store"),
        out: t.path().join("runs"),
        ..Default::default()
    };
    let mut s = Session::new();
    if let Err(d) = run(&mut s, &f, &opts) {
        panic!("run failed:\n{}", render_all(&d, &s.sources, false, 80));
    }
    let dirs = names
        .iter()
        .map(|n| ModelDir::open(t.path().join(n)).unwrap())
        .collect();
    (t, dirs)
}

fn same_tensors(a: &ModelDir, b: &ModelDir) -> bool {
    a.tensors().keys().eq(b.tensors().keys())
        && a.tensors()
            .keys()
            .all(|n| a.read_raw(n).unwrap() == b.read_raw(n).unwrap())
}

#[test]
fn identities_between_methods_on_real_weights() {
    let (_t, d) = run_and_open(
        &format!(
            "let m = load model(\"{MODEL}\")\n\
             let c = [model perturb(m, std=0.01, seed=i) for i in range(3)]\n\
             let ta = merge task_arithmetic(m, c, alpha=[0.5, 0.3, 0.2])\n\
             let dare0 = merge dare(m, c, p=0.0, alpha=[0.5, 0.3, 0.2])\n\
             let ties_off = merge ties(m, c, alpha=0.0)\n\
             let s0 = merge slerp(c[0], c[1], t=0.0)\n\
             let s1 = merge slerp(c[0], c[1], t=1.0, base=m)\n\
             let first = merge average([c[0]])\n\
             let second = merge average([c[1]])\n\
             let kept = merge ties(m, c, exclude=[\"embeddings\", \"*.bias\"])\n"
        ),
        &[
            "ta", "dare0", "ties_off", "s0", "s1", "first", "second", "kept", "m",
        ],
    );
    let [ta, dare0, ties_off, s0, s1, first, second, kept, m] = &d[..] else {
        unreachable!()
    };
    assert!(
        same_tensors(ta, dare0),
        "DARE with p = 0 is task arithmetic"
    );
    assert!(same_tensors(ties_off, m), "TIES with α = 0 is the base");
    assert!(
        same_tensors(s0, first) && same_tensors(s1, second),
        "slerp endpoints"
    );
    // Excluded tensors are the base's bytes; the others moved.
    for name in kept.tensors().keys() {
        let excluded = name.starts_with("embeddings.") || name.ends_with(".bias");
        let equal = kept.read_raw(name).unwrap() == m.read_raw(name).unwrap();
        assert_eq!(equal, excluded, "{name}");
    }
}

#[test]
fn dare_masks_are_reproducible_and_follow_the_seed() {
    let prog = |seed: i64| {
        format!(
            "config {{ seed: 42 }}\nlet m = load model(\"{MODEL}\")\n\
             let c = [model perturb(m, std=0.01, seed=i) for i in range(2)]\n\
             let d = merge dare(m, c, p=0.7, combine=ties, seed={seed})\n"
        )
    };
    let (_a, x) = run_and_open(&prog(0), &["d"]);
    let (_b, y) = run_and_open(&prog(0), &["d"]);
    let (_c, z) = run_and_open(&prog(1), &["d"]);
    assert!(same_tensors(&x[0], &y[0]), "same program, same masks");
    assert!(
        !same_tensors(&x[0], &z[0]),
        "another seed draws other masks"
    );
}
