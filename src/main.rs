//! The `smelt` command line: run, check, plan, repl, doc, cache.
//!
//! Only argument parsing and printing live here; everything else is in the library.
#![allow(clippy::result_large_err)]

use clap::{Parser, Subcommand};
use smelt::diag::{render_all, Diagnostic};
use smelt::eval::Mode;
use smelt::run::{default_store, RunOptions};
use smelt::session::Session;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "Typed, cached, reproducible multi-task fine-tuning experiments"
)]
struct Cli {
    /// Content-addressed store (default: $SMELT_STORE or .smelt).
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment: realise every node (cached by content), write reports, check `expect`s.
    Run {
        file: PathBuf,
        /// Replace a top-level `let` or config key: `--set name=value`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// cpu, cuda, cuda:N or auto (overrides `config { device: … }`).
        #[arg(long)]
        device: Option<String>,
        /// Where run records go.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Do not print a line per node.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Parse, type-check and resolve inputs from headers only; no tensor data is read.
    Check {
        file: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Show the DAG: each node cached or to run, with a cost estimate.
    Plan {
        file: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Interactive session (`:help`, `:ops`, `:type`, `:plan`, `:load`, `:quit`).
    Repl { file: Option<PathBuf> },
    /// Operator reference (Markdown); `smelt doc merge.uncertainty` for one operator.
    Doc { op: Option<String> },
    /// Inspect or clean the store.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List stored objects.
    Ls,
    /// Remove objects not used by the latest run of each experiment under `runs/`.
    Gc {
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Remove everything.
        #[arg(long)]
        all: bool,
    },
    /// Show how an object was made.
    Why { key: String },
}

/// Print to stdout, ignoring a closed pipe (`smelt cache ls | head`).
fn say(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Print to stderr, ignoring a closed pipe.
fn esay(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, Diagnostic> {
    sets.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| {
                    Diagnostic::global("smelt::cli::set", format!("`--set {s}` is not NAME=VALUE"))
                        .with_help("write e.g. `--set profile=small`")
                })
        })
        .collect()
}

/// Exit status of `smelt run` when the run completed but an `expect` does not hold.
const EXIT_EXPECT_FAILED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = std::io::stderr().is_terminal();
    let store = cli.store.clone().unwrap_or_else(default_store);
    let mut session = Session::new();
    let fail = |session: &Session, diags: &[Diagnostic]| {
        eprintln!("{}", render_all(diags, &session.sources, color, 100));
        ExitCode::from(1)
    };
    match cli.cmd {
        Cmd::Run {
            file,
            set,
            device,
            out,
            quiet,
        } => {
            let overrides = match parse_sets(&set) {
                Ok(o) => o,
                Err(d) => return fail(&session, &[d]),
            };
            let opts = RunOptions {
                overrides,
                device,
                out,
                store,
                progress: !quiet,
            };
            match smelt::run::run(&mut session, &file, &opts) {
                Err(diags) => fail(&session, &diags),
                Ok(outcome) => {
                    for (name, table) in &outcome.reports {
                        say(&format!("## {name}\n\n{}\n", table.to_markdown()));
                    }
                    eprintln!(
                        "{} nodes: {} ran, {} cached; record in {}",
                        outcome.nodes.len(),
                        outcome.executed,
                        outcome.cached,
                        outcome.run_dir.display()
                    );
                    if outcome.failed.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        // Everything ran and was recorded; only claims failed: exit 3, so
                        // scripts can tell a failed claim from an error (exit 1).
                        fail(&session, &outcome.failed);
                        ExitCode::from(EXIT_EXPECT_FAILED)
                    }
                }
            }
        }
        Cmd::Check { file, set } => dry(&mut session, &file, &set, Mode::Check, &store, color),
        Cmd::Plan { file, set } => dry(&mut session, &file, &set, Mode::Plan, &store, color),
        Cmd::Repl { file } => {
            ExitCode::from(smelt::repl::terminal::run_terminal(&store, file.as_deref()) as u8)
        }
        Cmd::Doc { op } => match op {
            None => {
                say(&smelt::doc::reference(&session.reg));
                ExitCode::SUCCESS
            }
            Some(name) => match smelt::doc::find(&session.reg, &name) {
                Some(sig) => {
                    say(&smelt::doc::render_op(sig));
                    ExitCode::SUCCESS
                }
                None => {
                    let ids = smelt::ops::SigLookup::ids(&session.reg);
                    let mut d =
                        Diagnostic::global("smelt::doc::unknown", format!("no operator `{name}`"));
                    if let Some(s) = smelt::types::calls::did_you_mean(
                        &name.replacen(' ', ".", 1),
                        ids.iter().copied(),
                    ) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                    fail(&session, &[d])
                }
            },
        },
        Cmd::Cache { cmd } => cache(cmd, &store),
    }
}

