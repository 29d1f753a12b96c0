//! Tensor-name filters shared by every model merge: `include=[…]`, `exclude=[…]`, `partial=…`.
//!
//! A merge combines the tensors its filters select and copies every other tensor unchanged from
//! its reference input (the base, or the first model when there is no base); the streaming
//! engine passes those through without decoding the other inputs (see
//! [`crate::tensors::merge`]). A tensor is selected when `include` is empty or one of its
//! patterns matches the name, and no `exclude` pattern matches it.
//!
//! Pattern syntax (tensor names are `.`-separated, e.g. `encoder.layer.0.attention.self.query.weight`):
//! - a plain pattern matches when its `.`-separated parts occur as consecutive *whole*
//!   components of the name: `query` selects every `….query.weight`/`….query.bias`,
//!   `layer.1` selects `encoder.layer.1.…` but not `encoder.layer.10.…`, `bias` every bias;
//! - a pattern with `*` is a glob over the **whole** name, `*` matching any run of characters
//!   (dots included): `*.bias`, `encoder.layer.1*`, `*attention*`;
//! - `re:<regex>` is a regular expression that must match the whole name (the matcher of
//!   PEFT `target_modules`, [`crate::nn::peft::pattern`]).
//!
//! Every pattern must match at least one tensor of the inputs, and the filters together must
//! select at least one tensor: both mistakes are errors naming the pattern, raised by
//! `smelt check` when the inputs' headers are at hand and again when the merge runs.

use crate::diag::OpError;
use crate::nn::peft::ModulePattern;
use crate::ops::{Args, Const, Param};
use crate::tensors::merge::Partial;
use crate::types::Ty;
use crate::value::Value;

/// `include=[patterns]`: merge only the tensors these select (empty: all).
pub const INCLUDE_PARAM: Param = Param::opt(
    "include",
    Ty::List(&Ty::Str),
    Const::EmptyList,
    "Merge only tensors matching one of these patterns (empty: all); the rest are copied from \
     the base. `query` matches whole name components, `*.bias` is a glob, `re:…` a full-match regex.",
);

/// `exclude=[patterns]`: copy the tensors these select from the base instead of merging them.
pub const EXCLUDE_PARAM: Param = Param::opt(
    "exclude",
    Ty::List(&Ty::Str),
    Const::EmptyList,
    "Copy tensors matching one of these patterns from the base instead of merging them (same \
     pattern syntax as `include`).",
);

/// `partial=error|base|skip`: tensors that only some inputs have.
pub const PARTIAL_PARAM: Param = Param::opt(
    "partial",
    Ty::Enum(&Partial::NAMES),
    Const::Str("error"),
    "Tensors not in every input: `error` refuses the merge and lists them, `base` copies them \
     from the base (dropping those the base lacks), `skip` leaves them out of the result.",
);

const NO_MATCH: &str = "smelt::check::no_match";

/// One parsed tensor-name pattern.
#[derive(Debug, Clone)]
enum Pattern {
    /// Consecutive whole `.`-components.
    Components(Vec<String>),
    /// Whole-name glob with `*`.
    Glob(String),
    Regex(ModulePattern),
}

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, OpError> {
        if p.starts_with("re:") {
            return Ok(Pattern::Regex(ModulePattern::parse(p)?));
        }
        if p.contains('*') {
            return Ok(Pattern::Glob(p.to_string()));
        }
        let parts: Vec<String> = p.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(OpError::new(
                "smelt::check::bad_pattern",
                format!("`{p}` is not a tensor name pattern"),
            )
            .with_help(
                "use name components such as `query` or `layer.0`, a glob such as `*.bias`, \
                 or `re:<regex>`",
            ));
        }
        Ok(Pattern::Components(parts))
    }

    fn matches(&self, name: &str) -> Result<bool, OpError> {
        Ok(match self {
            Pattern::Components(parts) => {
                let comps: Vec<&str> = name.split('.').collect();
                comps.len() >= parts.len()
                    && comps
                        .windows(parts.len())
                        .any(|w| w.iter().zip(parts).all(|(a, b)| *a == b))
            }
            Pattern::Glob(g) => glob(g.as_bytes(), name.as_bytes()),
            Pattern::Regex(re) => re.matches(name)?,
        })
    }
}

