//! Matching call arguments to declared parameters — shared by the checker (which reports
//! problems) and the evaluator (which trusts a checked program).
//!
//! Rules: positional arguments first, then named ones; a named argument may not repeat or name
//! a parameter already given positionally; every parameter without a default must be given.

use crate::diag::Diagnostic;
use crate::source::Span;
use crate::syntax::ast::{Arg, Expr};

/// A parameter as seen by the matcher.
pub struct ParamSpec<'a> {
    pub name: &'a str,
    pub has_default: bool,
}

impl ParamSpec<'static> {
    /// The parameters of an operator signature.
    pub fn of_signature(sig: &crate::sig::Signature) -> Vec<ParamSpec<'static>> {
        sig.params
            .iter()
            .map(|p| ParamSpec {
                name: p.name,
                has_default: p.default.is_some(),
            })
            .collect()
    }
}

impl<'a> ParamSpec<'a> {
    /// The parameters of a `def`.
    pub fn of_def(params: &'a [crate::syntax::ast::DefParam]) -> Vec<ParamSpec<'a>> {
        params
            .iter()
            .map(|p| ParamSpec {
                name: &p.name.name,
                has_default: p.default.is_some(),
            })
            .collect()
    }
}

/// For each parameter, the argument expression given for it (if any), plus diagnostics.
pub fn match_args<'e>(
    callee: &str,
    params: &[ParamSpec<'_>],
    args: &'e [Arg],
    call_span: Span,
    usage: &str,
) -> (Vec<Option<&'e Expr>>, Vec<Diagnostic>) {
    let mut slots: Vec<Option<&Expr>> = vec![None; params.len()];
    let mut given_at: Vec<Option<Span>> = vec![None; params.len()];
    let mut diags = Vec::new();
    let mut seen_named = false;
    let mut positional = 0;
    for arg in args {
        match &arg.name {
            None => {
                if seen_named {
                    diags.push(
                        Diagnostic::error(
                            "smelt::check::positional_after_named",
                            format!("positional argument after named arguments in `{callee}`"),
                            arg.span,
                        )
                        .with_label("positional argument")
                        .with_help(format!(
                            "name it, or move it before the named ones: {usage}"
                        )),
                    );
                    continue;
                }
                if positional >= params.len() {
                    diags.push(
                        Diagnostic::error(
                            "smelt::check::extra_argument",
                            format!(
                                "`{callee}` takes at most {} argument{}",
                                params.len(),
                                if params.len() == 1 { "" } else { "s" }
                            ),
                            arg.span,
                        )
                        .with_label("extra argument")
                        .with_help(format!("usage: {usage}")),
                    );
                } else {
                    slots[positional] = Some(&arg.value);
                    given_at[positional] = Some(arg.span);
                }
                positional += 1;
            }
            Some(name) => {
                seen_named = true;
                match params.iter().position(|p| p.name == name.name) {
                    None => {
                        let names: Vec<&str> = params.iter().map(|p| p.name).collect();
                        let mut d = Diagnostic::error(
                            "smelt::check::unknown_param",
                            format!("`{callee}` has no parameter `{}`", name.name),
                            name.span,
                        )
                        .with_label("unknown parameter");
                        d = match did_you_mean(&name.name, names.iter().copied()) {
                            Some(s) => d.with_help(format!("did you mean `{s}`? usage: {usage}")),
                            None => d.with_help(format!("usage: {usage}")),
                        };
                        diags.push(d);
                    }
                    Some(i) => {
                        if let Some(first) = given_at[i] {
                            diags.push(
                                Diagnostic::error(
                                    "smelt::check::duplicate_param",
                                    format!("parameter `{}` is given twice", name.name),
                                    arg.span,
                                )
                                .with_label("given again here")
                                .with_secondary(first, "first given here")
                                .with_help("remove one of them"),
                            );
                        } else {
                            slots[i] = Some(&arg.value);
                            given_at[i] = Some(arg.span);
                        }
                    }
                }
            }
        }
    }
    // After a misplaced positional argument, "missing" reports would only repeat the problem.
    let misplaced = diags
        .iter()
        .any(|d| d.code == "smelt::check::positional_after_named");
    for (i, p) in params.iter().enumerate() {
        if slots[i].is_none() && !p.has_default && !misplaced {
            diags.push(
                Diagnostic::error(
                    "smelt::check::missing_param",
                    format!("`{callee}` needs the argument `{}`", p.name),
                    call_span,
                )
                .with_label(format!("`{}` missing", p.name))
                .with_help(format!("usage: {usage}")),
            );
        }
    }
    (slots, diags)
}

/// The closest candidate by Jaro–Winkler / edit distance, if it is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        if c == word {
            continue;
        }
        let jw = strsim::jaro_winkler(word, c);
        let lev = strsim::levenshtein(word, c);
        let ok = jw >= 0.8 || lev <= (word.len().max(c.len()) / 3).max(1);
        if ok && best.is_none_or(|(_, s)| jw > s) {
            best = Some((c, jw));
        }
    }
    best.map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("mrege", ["merge", "load", "train"]),
            Some("merge")
        );
        assert_eq!(did_you_mean("delta", ["delta0", "alpha"]), Some("delta0"));
        assert_eq!(did_you_mean("zzz", ["merge", "load"]), None);
    }
}
