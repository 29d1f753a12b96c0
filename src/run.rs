//! `smelt run`: evaluate, realise every node through the store, then carry out the
//! statements' effects — write reports (Markdown + CSV + JSON), save artifacts, judge
//! `expect` claims — and record the run in `runs/<experiment>/<timestamp>/manifest.json`.

use crate::cache::{Fingerprinter, Store};
use crate::diag::{Diagnostic, OpError};
use crate::eval::{ExpectOutcome, Mode, Node, Output, Status};
use crate::report::Table;
use crate::session::{device, Program, Session};
use crate::value::{Kind, Value};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub overrides: Vec<(String, String)>,
    pub device: Option<String>,
    /// Where run records go (`runs/` by default).
    pub out: PathBuf,
    pub store: PathBuf,
    /// Print one line per finished node on stderr.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            overrides: Vec::new(),
            device: None,
            out: PathBuf::from("runs"),
            store: default_store(),
            progress: false,
        }
    }
}

pub fn default_store() -> PathBuf {
    std::env::var_os("SMELT_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".smelt"))
}

#[derive(Debug)]
pub struct RunOutcome {
    pub executed: usize,
    pub cached: usize,
    pub nodes: Vec<Node>,
    pub run_dir: PathBuf,
    pub reports: Vec<(String, Table)>,
    /// Failed `expect` claims (the run exits non-zero when any).
    pub failed: Vec<Diagnostic>,
}

/// Run a program file end to end.
pub fn run(
    session: &mut Session,
    file: &Path,
    opts: &RunOptions,
) -> Result<RunOutcome, Vec<Diagnostic>> {
    let program = session.load(file, &opts.overrides)?;
    run_program(session, &program, opts)
}

pub fn run_program(
    session: &Session,
    program: &Program,
    opts: &RunOptions,
) -> Result<RunOutcome, Vec<Diagnostic>> {
    let start = Instant::now();
    let mut settings = session.settings(program);
    if let Some(d) = &opts.device {
        settings.device_name = d.clone();
    }
    settings.device = device(&settings.device_name).map_err(|d| vec![d])?;
    settings.progress = opts.progress;
    let store =
        Store::open(&opts.store).map_err(|e| vec![Diagnostic::global(e.code, e.message)])?;
    let mut fp = Fingerprinter::open(&store.fingerprint_file());
    let run_dir = opts.out.join(&program.name).join(timestamp());
    let progress = opts.progress;
    let on_node: Option<crate::eval::OnNode> = if progress {
        Some(Box::new(|n: &Node, done, total| {
            let status = match &n.status {
                Status::Cached => "cached".to_string(),
                Status::Ran { seconds } => format!("ran in {seconds:.2}s"),
                s => format!("{s:?}").to_lowercase(),
            };
            eprintln!("[{done}/{total}] {:<24} {}  {status}", n.op, n.key.short());
        }))
    } else {
        None
    };
    let (mut ev, res) = session.evaluate(
        program,
        Mode::Run,
        Some(&store),
        &mut fp,
        settings.clone(),
        on_node,
    );
    let mut errors = Vec::new();
    if let Err(d) = res.and_then(|_| ev.realise_all()) {
        errors.push(d);
    }
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    let mut saves = Vec::new();
    let mut figures: Vec<(String, Value)> = Vec::new();
    let outputs = ev.outputs.clone();
    if errors.is_empty() {
        for out in &outputs {
            let r = match out {
                Output::Report { name, value, span } => ev.force_deep(value).map(|v| {
                    reports.push((name.clone(), Table::from_value(&v)));
                    let _ = span;
                }),
                Output::Save { value, path, span } => ev.force_deep(value).and_then(|v| {
                    save(&v, Path::new(path))
                        .map_err(|e| e.at_span(*span))
                        .map(|_| saves.push(path.clone()))
                }),
                Output::Plot { value, to, span } => ev.force_deep(value).and_then(|v| {
                    let file = match (to, &v) {
                        (Some(p), _) => Path::new(p)
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "plot.svg".into()),
                        (None, Value::Artifact(a)) => format!(
                            "{}-{}.svg",
                            a.data["plot"].as_str().unwrap_or("plot"),
                            figures.len() + 1
                        ),
                        (None, _) => format!("plot-{}.svg", figures.len() + 1),
                    };
                    if let Some(p) = to {
                        save(&v, Path::new(p)).map_err(|e| e.at_span(*span))?;
                        saves.push(p.clone());
                    }
                    figures.push((file, v));
                    Ok(())
                }),
                Output::Expect { outcome, span } => {
                    if let ExpectOutcome::Failed { lhs, rhs } = outcome {
                        failed.push(expect_failure(session, *span, lhs.as_ref(), rhs.as_ref()));
                    }
                    Ok(())
                }
            };
            if let Err(d) = r {
                errors.push(d);
                break;
            }
        }
    }
    let _ = fp_save(ev.fingerprints);
    let nodes = ev.graph.clone();
    let executed = ev.executed();
    let cached = ev.cached();
    drop(ev);
    // The run record is written even when the run failed: it says how far it got.
    let write = write_record(
        session,
        program,
        &run_dir,
        &settings,
        &nodes,
        &reports,
        &outputs,
        &failed,
        &errors,
        &saves,
        start.elapsed().as_secs_f64(),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    write.map_err(|e| vec![Diagnostic::global(e.code, e.message)])?;
    // Figures go next to the run's tables.
    for (file, v) in &figures {
        save(v, &run_dir.join(file)).map_err(|e| vec![Diagnostic::global(e.code, e.message)])?;
    }
    Ok(RunOutcome {
        executed,
        cached,
        nodes,
        run_dir,
        reports,
        failed,
    })
}

fn fp_save(fp: &mut Fingerprinter) -> Result<(), OpError> {
    fp.save()
}

fn expect_failure(
    session: &Session,
    span: crate::source::Span,
    lhs: Option<&Value>,
    rhs: Option<&Value>,
) -> Diagnostic {
    let claim = session.sources.snippet(span).to_string();
    let values = match (lhs, rhs) {
        (Some(l), Some(r)) => format!("left side = {}, right side = {}", l.display(), r.display()),
        _ => "the claim evaluated to false".to_string(),
    };
    Diagnostic::error(
        "smelt::run::expect_failed",
        format!("expectation failed: {claim}"),
        span,
    )
    .with_label(values.clone())
    .with_help(format!(
        "{values}; the claim does not hold for these results"
    ))
}

/// Save a realised value: a model (or a Fisher) as an HF directory, a table as CSV/JSON/Markdown.
pub fn save(v: &Value, dest: &Path) -> Result<(), OpError> {
    match v {
        Value::Artifact(a) if matches!(a.kind, Kind::Model | Kind::Adapter | Kind::Fisher) => {
            copy_dir_atomic(&a.dir, dest)
        }
        Value::Artifact(a) if a.kind == Kind::Table => write_table(&Table::from_value(v), dest),
        Value::Artifact(a) if a.kind == Kind::Figure => {
            let svg = std::fs::read(a.dir.join(crate::ops::plot::FIGURE_FILE))?;
            crate::cache::atomic_write(dest, &svg)
        }
        // A partition: its `partition.json` for `.json`, else its table (group, size, tasks).
        Value::Artifact(a) if a.kind == Kind::Partition => match dest.extension() {
            Some(e) if e == "json" => {
                let text = serde_json::to_string_pretty(&a.data).unwrap_or_default();
                crate::cache::atomic_write(dest, text.as_bytes())
            }
            _ => write_table(&Table::from_value(v), dest),
        },
        Value::Artifact(a) if a.kind == Kind::Matrix => match dest.extension() {
            Some(e) if e == "csv" => write_matrix_csv(a, dest),
            _ => copy_dir_atomic(&a.dir, dest),
        },
        Value::Record(_) | Value::List(_) => write_table(&Table::from_value(v), dest),
        other => Err(OpError::new(
            "smelt::run::cannot_save",
            format!("cannot save {}", other.display()),
        )),
    }
}

/// A 2-D matrix as CSV: a header of column labels, then one labelled row per matrix row.
fn write_matrix_csv(a: &crate::value::Artifact, dest: &Path) -> Result<(), OpError> {
    let m = crate::tensors::matrix::Matrix::read(&a.dir)?;
    if m.shape.len() != 2 {
        return Err(OpError::new(
            "smelt::run::cannot_save",
            format!("a {}-D matrix cannot be written as CSV", m.shape.len()),
        )
        .with_help("save it to a directory name instead (safetensors + json)"));
    }
    let label = |k: usize, i: usize| {
        m.axes[k]
            .labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| i.to_string())
    };
    let mut text = m.axes[0].name.clone();
    for j in 0..m.cols() {
        text += &format!(",{}", label(1, j));
    }
    text.push('\n');
    for i in 0..m.rows() {
        text += &label(0, i);
        for v in m.row(i) {
            text += &format!(",{v}");
        }
        text.push('\n');
    }
    crate::cache::atomic_write(dest, text.as_bytes())
}