/// Whole-string glob where `*` matches any (possibly empty) run of bytes. Linear-time greedy
/// matching with backtracking to the last star.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == s[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// Which tensors a merge combines (built by [`name_filter`]).
#[derive(Debug, Clone, Default)]
pub struct NameFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl NameFilter {
    /// The filter that selects every tensor.
    pub fn all() -> NameFilter {
        NameFilter::default()
    }

    /// True when no pattern was given (every tensor is selected).
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the merge combines tensor `name` (otherwise it is copied from the base).
    pub fn selects(&self, name: &str) -> bool {
        let hit = |ps: &[Pattern]| ps.iter().any(|p| p.matches(name).unwrap_or(false));
        (self.include.is_empty() || hit(&self.include)) && !hit(&self.exclude)
    }
}

/// The string list of an optional argument (absent when the operator does not declare it).
fn patterns(args: &Args, param: &str) -> Result<Vec<String>, OpError> {
    let Some((_, v)) = args.values.iter().find(|(n, _)| *n == param) else {
        return Ok(Vec::new());
    };
    let items = match v {
        Value::None => return Ok(Vec::new()),
        v => v.as_list().ok_or_else(|| bad_arg(param, v))?,
    };
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad_arg(param, v))
        })
        .collect()
}

fn bad_arg(param: &str, v: &Value) -> OpError {
    OpError::new(
        "smelt::run::argument",
        format!(
            "argument `{param}` should be a list of name patterns, got {}",
            v.display()
        ),
    )
}

/// Build the filter of a merge from its `include`/`exclude` arguments (missing ones count as
/// empty) and check it against `names`, the tensor names of the merge's inputs: a pattern that
/// matches none of them, or filters that select none of them, are errors naming the pattern.
pub fn name_filter(args: &Args, names: &[String]) -> Result<NameFilter, OpError> {
    let mut filter = NameFilter::default();
    for (param, list) in [
        ("include", &mut filter.include),
        ("exclude", &mut filter.exclude),
    ] {
        for src in patterns(args, param)? {
            let p = Pattern::parse(&src)?;
            let mut any = false;
            for n in names {
                if p.matches(n)? {
                    any = true;
                    break;
                }
            }
            if !any {
                return Err(OpError::new(
                    NO_MATCH,
                    format!("{param} pattern `{src}` matches no tensor of the inputs"),
                )
                .with_help(examples(names)));
            }
            list.push(p);
        }
    }
    if !filter.is_all() && !names.iter().any(|n| filter.selects(n)) {
        return Err(OpError::new(
            NO_MATCH,
            "the include/exclude patterns together select no tensor to merge",
        )
        .with_help(examples(names)));
    }
    Ok(filter)
}

fn examples(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(6).map(String::as_str).collect();
    format!(
        "tensor names look like: {}{} (a plain pattern matches whole `.`-separated components, \
         `*` globs the whole name, `re:` patterns must match the whole name)",
        shown.join(", "),
        if names.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    )
}

/// The `partial=` policy of a merge (`error` when the operator does not declare the parameter).
pub fn partial_policy(args: &Args) -> Result<Partial, OpError> {
    let Some((_, v)) = args.values.iter().find(|(n, _)| *n == "partial") else {
        return Ok(Partial::Error);
    };
    v.as_str().and_then(Partial::parse).ok_or_else(|| {
        OpError::new(
            "smelt::run::argument",
            format!(
                "argument `partial` should be one of error, base, skip; got {}",
                v.display()
            ),
        )
    })
}

