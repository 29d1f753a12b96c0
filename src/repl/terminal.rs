//! The interactive front end of `smelt repl`: rustyline line editing over a [`Repl`].
//!
//! Prompt `smelt> `, tab completion through [`Repl::complete`], history in
//! `<store>/repl_history.txt`, multi-line input while a bracket is still open,
//! Ctrl-C clears the line, Ctrl-D (or `:quit`) leaves. Results go to stdout and errors to
//! stderr, coloured when stderr is a terminal. All behaviour lives in the terminal-free core so
//! it can be tested without a TTY.

use super::Repl;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::Path;
use std::rc::Rc;

/// Connects rustyline to the REPL core (shared with the read loop, which evaluates lines).
struct ReplHelper {
    repl: Rc<RefCell<Repl>>,
}

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.repl.borrow().complete(line, pos))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if is_incomplete(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Helper for ReplHelper {}

/// Does `input` end inside an open bracket (so Enter should continue the input)?
fn is_incomplete(input: &str) -> bool {
    if input.trim_start().starts_with(':') {
        return false;
    }
    let mut depth = 0i32;
    let (mut in_str, mut escaped, mut comment) = (false, false, false);
    for c in input.chars() {
        if comment {
            comment = c != '\n';
            continue;
        }
        if in_str {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => in_str = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '#' => comment = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    // A string cannot span lines: an open one is an error to report, not a reason to wait.
    depth > 0
}

/// Run the interactive REPL on the store at `store_dir`, first loading `load` if given.
/// Returns the process exit code: 0, or 1 when the REPL could not start or when input was not
/// a terminal (a piped script) and some line failed.
pub fn run_terminal(store_dir: &Path, load: Option<&Path>) -> i32 {
    let color = std::io::stderr().is_terminal();
    let interactive = std::io::stdin().is_terminal();
    let mut repl = match Repl::new(store_dir) {
        Ok(r) => r,
        Err(d) => {
            eprintln!(
                "{}",
                crate::diag::render(&d, &crate::source::SourceMap::new(), color, 100)
            );
            return 1;
        }
    };
    repl.color = color;
    repl.width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    repl.settings_mut().progress = color;
    let repl = Rc::new(RefCell::new(repl));
    let mut editor: Editor<ReplHelper, DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the line editor: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(ReplHelper { repl: repl.clone() }));
    let history = store_dir.join("repl_history.txt");
    let _ = editor.load_history(&history);
    let mut failed = false;
    if let Some(file) = load {
        let out = repl.borrow_mut().load_file(file);
        failed |= show(&out);
    }
    if interactive {
        println!(
            "smelt {} — :help for commands, Tab to complete, Ctrl-D to leave",
            env!("CARGO_PKG_VERSION")
        );
    }
    loop {
        match editor.readline("smelt> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let out = repl.borrow_mut().eval_line(&line);
                failed |= show(&out);
                if out.quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
                break;
            }
        }
    }
    let _ = editor.save_history(&history);
    i32::from(failed && !interactive)
}

/// Print one result; returns whether it was an error.
fn show(out: &super::ReplOutput) -> bool {
    if !out.text.is_empty() {
        if out.is_error {
            eprintln!("{}", out.text);
        } else {
            println!("{}", out.text);
        }
    }
    out.is_error
}

#[cfg(test)]
mod tests {
    use super::is_incomplete;

    #[test]
    fn open_brackets_and_strings_continue_the_input() {
        assert!(is_incomplete("let xs = [1,"));
        assert!(is_incomplete("def f(a) {"));
        assert!(!is_incomplete("let s = \"abc"));
        assert!(!is_incomplete("let xs = [1, 2]"));
        assert!(!is_incomplete("let s = \"(\" # ("));
        assert!(!is_incomplete(":type [1,"));
    }
}
