//! Integration tests for `smelt::tensors`: the real MiniLM model, writer round trips (single and
//! sharded), streaming merges, and hostile files that must give the right error code, not panic.

use smelt::diag::OpError;
use smelt::tensors::merge::mean;
use smelt::tensors::{
    merge_streaming, read_header, Dtype, ModelDir, SafetensorsWriter, WriterOptions,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MINILM: &str = "/work/shared/assets/models/minilm-l3-v8k";
const CORRUPT: &str = "smelt::io::corrupt_safetensors";
const INCOMPATIBLE: &str = "smelt::check::incompatible_models";

type Spec = (String, Dtype, Vec<usize>);

fn minilm() -> Option<ModelDir> {
    Path::new(MINILM)
        .is_dir()
        .then(|| ModelDir::open(MINILM).unwrap())
}

/// Write a small f32 model (`config.json` + weights) whose values derive from `seed`.
fn small_model(dir: &Path, specs: &[Spec], seed: f32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"vocab_size": 4}"#).unwrap();
    let mut w = SafetensorsWriter::create(
        &dir.join("model.safetensors"),
        specs,
        WriterOptions::default(),
    )
    .unwrap();
    let mut sorted = specs.to_vec();
    sorted.sort();
    for (name, _, shape) in &sorted {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|i| seed * (i as f32 + 1.0) - 0.5).collect();
        w.write_f32(name, &vals).unwrap();
    }
    w.finish().unwrap();
}

fn specs() -> Vec<Spec> {
    vec![
        ("emb".into(), Dtype::F32, vec![4, 3]),
        ("layer.0.w".into(), Dtype::F32, vec![3, 3]),
        ("layer.0.b".into(), Dtype::F32, vec![3]),
    ]
}

/// A file with the given 8-byte length prefix, header text and data bytes.
fn raw_file(dir: &Path, name: &str, len: u64, header: &str, data: usize) -> PathBuf {
    let p = dir.join(name);
    let mut b = len.to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data, 0);
    std::fs::write(&p, b).unwrap();
    p
}

/// A file whose length prefix matches `header`.
fn exact(dir: &Path, name: &str, header: &str, data: usize) -> PathBuf {
    raw_file(dir, name, header.len() as u64, header, data)
}

fn code(r: Result<impl std::fmt::Debug, OpError>) -> &'static str {
    let e = r.unwrap_err();
    assert!(e.help.is_some(), "{e:?} has no help");
    e.code
}

#[test]
fn reads_real_minilm_header_and_values() {
    let Some(m) = minilm() else { return };
    let h = read_header(&Path::new(MINILM).join("model.safetensors")).unwrap();
    assert_eq!(h.tensors.len(), 53);
    assert_eq!(h.metadata["format"], "pt");
    assert_eq!(
        h.tensors["embeddings.word_embeddings.weight"].shape,
        vec![8192, 384]
    );
    assert_eq!(
        h.tensors["embeddings.word_embeddings.weight"].dtype,
        Dtype::F16
    );
    assert_eq!(m.tensors().len(), 53);
    assert_eq!(m.vocab_size(), Some(8192));
    assert!(m.has_tokenizer());
    assert!(m.side_files().iter().any(|p| p.ends_with("vocab.txt")));
    let dev = candle_core::Device::Cpu;
    let all =
        candle_core::safetensors::load(Path::new(MINILM).join("model.safetensors"), &dev).unwrap();
    for name in [
        "embeddings.word_embeddings.weight",
        "encoder.layer.2.output.LayerNorm.bias",
    ] {
        let want: Vec<f32> = all[name]
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(m.read_f32(name).unwrap(), want, "{name}");
        let t = m.read_tensor(name, &dev).unwrap();
        assert_eq!(t.dims(), all[name].dims());
    }
}

