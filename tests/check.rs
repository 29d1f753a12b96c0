//! Data-driven checker tests: every `data/check_ok/*.exp` must type-check with no diagnostics;
//! every `data/check_err/*.exp` must fail, and its rendered diagnostics (no colour, width 80)
//! are snapshotted. Also: every operator signature's examples type-check.

use smelt::diag::render_all;
use smelt::session::Session;
use std::path::Path;

fn check_file(path: &Path) -> Result<(), String> {
    let mut s = Session::new();
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    // Paths inside programs are relative to the repository root (cargo runs tests there).
    match s.load_source(&name, &text, Path::new(&name), &[]) {
        Ok(_) => Ok(()),
        Err(diags) => Err(render_all(&diags, &s.sources, false, 80)),
    }
}

#[test]
fn check_ok_programs_have_no_diagnostics() {
    insta::glob!("data/check_ok/*.exp", |path| {
        if let Err(rendered) = check_file(path) {
            panic!("{} should check cleanly:\n{rendered}", path.display());
        }
    });
}

#[test]
fn check_err_programs_snapshot_their_diagnostics() {
    insta::glob!("data/check_err/*.exp", |path| {
        let rendered = check_file(path).expect_err("this program must be rejected");
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn every_signature_example_type_checks() {
    let reg = smelt::ops::builtin_registry();
    let mut n = 0;
    for op in reg.iter() {
        let sig = op.signature();
        assert!(!sig.examples.is_empty(), "`{}` has no example", sig.id);
        assert!(!sig.summary.is_empty(), "`{}` has no summary", sig.id);
        for p in sig.params {
            assert!(
                !p.doc.is_empty(),
                "`{}` parameter `{}` has no doc",
                sig.id,
                p.name
            );
        }
        let valid_id = sig
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
            && sig.id.matches('.').count() <= 1;
        assert!(valid_id, "bad operator id `{}`", sig.id);
        for ex in sig.examples {
            let mut s = Session::new();
            if let Err(diags) = s.load_source("example.exp", ex, Path::new("example.exp"), &[]) {
                panic!(
                    "example of `{}` does not check:\n{}",
                    sig.id,
                    render_all(&diags, &s.sources, false, 80)
                );
            }
            n += 1;
        }
    }
    assert!(n >= 10);
}

#[test]
fn shipped_experiments_check() {
    for entry in std::fs::read_dir("experiments").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "exp") {
            let mut s = Session::new();
            if let Err(diags) = s.load(&path, &[]) {
                panic!(
                    "{} does not check:\n{}",
                    path.display(),
                    render_all(&diags, &s.sources, false, 80)
                );
            }
        }
    }
}
