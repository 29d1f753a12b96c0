//! Training and evaluation through the language, end to end on the committed small encoder
//! and the project's synthetic tasks: reproducibility, that training learns, PEFT directory
//! round trips (`save` → `load adapter` gives identical scores), `model apply` ≡ the adapter,
//! multi-task heads, full fine-tuning, bottleneck adapters, and bad inputs as errors that
//! carry the call's span.

use smelt::diag::render_all;
use smelt::report::Table;
use smelt::run::{run, RunOptions, RunOutcome};
use smelt::session::Session;
use std::path::{Path, PathBuf};

const MODEL: &str = "assets/models/minilm-l3-v8k";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempfile::tempdir().unwrap())
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
    fn opts(&self, store: &str) -> RunOptions {
        RunOptions {
            store: self.path(store),
            out: self.path("runs"),
            ..Default::default()
        }
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn prelude() -> String {
    let r = root();
    format!(
        "config {{ seed: 7 }}\nlet lm = load model(\"{}\")\nlet movies = load task(\"{}\")\nlet topics = load task(\"{}\")\n",
        r.join(MODEL).display(),
        r.join("experiments/data/movies").display(),
        r.join("experiments/data/topics").display()
    )
}

fn run_ok(file: &Path, opts: &RunOptions) -> RunOutcome {
    let mut s = Session::new();
    match run(&mut s, file, opts) {
        Ok(o) => {
            let failed = render_all(&o.failed, &s.sources, false, 100);
            assert!(o.failed.is_empty(), "failed expects:\n{failed}");
            o
        }
        Err(d) => panic!("run failed:\n{}", render_all(&d, &s.sources, false, 100)),
    }
}

fn run_err(file: &Path, opts: &RunOptions) -> String {
    let mut s = Session::new();
    match run(&mut s, file, opts) {
        Ok(_) => panic!("run should fail"),
        Err(d) => render_all(&d, &s.sources, false, 100),
    }
}

fn table<'a>(o: &'a RunOutcome, name: &str) -> &'a Table {
    &o.reports.iter().find(|(n, _)| n == name).unwrap().1
}

fn num(t: &Table, row: usize, col: &str) -> f64 {
    let c = t.columns.iter().position(|x| x == col).unwrap();
    t.rows[row][c].as_f64().unwrap()
}

#[test]
fn lora_learns_reproducibly_and_its_peft_directory_round_trips() {
    let t = Scratch::new();
    let saved = t.path("movies-lora");
    let text = format!(
        "{}let a = train lora(lm, movies, head=prompt, lr=2e-3, epochs=2, batch=16)\n\
         report evaluate([lm], movies, metric=[accuracy, ce_loss]) as \"base\"\n\
         report evaluate(a, movies, metric=[accuracy, ce_loss]) as \"lora\"\n\
         report {{applied: measure score(model apply(a), movies), direct: measure score(a, movies)}} as \"apply\"\n\
         save a to \"{}\"\n",
        prelude(),
        saved.display()
    );
    let f = t.write("a.exp", &text);
    let first = run_ok(&f, &t.opts("s1"));
    let second = run_ok(&f, &t.opts("s2"));
    assert_eq!(
        first.reports, second.reports,
        "two fresh stores, same numbers"
    );
    let (base, lora) = (table(&first, "base"), table(&first, "lora"));
    assert!(
        num(lora, 0, "accuracy") > num(base, 0, "accuracy") + 0.05,
        "{lora:?} vs {base:?}"
    );
    assert!(num(lora, 0, "ce_loss") < num(base, 0, "ce_loss"));
    let apply = table(&first, "apply");
    assert!(
        (num(apply, 0, "applied") - num(apply, 0, "direct")).abs() <= 1.0 / 120.0 + 1e-9,
        "{apply:?}"
    );

    // PEFT's layout and key names
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["target_modules"], serde_json::json!(["query", "value"]));
    let st = std::fs::read(saved.join("adapter_model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&st)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(
        names.contains(
            &"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight".to_string()
        ),
        "{names:?}"
    );
    assert_eq!(names.len(), 12);

    // `load adapter` of the saved directory scores exactly as the trained adapter
    let g = t.write(
        "b.exp",
        &format!(
            "{}let a = load adapter(\"{}\", base=lm)\nreport evaluate(a, movies, metric=[accuracy, ce_loss]) as \"lora\"\n",
            prelude(),
            saved.display()
        ),
    );
    let loaded = run_ok(&g, &t.opts("s1"));
    assert_eq!(table(&loaded, "lora").rows[0][3..], lora.rows[0][3..]);
}

