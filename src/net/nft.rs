//! The nftables JSON expression and match builders that the anti-spoof ([`super::antispoof`])
//! and masquerade ([`super::masquerade`]) rule sets are written with.

use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::stmt::{Match, Operator, Statement};
use std::borrow::Cow;

/// A header field, `ip saddr`-style.
pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// A string (or address) operand.
pub(super) fn text(v: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

pub(super) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, right, Operator::EQ)
}

pub(super) fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, right, Operator::NEQ)
}

fn matches(
    left: Expression<'static>,
    right: Expression<'static>,
    op: Operator,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}