#[test]
fn writer_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    let specs: Vec<Spec> = vec![
        ("x".into(), Dtype::F32, vec![2, 3]),
        ("h".into(), Dtype::F16, vec![4]),
    ];
    let meta = BTreeMap::from([("merge".to_string(), "ties".to_string())]);
    let mut w = SafetensorsWriter::create(
        &p,
        &specs,
        WriterOptions {
            metadata: meta,
            ..Default::default()
        },
    )
    .unwrap();
    let x = [0.1f32, -2.0, 3.5, 1e-7, 7.0, -0.0];
    let h = [0.5f32, -1.25, 2048.0, 0.0];
    w.write_f32("h", &h).unwrap();
    w.write_f32("x", &x).unwrap();
    w.finish().unwrap();
    let m = ModelDir::open(&p).unwrap();
    assert_eq!(m.read_f32("x").unwrap(), x);
    assert_eq!(m.read_f32("h").unwrap(), h);
    assert_eq!(m.metadata()["merge"], "ties");
    // candle (another reader) agrees.
    let t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["h"].dtype(), candle_core::DType::F16);
    assert_eq!(t["x"].flatten_all().unwrap().to_vec1::<f32>().unwrap(), x);
}

#[test]
fn sharded_write_reads_back_through_index() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<Spec> = (0..5)
        .map(|i| (format!("t{i}"), Dtype::F32, vec![10]))
        .collect();
    let opts = WriterOptions {
        max_shard_bytes: 80,
        ..Default::default()
    };
    let mut w =
        SafetensorsWriter::create(&dir.path().join("model.safetensors"), &specs, opts).unwrap();
    for i in 0..5 {
        w.write_f32(&format!("t{i}"), &[i as f32; 10]).unwrap();
    }
    let written = w.finish().unwrap();
    assert_eq!(written.files.len(), 4); // 3 shards of ≤ 2 tensors + index
    assert!(dir
        .path()
        .join("model-00001-of-00003.safetensors")
        .is_file());
    assert!(!dir.path().join("model.safetensors").exists());
    let m = ModelDir::open(dir.path()).unwrap();
    assert_eq!(m.shards().len(), 3);
    assert!(m.index_path().is_some());
    for i in 0..5 {
        assert_eq!(m.read_f32(&format!("t{i}")).unwrap(), vec![i as f32; 10]);
    }
}

#[test]
fn merge_identity_is_bit_exact_and_mean_is_mean() {
    let d = tempfile::tempdir().unwrap();
    small_model(&d.path().join("a"), &specs(), 0.37);
    small_model(&d.path().join("b"), &specs(), -1.3);
    let a = ModelDir::open(d.path().join("a")).unwrap();
    let b = ModelDir::open(d.path().join("b")).unwrap();
    let out = d.path().join("same");
    merge_streaming(&[&a], &out, Dtype::F32, BTreeMap::new(), &mut |_, v| {
        Ok(v[0].clone())
    })
    .unwrap();
    let same = ModelDir::open(&out).unwrap();
    for name in a.tensors().keys() {
        let (x, y) = (a.read_f32(name).unwrap(), same.read_f32(name).unwrap());
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name}"
        );
    }
    let meta = BTreeMap::from([("smelt.op".to_string(), "mean".to_string())]);
    let out = d.path().join("mean");
    let stats =
        merge_streaming(&[&a, &b], &out, Dtype::F32, meta, &mut |_, v| Ok(mean(v))).unwrap();
    assert_eq!(stats.tensors, 3);
    let avg = ModelDir::open(&out).unwrap();
    assert_eq!(avg.metadata()["smelt.op"], "mean");
    for name in a.tensors().keys() {
        let (x, y, z) = (
            a.read_f32(name).unwrap(),
            b.read_f32(name).unwrap(),
            avg.read_f32(name).unwrap(),
        );
        for i in 0..x.len() {
            assert_eq!(z[i], (x[i] + y[i]) * 0.5, "{name}[{i}]");
        }
    }
}