/// `include=…, exclude=…, partial=…` as written into a merged model's provenance.
pub fn describe(args: &Args) -> Result<String, OpError> {
    let quote = |v: Vec<String>| format!("{v:?}");
    Ok(format!(
        "include={}, exclude={}, partial={}",
        quote(patterns(args, "include")?),
        quote(patterns(args, "exclude")?),
        Partial::NAMES[partial_policy(args)? as usize]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "classifier.bias",
            "classifier.weight",
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.1.attention.self.query.bias",
            "encoder.layer.10.output.dense.weight",
            "embeddings.word_embeddings.weight",
        ]
        .map(String::from)
        .to_vec()
    }

    fn args(include: &[&str], exclude: &[&str]) -> Args {
        let list = |xs: &[&str]| Value::list(xs.iter().map(Value::str).collect());
        Args::new(vec![("include", list(include)), ("exclude", list(exclude))])
    }

    fn selected(include: &[&str], exclude: &[&str]) -> Vec<String> {
        let f = name_filter(&args(include, exclude), &names()).unwrap();
        names().into_iter().filter(|n| f.selects(n)).collect()
    }

    #[test]
    fn components_globs_and_regexes() {
        assert_eq!(selected(&[], &[]), names());
        assert_eq!(selected(&["classifier"], &[]), names()[..2].to_vec());
        // `layer.1` is component-bounded: not `layer.10`.
        assert_eq!(selected(&["layer.1"], &[]), vec![names()[3].clone()]);
        // A glob spans dots and must cover the whole name.
        assert_eq!(
            selected(&["encoder.layer.1*"], &[]),
            vec![names()[3].clone(), names()[4].clone()]
        );
        assert_eq!(
            selected(&["*.bias"], &[]),
            vec![names()[0].clone(), names()[3].clone()]
        );
        assert_eq!(
            selected(&[r"re:encoder\.layer\.\d+\..*weight"], &[]),
            vec![names()[2].clone(), names()[4].clone()]
        );
        // Exclude wins over include.
        assert_eq!(selected(&["encoder"], &["query"]), vec![names()[4].clone()]);
        assert_eq!(selected(&[], &["classifier", "embeddings"]), names()[2..5]);
    }

    #[test]
    fn glob_matcher() {
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a**", b"a"));
        assert!(!glob(b"a*c", b"abcd"));
        assert!(glob(b"*b*b", b"abab"));
        assert!(!glob(b"*b*b", b"abba.a"));
    }

    #[test]
    fn patterns_that_match_nothing_are_named() {
        let e = name_filter(&args(&["decoder"], &[]), &names()).unwrap_err();
        assert_eq!(e.code, NO_MATCH);
        assert!(e.message.contains("`decoder`"), "{}", e.message);
        assert!(e.help.unwrap().contains("classifier.bias"));
        let e = name_filter(&args(&[], &["*.gamma"]), &names()).unwrap_err();
        assert!(
            e.message.contains("exclude pattern `*.gamma`"),
            "{}",
            e.message
        );
        // Each pattern matches, but together they leave nothing to merge.
        let e = name_filter(&args(&["classifier"], &["classifier"]), &names()).unwrap_err();
        assert!(e.message.contains("select no tensor"), "{}", e.message);
        let e = name_filter(&args(&["layer..0"], &[]), &names()).unwrap_err();
        assert_eq!(e.code, "smelt::check::bad_pattern");
    }

    #[test]
    fn missing_parameters_mean_no_filter_and_strict_partial() {
        let a = Args::new(vec![]);
        assert!(name_filter(&a, &names()).unwrap().is_all());
        assert_eq!(partial_policy(&a).unwrap(), Partial::Error);
        let a = Args::new(vec![("partial", Value::str("skip"))]);
        assert_eq!(partial_policy(&a).unwrap(), Partial::Skip);
        let a = Args::new(vec![("partial", Value::str("maybe"))]);
        assert!(partial_policy(&a).is_err());
        assert_eq!(
            describe(&args(&["a"], &[])).unwrap(),
            "include=[\"a\"], exclude=[], partial=error"
        );
    }
}