#[test]
fn multitask_heads_full_finetuning_and_bottleneck_adapters() {
    let t = Scratch::new();
    let text = format!(
        "{}let group = train lora(lm, [movies, topics], head=cls, lr=5e-3, epochs=2, batch=16)\n\
         let ad = train adapter(lm, movies, size=16, lr=2e-3, epochs=2, head=prompt)\n\
         let full = train full(lm, movies, lr=5e-5, max_steps=3, head=prompt)\n\
         report evaluate(group, [movies, topics], metric=[accuracy, mcc]) as \"group\"\n\
         report evaluate(ad, movies) as \"adapter\"\n\
         report {{moved: measure distance(full, lm)}} as \"full\"\n\
         save ad to \"{}\"\n\
         save full to \"{}\"\n",
        prelude(),
        t.path("ad").display(),
        t.path("full").display()
    );
    let f = t.write("m.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    let g = table(&o, "group");
    assert_eq!(g.rows.len(), 2);
    for r in 0..2 {
        assert!(num(g, r, "accuracy") > 0.7, "{g:?}");
    }
    assert!(num(table(&o, "adapter"), 0, "accuracy") > 0.8);
    assert!(num(table(&o, "full"), 0, "moved") > 0.0);
    // every tensor of the full model moved, embeddings and norms included
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let (a, b) = (
        read(t.path("full/model.safetensors")),
        read(root().join(MODEL).join("model.safetensors")),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    for (name, tb) in b.tensors() {
        let ta = a.tensor(&name).unwrap();
        assert_eq!(ta.shape(), tb.shape(), "{name}");
        if name.contains("position_embeddings")
            || name.contains("token_type")
            || name.contains("pooler")
        {
            continue; // rows never used (positions ≥ 32, type 1) or not on the prompt path
        }
        assert_ne!(ta.data(), tb.data(), "{name} did not train");
    }
    // the adapter directory reloads
    let h = t.write(
        "h.exp",
        &format!("{}let ad = load adapter(\"{}\", base=lm)\nreport evaluate(ad, movies) as \"adapter\"\n", prelude(), t.path("ad").display()),
    );
    let re = run_ok(&h, &t.opts("s"));
    assert_eq!(
        table(&re, "adapter").rows[0][3..],
        table(&o, "adapter").rows[0][3..]
    );
}

#[test]
fn merged_models_keep_every_inputs_task_head() {
    // LoRA with cls heads, folded into models, then merged: each task is still scored with its
    // own head. Task arithmetic of one model with alpha 1 is that model, so its scores match.
    let t = Scratch::new();
    let text = format!(
        "{}let ls = [train lora(lm, x, head=cls, lr=5e-3, epochs=2, batch=16) for x in [movies, topics]]\n\
         let ms = [model apply(l) for l in ls]\n\
         let one = merge task_arithmetic(lm, [ms[0]])\n\
         let both = merge task_arithmetic(lm, ms, alpha=0.5)\n\
         report evaluate([ms[0], one, ms[1], both], [movies, topics]) as \"e\"\n\
         expect measure score(one, movies) == measure score(ms[0], movies) within 1e-9\n\
         expect measure score(both, topics, split=dev) > 0.6\n",
        prelude(),
    );
    let f = t.write("h.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    let e = table(&o, "e");
    assert_eq!(e.rows.len(), 8, "{e:?}");
}

#[test]
fn training_starts_from_a_given_or_merged_delta() {
    // Zero steps from `init` give `init` back; a merged delta is a valid start; a rank
    // mismatch is an error naming both ranks.
    let t = Scratch::new();
    let text = format!(
        "{}let a = train lora(lm, movies, head=prompt, lr=5e-3, epochs=1, batch=16)\n\
         let b = train lora(lm, topics, head=prompt, lr=5e-3, epochs=1, batch=16)\n\
         let same = train lora(lm, movies, head=prompt, max_steps=0, init=a)\n\
         let merged = merge average([a, b])\n\
         let tuned = train lora(lm, movies, head=prompt, lr=5e-3, max_steps=4, batch=16, init=merged)\n\
         let p = train prefix(lm, movies, tokens=4, prefix_hidden=16, head=prompt, max_steps=2)\n\
         let p2 = train prefix(lm, movies, tokens=4, prefix_hidden=16, head=prompt, max_steps=0, init=p)\n\
         expect measure score(same, movies) == measure score(a, movies) within 1e-9\n\
         expect measure score(p2, movies) == measure score(p, movies) within 1e-9\n\
         report {{tuned: measure score(tuned, movies)}} as \"s\"\n",
        prelude(),
    );
    let f = t.write("i.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    assert!(num(table(&o, "s"), 0, "tuned") > 0.5);
    let e = bad(
        &t,
        "r.exp",
        "let a = train lora(lm, movies, head=prompt, max_steps=1)\n",
        "train lora(lm, movies, r=4, head=prompt, max_steps=1, init=a)",
    );
    assert!(
        e.contains("smelt::train::init") && e.contains("rank r 8"),
        "{e}"
    );
}

#[test]
fn weight_heatmaps_and_matrix_csv_are_written() {
    let t = Scratch::new();
    let text = format!(
        "{}let ls = [train lora(lm, x, head=prompt, max_steps=2, batch=8) for x in [movies, topics]]\n\
         let w = similarity weights(similarity loss(ls, [movies, topics], examples=8))\n\
         plot heatmap(w, title=\"softmax weights\") to \"{}\"\n\
         save w to \"{}\"\n",
        prelude(),
        t.path("w.svg").display(),
        t.path("w.csv").display(),
    );
    let f = t.write("w.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    let svg = std::fs::read_to_string(t.path("w.svg")).unwrap();
    assert!(svg.contains("softmax weights") && svg.contains("topics"));
    // The figure also lands next to the run's tables.
    assert!(o.run_dir.join("w.svg").is_file());
    let csv = std::fs::read_to_string(t.path("w.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "target,movies,topics");
    // Two tasks: each target puts all its weight on the other one.
    assert_eq!(lines[1], "movies,0,1");
    assert_eq!(lines[2], "topics,1,0");
}

#[test]
fn stdlib_leave_one_out_transfer_runs_from_merged_inits() {
    // With two tasks each target's only source is the other task's delta, so the merged init
    // is that delta itself, and zero tuning steps give it back.
    let t = Scratch::new();
    let text = format!(
        "{}use std.transfer\n\
         let ts = [movies, topics]\n\
         let ls = [train lora(lm, x, head=prompt, lr=5e-3, max_steps=3, batch=8) for x in ts]\n\
         let s = similarity loss(ls, ts, examples=8)\n\
         let inits = loo_inits(ls, ts, s)\n\
         let zero = loo_lora(lm, ls, ts, s, 1e-3, 0, 1)\n\
         let tuned = loo_lora(lm, ls, ts, s, 1e-3, 4, 2)\n\
         let random = loo_lora_random(lm, ts, 1e-3, 4, 2)\n\
         expect measure score(inits[0], movies) == measure score(ls[1], movies) within 1e-9\n\
         expect measure score(zero[1], topics) == measure score(ls[0], topics) within 1e-9\n\
         report [{{merged: measure score(tuned[i], ts[i]), random: measure score(random[i], ts[i])}}\n\
                 for i in range(2)] as \"loo\"\n",
        prelude(),
    );
    let f = t.write("loo.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    assert_eq!(table(&o, "loo").rows.len(), 2);
}

#[test]
fn stdlib_transfer_baselines_and_per_block_inits() {
    // Four tasks, two categories: the manual division of `movies` (category a, with
    // `restaurants`) is `restaurants`' delta alone; the average baseline of `movies` averages
    // the other three; a block's GraNd weights give one init per target like any score matrix.
    let t = Scratch::new();
    let r = root();
    let text = format!(
        "{}use std.transfer\n\
         let restaurants = load task(\"{}\")\n\
         let products = load task(\"{}\")\n\
         let ts = [movies, restaurants, topics, products]\n\
         let ls = [train lora(lm, x, head=prompt, lr=5e-3, max_steps=2, batch=8) for x in ts]\n\
         let manual = loo_manual_inits(ls, ts, [\"a\", \"a\", \"b\", \"b\"])\n\
         let avg = loo_average_inits(ls, ts)\n\
         let per_block = similarity grand(ls, ts, batches=1, batch=8, granularity=block)\n\
         let b1 = loo_inits(ls, ts, similarity block(per_block, 1))\n\
         let tuned = loo_lora_from(lm, b1, ts, 1e-3, 0, 1)\n\
         expect measure score(manual[0], movies) == measure score(ls[1], movies) within 1e-9\n\
         expect measure score(avg[0], movies) == measure score(merge average([ls[1], ls[2], ls[3]]), movies) within 1e-9\n\
         expect measure score(tuned[2], topics) == measure score(b1[2], topics) within 1e-9\n\
         report [measure score(b1[i], ts[i]) for i in range(4)] as \"block1\"\n",
        prelude(),
        r.join("experiments/data/restaurants").display(),
        r.join("experiments/data/products").display(),
    );
    let f = t.write("base.exp", &text);
    run_ok(&f, &t.opts("s"));
    // A target alone in its category has no sources.
    let lone = text.replace(
        "[\"a\", \"a\", \"b\", \"b\"]",
        "[\"a\", \"b\", \"b\", \"b\"]",
    );
    let f = t.write("lone.exp", &lone);
    let e = run_err(&f, &t.opts("s2"));
    assert!(
        e.contains("loo_manual_inits") || e.contains("merge average"),
        "{e}"
    );
}

/// Runs `call` (one line) after the prelude; returns the rendered error.
fn bad(t: &Scratch, name: &str, extra: &str, call: &str) -> String {
    let f = t.write(
        &format!("{name}.exp"),
        &format!(
            "{}{extra}let x = {call}\nreport evaluate(x, movies) as \"r\"\n",
            prelude()
        ),
    );
    run_err(&f, &t.opts("s"))
}

#[test]
fn bad_inputs_are_errors_with_the_call_span() {
    let t = Scratch::new();
    let model = root().join(MODEL);
    // a model directory of an architecture smelt does not know, and one without a tokenizer
    let odd = t.path("odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        odd.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        odd.join("config.json"),
        r#"{"model_type": "gpt2", "vocab_size": 8000}"#,
    )
    .unwrap();
    let notok = t.path("notok");
    std::fs::create_dir_all(&notok).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(model.join(f), notok.join(f)).unwrap();
    }
    let cases: Vec<(&str, String, String, &[&str])> = vec![
        (
            "arch",
            format!("let odd = load model(\"{}\")\n", odd.display()),
            "train lora(odd, movies)".into(),
            &["gpt2", "train lora(odd, movies)"],
        ),
        (
            "tok",
            format!("let nt = load model(\"{}\")\n", notok.display()),
            "train lora(nt, movies)".into(),
            &[
                "missing_tokenizer",
                "tokenizer.json",
                "train lora(nt, movies)",
            ],
        ),
        (
            "field",
            String::new(),
            "train lora(lm, movies, template=\"*cls**sent_0**sent_1**mask**sep+*\")".into(),
            &["sent_1", "template="],
        ),
        (
            "word",
            String::new(),
            "train lora(lm, movies, head=prompt, words=\"terrible, qwxzvbnm\")".into(),
            &["qwxzvbnm", "tokens", "words="],
        ),
        (
            "pattern",
            String::new(),
            "train lora(lm, movies, targets=[\"q_proj\"])".into(),
            &["no_match", "q_proj"],
        ),
        (
            "nan",
            String::new(),
            "train full(lm, movies, optimizer=sgd, lr=10, max_steps=30, head=cls)".into(),
            &[
                "nan_loss",
                "not finite at step",
                "lower the learning rate",
                "train full(lm",
            ],
        ),
        (
            "weights",
            String::new(),
            "train lora(lm, movies, weights=[1.0, 2.0])".into(),
            &["2 weights for 240", "weights=[1.0, 2.0]"],
        ),
    ];
    for (name, extra, call, needles) in cases {
        let e = bad(&t, name, &extra, &call);
        for n in needles {
            assert!(e.contains(n), "{name}: `{n}` missing from\n{e}");
        }
    }
}

#[test]
fn prefix_qlora_and_qadapter_train_evaluate_and_reload() {
    let t = Scratch::new();
    let text = format!(
        "{}let p = train prefix(lm, movies, tokens=8, prefix_hidden=32, lr=1e-2, epochs=2, batch=16, head=prompt)\n\
         let q = train qlora(lm, movies, bits=nf4, lr=2e-3, epochs=2, batch=16, head=prompt)\n\
         let qa = train qadapter(lm, movies, bits=int8, size=16, lr=2e-3, epochs=2, batch=16, head=prompt)\n\
         report evaluate([p, q, qa], movies, metric=[accuracy, ce_loss]) as \"peft\"\n\
         report evaluate(lm, movies, metric=[accuracy, ce_loss]) as \"base\"\n\
         save p to \"{}\"\nsave q to \"{}\"\n",
        prelude(),
        t.path("p").display(),
        t.path("q").display()
    );
    let o = run_ok(&t.write("p.exp", &text), &t.opts("s"));
    let (peft, base) = (table(&o, "peft"), table(&o, "base"));
    for r in 0..3 {
        assert!(
            num(peft, r, "ce_loss") < num(base, 0, "ce_loss"),
            "row {r}: {peft:?} vs {base:?}"
        );
    }
    // the reloaded prefix and QLoRA adapter (re-quantized base) score identically
    let text = format!(
        "{}let p = load adapter(\"{}\", base=lm)\nlet q = load adapter(\"{}\", base=lm)\nreport evaluate([p, q], movies, metric=[accuracy, ce_loss]) as \"peft\"\n",
        prelude(),
        t.path("p").display(),
        t.path("q").display()
    );
    let re = run_ok(&t.write("r.exp", &text), &t.opts("s"));
    let again = table(&re, "peft");
    for r in 0..2 {
        assert_eq!(again.rows[r][3..], peft.rows[r][3..], "row {r}");
    }
}

/// `best` over a learning-rate grid picks the candidate with the best dev score (and the
/// lowest dev loss / training loss by the other criteria); text metrics on an encoder answer
/// with the predicted label word, so EM, QA-F1 and Rouge-L equal accuracy there.
#[test]
fn best_selects_from_a_grid_and_text_metrics_score_label_words() {
    let t = Scratch::new();
    let text = format!(
        "{}let grid = [train lora(lm, movies, head=prompt, lr=lr, epochs=1, batch=16) for lr in [1e-5, 2e-3]]\n\
         let by_acc = best(grid, by=dev_accuracy)\n\
         let by_loss = best(grid, by=dev_loss)\n\
         let by_train = best(grid, by=final_loss)\n\
         let on_topics = best(grid, by=dev_accuracy, tasks=[topics])\n\
         report evaluate(grid ++ [by_acc, by_loss, by_train, on_topics], movies, split=dev, metric=[accuracy, ce_loss, em, qa_f1, rouge_l]) as \"grid\"\n\
         report evaluate(grid, topics, split=dev) as \"topics\"\n",
        prelude()
    );
    let f = t.write("best.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    let g = table(&o, "grid");
    let acc = |r| num(g, r, "accuracy");
    let loss = |r| num(g, r, "ce_loss");
    assert!(acc(0) != acc(1), "the grid should differ: {g:?}");
    let best_acc = if acc(1) > acc(0) { 1 } else { 0 };
    assert_eq!(g.rows[2][3..], g.rows[best_acc][3..], "{g:?}");
    let best_loss = if loss(1) < loss(0) { 1 } else { 0 };
    assert_eq!(g.rows[3][3..], g.rows[best_loss][3..], "{g:?}");
    assert!(g.rows[4][3..] == g.rows[0][3..] || g.rows[4][3..] == g.rows[1][3..]);
    let tp = table(&o, "topics");
    let best_topics = if num(tp, 1, "accuracy") > num(tp, 0, "accuracy") {
        1
    } else {
        0
    };
    assert_eq!(g.rows[5][3..], g.rows[best_topics][3..], "{g:?} {tp:?}");
    for r in 0..g.rows.len() {
        for m in ["em", "qa_f1", "rouge_l"] {
            assert_eq!(num(g, r, m), acc(r), "{m} on row {r}: {g:?}");
        }
    }
}

fn smollm2_dir() -> Option<PathBuf> {
    [
        std::env::var_os("SMELT_SMOLLM2").map(PathBuf::from),
        Some(root().join("../shared/smollm2")),
    ]
    .into_iter()
    .flatten()
    .find(|d| d.join("config.json").is_file())
}

/// A decoder generates its answer greedily for the text metrics: SmolLM2 completes "The
/// capital of France is" with " Paris." (the assets' reference generation), which is an exact
/// match for the answer "Paris" and not for "Rome"; QA-F1 and Rouge-L are never below EM.
#[test]
fn decoder_answers_are_generated_for_text_metrics() {
    let Some(dir) = smollm2_dir() else {
        println!("SKIPPED decoder_answers_are_generated_for_text_metrics: set SMELT_SMOLLM2=DIR (built by shared/assets/scripts/get-smollm2.sh DIR f16)");
        return;
    };
    let t = Scratch::new();
    let task = t.path("capitals");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("labels.json"),
        r#"{"labels":["Paris","Rome"],"pair":false}"#,
    )
    .unwrap();
    let lines = "{\"text\":\"The capital of France is\",\"label\":0}\n{\"text\":\"The capital of France is\",\"label\":1}\n";
    for split in ["train", "test"] {
        std::fs::write(task.join(format!("{split}.jsonl")), lines).unwrap();
    }
    let text = format!(
        "let lm = load model(\"{}\")\nlet t = load task(\"{}\")\n\
         report evaluate(lm, t, template=\"{{text}} ||| {{answer}}\", metric=[em, qa_f1, rouge_l, accuracy], max_new=4) as \"gen\"\n",
        dir.display(),
        task.display()
    );
    let f = t.write("gen.exp", &text);
    let o = run_ok(&f, &t.opts("s"));
    let g = table(&o, "gen");
    assert_eq!(num(g, 0, "em"), 0.5, "{g:?}");
    assert_eq!(num(g, 0, "qa_f1"), 0.5, "{g:?}");
    assert_eq!(num(g, 0, "rouge_l"), 0.5, "{g:?}");
}
