//! REPL tests: transcripts (`tests/data/repl/*.txt`, one input per line, snapshotted as the
//! interleaved `> input` / output), caching across lines, and tab completion.
//!
//! Each transcript runs in a fresh REPL over a temporary store, with timings off; store keys
//! (10 hex digits) are replaced by `<key>` so the snapshots do not change with the key schema.

use smelt::repl::Repl;

fn repl(store: &tempfile::TempDir) -> Repl {
    let mut r = Repl::new(store.path()).expect("open the REPL");
    r.timings = false;
    r
}

/// Run every non-empty line of `src` and return the transcript.
fn transcript(src: &str) -> String {
    let store = tempfile::tempdir().unwrap();
    let mut r = repl(&store);
    let mut out = String::new();
    for line in src.lines().filter(|l| !l.trim().is_empty()) {
        out += &format!("> {line}\n");
        let res = r.eval_line(line);
        if !res.text.is_empty() {
            out += &redact_keys(&res.text);
            out.push('\n');
        }
    }
    out
}

/// Replace every run of exactly 10 lowercase hex digits (a short store key) by `<key>`.
fn redact_keys(s: &str) -> String {
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        let run = chars[i..].iter().take_while(|c| is_hex(**c)).count();
        let ends = chars
            .get(i + run)
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        if boundary && run == 10 && ends {
            out += "<key>";
            i += run;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn transcripts() {
    insta::glob!("data/repl/*.txt", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        insta::assert_snapshot!(transcript(&src));
    });
}

#[test]
fn the_same_merge_on_two_lines_runs_once() {
    let store = tempfile::tempdir().unwrap();
    let mut r = repl(&store);
    for line in [
        "let m = load model(\"assets/models/minilm-l3-v8k\")",
        "let a = merge average([m, m])",
        "let b = merge average([m, m])",
    ] {
        let out = r.eval_line(line);
        assert!(!out.is_error, "{line}: {}", out.text);
    }
    let merges: Vec<_> = r
        .plan()
        .iter()
        .filter(|e| e.node.op == "merge.average")
        .collect();
    assert_eq!(merges.len(), 1, "one distinct node");
    assert_eq!(
        (merges[0].runs, merges[0].hits),
        (1, 1),
        "ran once, then served from the store"
    );
    assert_eq!(r.binding("a"), r.binding("b"));
    // A second session over the same store finds it warm.
    let mut again = repl(&store);
    again.eval_line("let m = load model(\"assets/models/minilm-l3-v8k\")");
    assert!(!again.eval_line("let c = merge average([m, m])").is_error);
    let e = again
        .plan()
        .iter()
        .find(|e| e.node.op == "merge.average")
        .unwrap();
    assert_eq!((e.runs, e.hits), (0, 1));
}

#[test]
fn a_failed_line_changes_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut r = repl(&store);
    assert!(!r.eval_line("let x = 1").is_error);
    let out = r.eval_line("let x = 2 let y = 1 / 0");
    assert!(out.is_error, "{}", out.text);
    assert_eq!(r.eval_line("x").text, "1");
    assert!(r.eval_line("y").is_error, "`y` was rolled back");
    assert!(r.eval_line(":quit").quit);
}

fn completions(r: &Repl, line: &str) -> (usize, Vec<String>) {
    r.complete(line, line.len())
}

#[test]
fn completes_methods_params_names_and_commands() {
    let store = tempfile::tempdir().unwrap();
    let mut r = repl(&store);
    assert!(
        !r.eval_line("let base_model = load model(\"assets/models/minilm-l3-v8k\")")
            .is_error
    );
    assert!(
        !r.eval_line("def twice(k: Int, scale = 2) = k * scale")
            .is_error
    );
    assert_eq!(
        completions(&r, "merge av"),
        (6, vec!["average".to_string()])
    );
    assert_eq!(
        completions(&r, "let s = merge li"),
        (14, vec!["linear".to_string()])
    );
    let (start, c) = completions(&r, "merge linear(xs, nor");
    assert_eq!(
        (start, c.first().map(String::as_str)),
        (17, Some("normalize="))
    );
    let (_, c) = completions(&r, "merge linear(xs, normalize=true, nor");
    assert!(!c.contains(&"normalize=".to_string()), "{c:?}");
    let (_, c) = completions(&r, "twice(1, ");
    assert!(
        c.starts_with(&["k=".to_string(), "scale=".to_string()]),
        "{c:?}"
    );
    assert_eq!(completions(&r, "bas").1, vec!["base_model"]);
    assert_eq!(completions(&r, "tw").1, vec!["twice"]);
    assert_eq!(completions(&r, "le").1, vec!["len", "let"]);
    assert_eq!(
        completions(&r, "1 + le").1,
        vec!["len"],
        "statement words only at the start"
    );
    assert_eq!(completions(&r, "me").1, vec!["mean", "measure", "merge"]);
    assert_eq!(completions(&r, "base_model.mo").1, vec!["model_type"]);
    assert_eq!(completions(&r, "use std.me").1, vec!["merge"]);
    assert_eq!(
        completions(&r, "load model(\"assets/mo"),
        (12, vec!["assets/models/".to_string()])
    );
    assert_eq!(completions(&r, ":he"), (0, vec![":help".to_string()]));
    assert_eq!(completions(&r, ":p").1, vec![":plan"]);
    assert_eq!(
        completions(&r, ":help merge li"),
        (12, vec!["linear".to_string()])
    );
    assert_eq!(completions(&r, ":help merge.av").1, vec!["average"]);
    assert_eq!(completions(&r, ":ops me").1, vec!["measure", "merge"]);
    assert_eq!(completions(&r, ":type merge av").1, vec!["average"]);
    assert_eq!(
        completions(&r, ":load assets/mod").1,
        vec!["assets/models/"]
    );
    // The cursor need not be at the end.
    assert_eq!(
        r.complete("merge av + 1", 8),
        (6, vec!["average".to_string()])
    );
}

/// Not a test by itself: the child process of `terminal_runs_piped_input`.
#[test]
fn terminal_child() {
    let Some(store) = std::env::var_os("SMELT_REPL_CHILD") else {
        return;
    };
    std::process::exit(smelt::repl::terminal::run_terminal(
        std::path::Path::new(&store),
        None,
    ));
}

#[test]
fn terminal_runs_piped_input() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let store = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "terminal_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMELT_REPL_CHILD", store.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = "let x = 1 + 2\nx * 2\nnope\n:q\nx\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("x : Int\n6\n"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("unknown name `nope`"), "stderr: {stderr}");
    assert!(!stdout.contains("\n3\n"), ":q stops reading: {stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed line in a piped script fails the run"
    );
    let history = std::fs::read_to_string(store.path().join("repl_history.txt")).unwrap();
    assert!(history.contains("x * 2"), "{history}");
}