fn write_table(t: &Table, dest: &Path) -> Result<(), OpError> {
    let ext = dest.extension().and_then(|e| e.to_str()).unwrap_or("");
    let bytes = match ext {
        "csv" => t.to_csv(),
        "json" => serde_json::to_string_pretty(&t.to_json()).unwrap_or_default(),
        _ => t.to_markdown(),
    };
    crate::cache::atomic_write(dest, bytes.as_bytes())
}

/// Copy a directory to `dest` via a temporary sibling and a rename.
fn copy_dir_atomic(src: &Path, dest: &Path) -> Result<(), OpError> {
    let name = dest.file_name().ok_or_else(|| {
        OpError::new(
            "smelt::run::save",
            format!("`{}` is not a directory name", dest.display()),
        )
    })?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_tree(src, &tmp)?;
    if dest.exists() {
        let is_model = dest.join("config.json").exists()
            || dest.join("adapter_config.json").exists()
            || std::fs::read_dir(dest)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !is_model {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(OpError::new(
                "smelt::run::save",
                format!(
                    "`{}` exists and is not a model or adapter directory",
                    dest.display()
                ),
            )
            .with_help(
                "choose another path; smelt only replaces model directories it could have written",
            ));
        }
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), OpError> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let target = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_record(
    session: &Session,
    program: &Program,
    dir: &Path,
    settings: &crate::eval::Settings,
    nodes: &[Node],
    reports: &[(String, Table)],
    outputs: &[Output],
    failed: &[Diagnostic],
    errors: &[Diagnostic],
    saves: &[String],
    seconds: f64,
) -> Result<(), OpError> {
    std::fs::create_dir_all(dir)?;
    for (name, t) in reports {
        crate::cache::atomic_write(&dir.join(format!("{name}.md")), t.to_markdown().as_bytes())?;
        crate::cache::atomic_write(&dir.join(format!("{name}.csv")), t.to_csv().as_bytes())?;
        crate::cache::atomic_write(
            &dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&t.to_json())
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }
    let src = session.sources.get(program.main);
    let expects: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Expect { outcome, span } => Some(json!({
                "claim": session.sources.snippet(*span),
                "at": session.sources.location(*span),
                "passed": matches!(outcome, ExpectOutcome::Passed { .. }),
                "values": match outcome {
                    ExpectOutcome::Passed { lhs, rhs } | ExpectOutcome::Failed { lhs, rhs } =>
                        json!([lhs.as_ref().map(|v| v.display()), rhs.as_ref().map(|v| v.display())]),
                    ExpectOutcome::Unknown => json!(null),
                },
            })),
            _ => None,
        })
        .collect();
    let manifest = json!({
        "experiment": program.name,
        "file": src.name,
        "program": src.text.as_ref(),
        "overrides": program.overrides.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "config": {"seed": settings.seed, "dtype": settings.dtype, "device": settings.device_name},
        "smelt_version": env!("CARGO_PKG_VERSION"),
        "cache_schema": crate::cache::key::CACHE_SCHEMA,
        "status": if !errors.is_empty() { "error" } else if !failed.is_empty() { "expectation_failed" } else { "ok" },
        "errors": errors.iter().map(|d| json!({"code": d.code, "message": d.message})).collect::<Vec<_>>(),
        "seconds": seconds,
        "nodes": nodes.iter().map(|n| json!({
            "key": n.key.hex(),
            "op": n.op,
            "op_version": n.version,
            "params": n.params,
            "seed": n.seed,
            "at": session.sources.location(n.span),
            "status": match &n.status { Status::Cached => "cached".to_string(), Status::Ran{..} => "ran".into(), s => format!("{s:?}").to_lowercase() },
            "seconds": match &n.status { Status::Ran { seconds } => *seconds, _ => 0.0 },
        })).collect::<Vec<_>>(),
        "reports": reports.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "saved": saves,
        "expects": expects,
    });
    crate::cache::atomic_write(
        &dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// `YYYY-MM-DD_HH-MM-SS` (UTC) plus milliseconds, so two runs in one second do not collide.
pub fn timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}_{:02}-{:02}-{:02}.{:03}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Keys referenced by the latest run of every experiment under `runs` (kept by `cache gc`).
pub fn live_keys(runs: &Path) -> std::collections::HashSet<String> {
    let mut keep = std::collections::HashSet::new();
    let Ok(exps) = std::fs::read_dir(runs) else {
        return keep;
    };
    for exp in exps.flatten() {
        let Ok(rs) = std::fs::read_dir(exp.path()) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = rs.flatten().map(|e| e.path()).collect();
        dirs.sort();
        if let Some(latest) = dirs.last() {
            if let Ok(bytes) = std::fs::read(latest.join("manifest.json")) {
                if let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    for n in m["nodes"].as_array().into_iter().flatten() {
                        if let Some(k) = n["key"].as_str() {
                            keep.insert(k.to_string());
                        }
                    }
                }
            }
        }
    }
    keep
}