#[test]
fn merge_of_real_model_keeps_config_and_tokenizer() {
    let Some(m) = minilm() else { return };
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    merge_streaming(&[&m, &m], &out, Dtype::F16, BTreeMap::new(), &mut |_, v| {
        Ok(mean(v))
    })
    .unwrap();
    let o = ModelDir::open(&out).unwrap();
    assert!(o.has_tokenizer());
    assert_eq!(o.config().unwrap()["torch_dtype"], "float16");
    let name = "encoder.layer.0.attention.self.query.weight";
    assert_eq!(o.read_raw(name).unwrap(), m.read_raw(name).unwrap());
    m.check_compatible(&o).unwrap();
}

#[test]
fn hostile_files_give_corrupt_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let ok_entry = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let cases: Vec<(PathBuf, &str)> = vec![
        (raw_file(p, "empty", 0, "", 0), "empty"),
        (
            {
                std::fs::write(p.join("three"), [1u8, 2, 3]).unwrap();
                p.join("three")
            },
            "3-byte",
        ),
        (
            raw_file(p, "long", 1000, ok_entry, 8),
            "header longer than file",
        ),
        (
            raw_file(p, "huge", 1 << 63, ok_entry, 8),
            "header length 2^63",
        ),
        (raw_file(p, "json", 9, "{\"a\": [1,", 8), "invalid JSON"),
        (exact(p, "oob", ok_entry, 4), "offsets out of bounds"),
        (
            exact(
                p,
                "len",
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
            "length mismatch",
        ),
        (
            exact(
                p,
                "dtype",
                r#"{"a":{"dtype":"Q4K","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
            "unknown dtype",
        ),
        (
            exact(
                p,
                "overlap",
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            "overlap",
        ),
    ];
    for (path, what) in &cases {
        let e = read_header(path).unwrap_err();
        assert_eq!(e.code, CORRUPT, "{what}: {e:?}");
        assert!(
            e.message.contains(&*path.to_string_lossy()),
            "{what}: message must name the file"
        );
        assert_eq!(code(ModelDir::open(path)), CORRUPT, "{what} via ModelDir");
    }
    assert_eq!(
        code(read_header(&p.join("nope.safetensors"))),
        "smelt::io::missing_file"
    );
    assert_eq!(
        code(ModelDir::open(p.join("no-such-dir"))),
        "smelt::io::missing_file"
    );
}

#[test]
fn incompatible_pairs_are_named() {
    let d = tempfile::tempdir().unwrap();
    small_model(&d.path().join("a"), &specs(), 1.0);
    let mut reshaped = specs();
    reshaped[1].2 = vec![9];
    small_model(&d.path().join("b"), &reshaped, 1.0);
    let missing = specs()[..2].to_vec();
    small_model(&d.path().join("c"), &missing, 1.0);
    let [a, b, c] = ["a", "b", "c"].map(|n| ModelDir::open(d.path().join(n)).unwrap());
    let e = a.check_compatible(&b).unwrap_err();
    assert_eq!(e.code, INCOMPATIBLE);
    assert!(
        e.message.contains("layer.0.w") && e.message.contains("[3, 3]"),
        "{}",
        e.message
    );
    let e = a.check_compatible(&c).unwrap_err();
    assert_eq!(e.code, INCOMPATIBLE);
    assert!(
        e.message.contains("layer.0.b") && e.message.contains("missing"),
        "{}",
        e.message
    );
    assert_eq!(code(c.check_compatible(&a)), INCOMPATIBLE);
    let r = merge_streaming(
        &[&a, &b],
        &d.path().join("out"),
        Dtype::F32,
        BTreeMap::new(),
        &mut |_, v| Ok(mean(v)),
    );
    assert_eq!(code(r), INCOMPATIBLE);
    assert!(!d.path().join("out").exists());
    // Vocabulary size mismatch.
    std::fs::write(d.path().join("c/config.json"), r#"{"vocab_size": 5}"#).unwrap();
    let c = ModelDir::open(d.path().join("c")).unwrap();
    assert!(a
        .check_compatible(&c)
        .unwrap_err()
        .message
        .contains("vocabulary"));
}
