//! The "expected …" list: which of the rules pest tried to name, and how each one reads.
//!
//! pest lists every rule it tried at the error position, including operators that could only
//! have continued an expression that was already complete; listing those ("expected `+`, `*`,
//! `==`, …") hides what is actually missing, so they are dropped when anything else is there.

use super::super::Rule;

/// The rules to list as expected (most specific first, closing brackets last) and their
/// readable names without repeats.
pub(super) fn expected(positives: &[Rule]) -> (Vec<Rule>, Vec<&'static str>) {
    let mut main: Vec<Rule> = positives
        .iter()
        .copied()
        .filter(|r| !is_continuation(*r) && *r != Rule::EOI)
        .collect();
    if main.is_empty() {
        main = if positives.contains(&Rule::EOI) {
            vec![Rule::EOI]
        } else {
            positives.to_vec()
        };
    }
    // Closing brackets read best last: "expected `,` or `)`".
    main.sort_by_key(|r| matches!(r, Rule::rparen | Rule::rbracket | Rule::rbrace | Rule::gt));
    let mut names: Vec<&str> = Vec::new();
    for r in &main {
        let d = describe(*r);
        if !names.contains(&d) {
            names.push(d);
        }
    }
    (main, names)
}

/// `a, b, or c`.
pub(super) fn join_or(items: &[&str]) -> String {
    match items {
        [] => "something else".into(),
        [a] => (*a).into(),
        [a, b] => format!("{a} or {b}"),
        [rest @ .., last] => format!("{}, or {last}", rest.join(", ")),
    }
}

/// Rules that could only have continued something already complete (an operator after an
/// operand, an optional trailing clause). They are left out of "expected …" when anything
/// else was expected at the same place.
fn is_continuation(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::add_op
            | Rule::mul_op
            | Rule::cmp_op
            | Rule::op_or
            | Rule::op_and
            | Rule::dot
            | Rule::field_access
            | Rule::index
            | Rule::index_open
            | Rule::call_open
            | Rule::arg_assign
            | Rule::kw_as
            | Rule::kw_within
            | Rule::kw_plot_to
            | Rule::kw_if
            | Rule::kw_for
            | Rule::comp_tail
            | Rule::semi
    )
}

/// How an expected rule reads in "expected …".
fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of input",
        Rule::file | Rule::repl_line | Rule::stmt => "a statement",
        Rule::let_stmt | Rule::block_let | Rule::kw_let => "`let`",
        Rule::def_stmt | Rule::kw_def | Rule::doc_block | Rule::doc_line => "`def`",
        Rule::use_stmt | Rule::kw_use => "`use`",
        Rule::import_stmt | Rule::kw_import => "`import`",
        Rule::config_stmt | Rule::kw_config => "`config`",
        Rule::report_stmt | Rule::kw_report => "`report`",
        Rule::save_stmt | Rule::kw_save => "`save`",
        Rule::plot_stmt | Rule::plot_call | Rule::kw_plot => "`plot`",
        Rule::expect_stmt | Rule::kw_expect => "`expect`",
        Rule::kw_as => "`as`",
        Rule::kw_to | Rule::kw_plot_to => "`to`",
        Rule::kw_within => "`within`",
        Rule::kw_for | Rule::comp_tail => "`for`",
        Rule::kw_in => "`in`",
        Rule::kw_if => "`if`",
        Rule::ident => "a name",
        Rule::param => "a parameter",
        Rule::type_expr => "a type",
        Rule::pattern => "a loop variable",
        Rule::field_init => "a field `name: value`",
        Rule::arg => "an argument",
        Rule::string | Rule::str_inner => "a string",
        Rule::str_close => "`\"`",
        Rule::block => "`{`",
        Rule::expr_only
        | Rule::expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::cmp_expr
        | Rule::add_expr
        | Rule::mul_expr
        | Rule::unary
        | Rule::postfix
        | Rule::float
        | Rule::int
        | Rule::bool_lit
        | Rule::none_lit
        | Rule::list
        | Rule::record
        | Rule::paren
        | Rule::op_call
        | Rule::op_callee
        | Rule::call => "an expression",
        Rule::op_or => "`or`",
        Rule::op_and => "`and`",
        Rule::op_not => "`not`",
        Rule::cmp_op => "a comparison",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::neg => "`-`",
        Rule::field_access | Rule::dot => "`.`",
        Rule::index | Rule::index_open | Rule::lbracket => "`[`",
        Rule::lparen | Rule::call_open => "`(`",
        Rule::rparen => "`)`",
        Rule::rbracket => "`]`",
        Rule::lbrace => "`{`",
        Rule::rbrace => "`}`",
        Rule::comma => "`,`",
        Rule::colon => "`:`",
        Rule::semi => "`;`",
        Rule::lt => "`<`",
        Rule::gt => "`>`",
        Rule::assign | Rule::arg_assign => "`=`",
        // Silent rules never appear in errors.
        Rule::WHITESPACE
        | Rule::COMMENT
        | Rule::hspace
        | Rule::doc_sep
        | Rule::doc_before_def
        | Rule::ident_char
        | Rule::ident_raw
        | Rule::op_head
        | Rule::keyword
        | Rule::primary
        | Rule::digits
        | Rule::exponent
        | Rule::params
        | Rule::args => "something else",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_or_reads_as_a_list() {
        assert_eq!(join_or(&[]), "something else");
        assert_eq!(join_or(&["`)`"]), "`)`");
        assert_eq!(join_or(&["`,`", "`)`"]), "`,` or `)`");
        assert_eq!(join_or(&["a", "b", "c"]), "a, b, or c");
    }

    #[test]
    fn continuations_are_dropped_and_closers_go_last() {
        let (main, names) = expected(&[Rule::rparen, Rule::add_op, Rule::comma, Rule::EOI]);
        assert_eq!(main, [Rule::comma, Rule::rparen]);
        assert_eq!(names, ["`,`", "`)`"]);
        let (_, names) = expected(&[Rule::add_op, Rule::EOI]);
        assert_eq!(names, ["end of input"]);
        let (_, names) = expected(&[Rule::add_op, Rule::mul_op]);
        assert_eq!(names, ["an operator"]);
    }
}