fn dry(
    session: &mut Session,
    file: &std::path::Path,
    set: &[String],
    mode: Mode,
    store_dir: &std::path::Path,
    color: bool,
) -> ExitCode {
    let start = std::time::Instant::now();
    let overrides = match parse_sets(set) {
        Ok(o) => o,
        Err(d) => {
            esay(&(render_all(&[d], &session.sources, color, 100) + "\n"));
            return ExitCode::from(1);
        }
    };
    let program = match session.load(file, &overrides) {
        Ok(p) => p,
        Err(diags) => {
            esay(&(render_all(&diags, &session.sources, color, 100) + "\n"));
            return ExitCode::from(1);
        }
    };
    let store = if mode == Mode::Plan {
        smelt::cache::Store::open(store_dir).ok()
    } else {
        None
    };
    let mut fp = match &store {
        Some(s) => smelt::cache::Fingerprinter::open(&s.fingerprint_file()),
        None => smelt::cache::Fingerprinter::in_memory(),
    };
    let settings = session.settings(&program);
    let (ev, res) = session.evaluate(&program, mode, store.as_ref(), &mut fp, settings, None);
    if let Err(d) = res {
        esay(&(render_all(&[d], &session.sources, color, 100) + "\n"));
        return ExitCode::from(1);
    }
    let mut ev = ev;
    ev.mark_stored();
    let nodes = ev.graph.clone();
    drop(ev);
    let _ = fp.save();
    match mode {
        Mode::Plan => {
            say(&smelt::plan::render(&nodes, &session.sources));
        }
        _ => say(&format!(
            "ok: {} checked ({} operator calls, inputs resolved from headers) in {:.3}s\n",
            file.display(),
            nodes.len(),
            start.elapsed().as_secs_f64()
        )),
    }
    ExitCode::SUCCESS
}

fn cache(cmd: CacheCmd, store_dir: &std::path::Path) -> ExitCode {
    let store = match smelt::cache::Store::open(store_dir) {
        Ok(s) => s,
        Err(e) => {
            esay(&(format!("error: {}", e.message) + "\n"));
            return ExitCode::from(1);
        }
    };
    match cmd {
        CacheCmd::Ls => {
            for m in store.list() {
                let size = smelt::cache::dir_size(
                    &store.object_dir(&smelt::cache::Key::from_hex(&m.key).expect("listed key")),
                );
                say(&(format!(
                    "{}  {:<24} {:>10}  {:.2}s  {}",
                    &m.key[..10],
                    m.op,
                    smelt::plan::human_bytes(size),
                    m.seconds,
                    m.params
                ) + "\n"));
            }
        }
        CacheCmd::Why { key } => {
            let found = store.list().into_iter().find(|m| m.key.starts_with(&key));
            match found {
                Some(m) => say(&(serde_json::to_string_pretty(&m).unwrap_or_default() + "\n")),
                None => {
                    esay(&(format!("error: no object with key prefix `{key}`") + "\n"));
                    return ExitCode::from(1);
                }
            }
        }
        CacheCmd::Gc { runs, all } => {
            let keep = if all {
                Default::default()
            } else {
                smelt::run::live_keys(&runs)
            };
            match store.gc(&keep) {
                Ok((n, bytes)) => say(&format!(
                    "removed {n} objects, freed {}\n",
                    smelt::plan::human_bytes(bytes)
                )),
                Err(e) => {
                    esay(&(format!("error: {}", e.message) + "\n"));
                    return ExitCode::from(1);
                }
            }
        }
    }
    ExitCode::SUCCESS
}
