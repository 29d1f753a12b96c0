//! End-to-end runs through the library and the `smelt` binary: caching (zero re-execution,
//! exact downstream invalidation, key stability under renames and stdlib comments), merge
//! numerics on the real committed checkpoint, header-only checks, bad inputs, and resuming a
//! run killed with SIGKILL.

use smelt::diag::render_all;
use smelt::eval::{Mode, Status};
use smelt::run::{run, RunOptions};
use smelt::session::Session;
use smelt::tensors::model_dir::ModelDir;
use std::path::{Path, PathBuf};

const MODEL: &str = "assets/models/minilm-l3-v8k";

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn opts(&self) -> RunOptions {
        RunOptions {
            store: self.path("store"),
            out: self.path("runs"),
            ..Default::default()
        }
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn run_ok(file: &Path, opts: &RunOptions) -> smelt::run::RunOutcome {
    let mut s = Session::new();
    match run(&mut s, file, opts) {
        Ok(o) => o,
        Err(d) => panic!("run failed:\n{}", render_all(&d, &s.sources, false, 80)),
    }
}

fn run_err(file: &Path, opts: &RunOptions) -> String {
    let mut s = Session::new();
    match run(&mut s, file, opts) {
        Ok(_) => panic!("run should fail"),
        Err(d) => render_all(&d, &s.sources, false, 80),
    }
}

fn program(noise: &str, out: &Path) -> String {
    format!(
        r#"
let base = load model("{MODEL}")
let a = model perturb(base, std={noise}, seed=1)
let b = model perturb(base, std=0.01, seed=2)
let soup = merge average([a, b])
let d = measure distance(soup, base)
report {{d: d}} as "d"
save soup to "{}"
"#,
        out.display()
    )
}

#[test]
fn second_run_executes_nothing_and_one_change_reruns_downstream_only() {
    let t = Scratch::new();
    let out = t.path("soup");
    let f = t.write("p.exp", &program("0.01", &out));
    let first = run_ok(&f, &t.opts());
    assert_eq!(first.executed, 5, "load, 2×perturb, average, distance");
    let second = run_ok(&f, &t.opts());
    assert_eq!(second.executed, 0);
    assert_eq!(second.cached, 5);
    assert_eq!(first.reports, second.reports);
    // Changing the first copy's noise re-runs a, soup and d — not the load, not b.
    let f2 = t.write("p.exp", &program("0.02", &out));
    let third = run_ok(&f2, &t.opts());
    let ran: Vec<&str> = third
        .nodes
        .iter()
        .filter(|n| matches!(n.status, Status::Ran { .. }))
        .map(|n| n.op)
        .collect();
    assert_eq!(
        ran,
        vec!["model.perturb", "merge.average", "measure.distance"]
    );
    assert_eq!(third.cached, 2);
    // The saved directory loads and carries provenance.
    let saved = ModelDir::open(&out).unwrap();
    assert!(saved
        .metadata()
        .get("smelt.op")
        .is_some_and(|v| v.starts_with("merge.average@")));
    // The manifest records node keys, seeds and versions.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(third.run_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["nodes"].as_array().unwrap().len(), 5);
    assert!(manifest["nodes"][1]["seed"].as_u64().is_some());
    assert!(
        third.run_dir.join("d.csv").exists()
            && third.run_dir.join("d.md").exists()
            && third.run_dir.join("d.json").exists()
    );
}

/// Keys of all nodes of a program, computed without running it (plan mode on an empty store).
fn plan_keys(text: &str) -> Vec<String> {
    let mut s = Session::new();
    let p = s
        .load_source("k.exp", text, Path::new("k.exp"), &[])
        .map_err(|d| render_all(&d, &s.sources, false, 80))
        .unwrap();
    let mut fp = smelt::cache::Fingerprinter::in_memory();
    let settings = s.settings(&p);
    let (ev, res) = s.evaluate(&p, Mode::Plan, None, &mut fp, settings, None);
    res.unwrap();
    ev.graph.iter().map(|n| n.key.hex()).collect()
}

#[test]
fn keys_ignore_names_comments_formatting_and_stdlib_wrappers() {
    let a = plan_keys(&format!(
        "let m = load model(\"{MODEL}\")\nlet c = [model perturb(m, seed=i) for i in range(2)]\nlet x = merge task_arithmetic(m, c, alpha=0.5)"
    ));
    let b = plan_keys(&format!(
        "# a comment\nlet base_model   =  load model(\"{MODEL}\")  # trailing\nlet copies = [model perturb(base_model, seed=j) for j in [0, 1]]\nlet merged = merge task_arithmetic(base_model, copies, alpha=5e-1)"
    ));
    assert_eq!(a, b);
    // The stdlib `alpha_sweep` evaluates to the very same built-in node.
    let c = plan_keys(&format!(
        "use std.merge\nlet m = load model(\"{MODEL}\")\nlet c = [model perturb(m, seed=i) for i in range(2)]\nlet x = alpha_sweep(m, c, [0.5])"
    ));
    assert_eq!(a, c);
    // A different experiment seed changes seeded nodes only.
    let d = plan_keys(&format!(
        "config {{ seed: 7 }}\nlet m = load model(\"{MODEL}\")\nlet c = [model perturb(m, seed=i) for i in range(2)]\nlet x = merge task_arithmetic(m, c, alpha=0.5)"
    ));
    assert_eq!(a[0], d[0]);
    assert_ne!(a[1], d[1]);
}

#[test]
fn merge_numerics_on_the_real_checkpoint() {
    let t = Scratch::new();
    let text = format!(
        r#"
let m = load model("{MODEL}")
let p = model perturb(m, std=0.01, seed=3)
let one = merge linear([m], [1.0])
let avg_self = merge average([m])
let ta0 = merge task_arithmetic(m, [p], alpha=0.0)
let avg = merge average([m, p], dtype=f32)
save one to "{one}"
save avg_self to "{avg_self}"
save ta0 to "{ta0}"
save avg to "{avg}"
save p to "{p}"
"#,
        one = t.path("one").display(),
        avg_self = t.path("avg_self").display(),
        ta0 = t.path("ta0").display(),
        avg = t.path("avg").display(),
        p = t.path("p").display(),
    );
    let f = t.write("m.exp", &text);
    run_ok(&f, &t.opts());
    let orig = ModelDir::open(MODEL).unwrap();
    for name in ["one", "avg_self", "ta0"] {
        let d = ModelDir::open(t.path(name)).unwrap();
        for tensor in orig.tensors().keys() {
            let (a, b) = (orig.read_raw(tensor).unwrap(), d.read_raw(tensor).unwrap());
            assert_eq!(
                d.info(tensor).unwrap().dtype,
                orig.info(tensor).unwrap().dtype,
                "{name}: {tensor} dtype"
            );
            let first_diff = a.iter().zip(b).position(|(x, y)| x != y);
            assert!(
                a.len() == b.len() && first_diff.is_none(),
                "{name}: {tensor} differs bitwise at byte {first_diff:?}"
            );
        }
    }
    let p = ModelDir::open(t.path("p")).unwrap();
    let avg = ModelDir::open(t.path("avg")).unwrap();
    for tensor in orig.tensors().keys() {
        let (x, y, z) = (
            orig.read_f32(tensor).unwrap(),
            p.read_f32(tensor).unwrap(),
            avg.read_f32(tensor).unwrap(),
        );
        let bad = (0..x.len()).find(|&i| z[i] != (x[i] + y[i]) * 0.5);
        assert!(bad.is_none(), "{tensor}: average differs at {bad:?}");
    }
}

/// Copy the committed model, changing one tensor's shape in the header (data stays valid).
fn mismatched_copy(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "tokenizer.json", "vocab.txt"] {
        std::fs::copy(Path::new(MODEL).join(f), dst.join(f)).unwrap();
    }
    let bytes = std::fs::read(Path::new(MODEL).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    // token_type_embeddings is [2, 384]; claim [1, 768] (same byte length, different shape).
    let patched = header.replacen("\"shape\":[2,384]", "\"shape\":[1,768]", 1);
    assert_ne!(patched, header, "fixture header layout changed");
    let mut out = Vec::new();
    out.extend_from_slice(&(patched.len() as u64).to_le_bytes());
    out.extend_from_slice(patched.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(dst.join("model.safetensors"), out).unwrap();
}

#[test]
fn check_rejects_mismatched_merge_from_headers_only() {
    let t = Scratch::new();
    mismatched_copy(&t.path("bad"));
    let text = format!("let a = load model(\"{MODEL}\")\nlet b = load model(\"{}\")\nlet m = merge average([a, b])\n", t.path("bad").display());
    let mut s = Session::new();
    let p = s
        .load_source("mm.exp", &text, Path::new("mm.exp"), &[])
        .unwrap();
    let mut fp = smelt::cache::Fingerprinter::in_memory();
    let settings = s.settings(&p);
    let (ev, res) = s.evaluate(&p, Mode::Check, None, &mut fp, settings, None);
    drop(ev);
    let d = res.expect_err("mismatched shapes must be rejected");
    assert_eq!(d.code, "smelt::check::incompatible_models");
    assert!(d.message.contains("token_type_embeddings"), "{}", d.message);
    assert_eq!(s.sources.snippet(d.span.unwrap()), "merge average([a, b])");
    assert_eq!(fp.bytes_hashed, 0, "check mode hashes no file contents");
}

#[test]
fn check_rejects_a_vocabulary_mismatch_from_headers_only() {
    let t = Scratch::new();
    let dst = t.path("other_vocab");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "vocab.txt"] {
        std::fs::copy(Path::new(MODEL).join(f), dst.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(Path::new(MODEL).join("config.json")).unwrap();
    let patched = config.replacen("\"vocab_size\": 8192", "\"vocab_size\": 8000", 1);
    assert_ne!(patched, config, "fixture config layout changed");
    std::fs::write(dst.join("config.json"), patched).unwrap();
    let text = format!("let a = load model(\"{MODEL}\")\nlet b = load model(\"{}\")\nlet m = merge task_arithmetic(a, [b])\n", dst.display());
    let mut s = Session::new();
    let p = s
        .load_source("vocab.exp", &text, Path::new("vocab.exp"), &[])
        .unwrap();
    let mut fp = smelt::cache::Fingerprinter::in_memory();
    let settings = s.settings(&p);
    let (ev, res) = s.evaluate(&p, Mode::Check, None, &mut fp, settings, None);
    drop(ev);
    let d = res.expect_err("different vocabularies must be rejected");
    assert_eq!(d.code, "smelt::check::incompatible_models");
    assert!(
        d.message.contains("8000") && d.message.contains("8192"),
        "{}",
        d.message
    );
    assert_eq!(fp.bytes_hashed, 0, "check mode hashes no file contents");
}

#[test]
fn smelt_data_replaces_let_data_unless_set_on_the_command_line() {
    let t = Scratch::new();
    let f = t.write(
        "d.exp",
        "let data = \"data\"\nreport {dir: data + \"/sst2\"} as \"d\"\n",
    );
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args(["run", f.to_str().unwrap(), "-q", "--store"])
            .arg(t.path("store"))
            .arg("--out")
            .arg(t.path("runs"))
            .args(extra)
            .env("SMELT_DATA", "/shared/tasks")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&[]).contains("/shared/tasks/sst2"));
    let set = run(&["--set", "data=mine"]);
    assert!(
        set.contains("mine/sst2") && !set.contains("/shared/tasks"),
        "{set}"
    );
}

#[test]
fn bad_inputs_are_clear_errors_with_spans() {
    let t = Scratch::new();
    // Missing directory.
    let f = t.write(
        "missing.exp",
        "let m = load model(\"no/such/model\")\nreport m.parameters as \"p\"\n",
    );
    let e = run_err(&f, &t.opts());
    assert!(
        e.contains("smelt::io::missing_file") && e.contains("load model(\"no/such/model\")"),
        "{e}"
    );
    // Truncated safetensors header.
    std::fs::create_dir_all(t.path("trunc")).unwrap();
    std::fs::copy(
        Path::new(MODEL).join("config.json"),
        t.path("trunc/config.json"),
    )
    .unwrap();
    std::fs::write(t.path("trunc/model.safetensors"), [0x10, 0, 0]).unwrap();
    let f = t.write(
        "trunc.exp",
        &format!(
            "let m = load model(\"{}\")\nreport m.parameters as \"p\"\n",
            t.path("trunc").display()
        ),
    );
    let e = run_err(&f, &t.opts());
    assert!(e.contains("smelt::io::corrupt_safetensors"), "{e}");
    // Wrong data length: header promises more bytes than the file has.
    let bytes = std::fs::read(Path::new(MODEL).join("model.safetensors")).unwrap();
    std::fs::write(
        t.path("trunc/model.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    let e = run_err(&f, &t.opts());
    assert!(e.contains("smelt::io::corrupt_safetensors"), "{e}");
    // Mismatched shapes at run time too.
    mismatched_copy(&t.path("bad"));
    let f = t.write("mm.exp", &format!("let a = load model(\"{MODEL}\")\nlet b = load model(\"{}\")\nlet m = merge linear([a, b], [0.5, 0.5])\nreport m.parameters as \"p\"\n", t.path("bad").display()));
    let e = run_err(&f, &t.opts());
    assert!(
        e.contains("smelt::check::incompatible_models")
            && e.contains("merge linear([a, b], [0.5, 0.5])"),
        "{e}"
    );
    // A run-time zip of unequal lists points at the call.
    let f = t.write("zip.exp", "let xs = [i for i in range(3) if i > 0]\nlet z = zip(xs, [1, 2, 3])\nreport len(z) as \"n\"\n");
    let e = run_err(&f, &t.opts());
    assert!(
        e.contains("smelt::run::length_mismatch") && e.contains("zip(xs, [1, 2, 3])"),
        "{e}"
    );
}

#[test]
fn set_overrides_are_typed() {
    let t = Scratch::new();
    let f = t.write(
        "s.exp",
        "let profile = \"small\"\nlet n = 3\nreport {p: profile, n: n} as \"r\"\n",
    );
    let o = run_ok(
        &f,
        &RunOptions {
            overrides: vec![("profile".into(), "full".into()), ("n".into(), "5".into())],
            ..t.opts()
        },
    );
    assert_eq!(
        o.reports[0].1.rows[0],
        vec![
            smelt::value::Value::str("full"),
            smelt::value::Value::Int(5)
        ]
    );
    let e = run_err(
        &f,
        &RunOptions {
            overrides: vec![("n".into(), "many".into())],
            ..t.opts()
        },
    );
    assert!(e.contains("smelt::check::set_type"), "{e}");
    let e = run_err(
        &f,
        &RunOptions {
            overrides: vec![("profil".into(), "x".into())],
            ..t.opts()
        },
    );
    assert!(e.contains("did you mean `--set profile=…`"), "{e}");
}

#[test]
fn failed_expect_exits_with_both_values() {
    let t = Scratch::new();
    let f = t.write(
        "e.exp",
        "let a = 0.5\nexpect a + 0.25 >= 1.0 within 0.1\nexpect a == 0.5\n",
    );
    let o = run_ok(&f, &t.opts());
    assert_eq!(o.failed.len(), 1);
    let d = &o.failed[0];
    assert!(
        d.label.contains("left side = 0.75") && d.label.contains("right side = 1.0"),
        "{}",
        d.label
    );
}

/// Run the binary, kill it with SIGKILL once some objects exist, resume, and compare with an
/// uninterrupted run.
#[test]
fn killed_run_resumes_to_identical_results() {
    let t = Scratch::new();
    let mut text = format!("let base = load model(\"{MODEL}\")\n");
    text += "let copies = [model perturb(base, std=0.01, seed=i) for i in range(6)]\n";
    text += "let soup = merge average(copies)\n";
    text += "report [{i: i, d: measure distance(c, soup)} for (i, c) in zip(range(6), copies)] as \"d\"\n";
    let f = t.write("k.exp", &text);
    let bin = env!("CARGO_BIN_EXE_smelt");
    let store = t.path("store-killed");
    let objects = store.join("objects");
    let mut killed_with = 0;
    for attempt in 0..3 {
        let mut child = std::process::Command::new(bin)
            .args([
                "run",
                f.to_str().unwrap(),
                "-q",
                "--store",
                store.to_str().unwrap(),
                "--out",
                t.path("runs").to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let target = 2 + attempt * 2;
        let start = std::time::Instant::now();
        loop {
            let n = count_objects(&objects);
            if n >= target || start.elapsed().as_secs() > 60 {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        killed_with = count_objects(&objects);
    }
    assert!(killed_with >= 1);
    let resumed = run_ok(
        &f,
        &RunOptions {
            store,
            out: t.path("runs"),
            ..Default::default()
        },
    );
    let clean = run_ok(
        &f,
        &RunOptions {
            store: t.path("store-clean"),
            out: t.path("runs2"),
            ..Default::default()
        },
    );
    assert_eq!(resumed.reports, clean.reports);
    assert!(resumed.cached >= killed_with.min(resumed.nodes.len()) - 1);
}

fn count_objects(objects: &Path) -> usize {
    std::fs::read_dir(objects)
        .map(|rd| {
            rd.flatten()
                .map(|p| std::fs::read_dir(p.path()).map(|r| r.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Data-driven runs: each `data/run/*.exp` runs on a fresh store; its reports and the outcome
/// of its `expect`s are snapshotted (numbers rounded to 4 decimals by the Markdown renderer).
#[test]
fn data_driven_runs() {
    insta::glob!("data/run/*.exp", |path| {
        let t = Scratch::new();
        let o = run_ok(path, &t.opts());
        let mut out = String::new();
        for (name, table) in &o.reports {
            out += &format!("## {name}\n{}\n", table.to_markdown());
        }
        out += &format!("failed expects: {}\n", o.failed.len());
        insta::assert_snapshot!(out);
    });
}

#[test]
fn operator_reference_is_current() {
    let reg = smelt::ops::builtin_registry();
    insta::assert_snapshot!(smelt::doc::reference(&reg));
}

/// Editing comments (and `##` docs) of an imported library of `def`s changes no key.
#[test]
fn library_comment_edits_do_not_change_keys() {
    let t = Scratch::new();
    let main = format!(
        "import \"lib.exp\"\nlet m = load model(\"{}\")\nlet x = blend(m, 0.25)\n",
        std::fs::canonicalize(MODEL).unwrap().display()
    );
    let keys = |lib: &str| {
        t.write("lib.exp", lib);
        let f = t.write("main.exp", &main);
        let mut s = Session::new();
        let p = s
            .load(&f, &[])
            .map_err(|d| render_all(&d, &s.sources, false, 80))
            .unwrap();
        let mut fp = smelt::cache::Fingerprinter::in_memory();
        let settings = s.settings(&p);
        let (ev, res) = s.evaluate(&p, Mode::Plan, None, &mut fp, settings, None);
        res.unwrap();
        ev.graph.iter().map(|n| n.key.hex()).collect::<Vec<_>>()
    };
    let a = keys("## Mix a model with a noisy copy.\ndef blend(m, w) = merge linear([m, model perturb(m)], [1.0 - w, w])\n");
    let b = keys("# a new comment\n## Mix a model with a\n## noisy copy (reworded).\ndef blend(model, weight) =\n  merge linear([model, model perturb(model)], [1.0 - weight, weight])  # renamed params\n");
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);
}
