//! Element and attribute access for the domain XML reader: children,
//! text, numbers, id sets and sizes, each failing with an error that names
//! the element, attribute and value at fault.

use std::str::FromStr;

use roxmltree::Node;

use super::{DomainXmlError, Invalid, MAX_MEMORY_KIB, Result};
use crate::idset::IdSet;
use crate::units::{self, Round};

/// Whether `node` is a libvirt element called `name`. libvirt's own elements
/// carry no namespace; a namespaced element of the same local name belongs
/// to someone else.
pub(super) fn is_libvirt(node: &Node, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace().is_none() && node.tag_name().name() == name
}

/// The first child called `name`, which is what libvirt reads (`./name[1]`)
/// when an element that may appear once is repeated.
pub(super) fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| is_libvirt(n, name))
}

pub(super) fn children<'a, 'i>(
    node: Node<'a, 'i>,
    name: &str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(move |n| is_libvirt(n, name))
}

pub(super) fn text<'a>(node: Node<'a, '_>) -> &'a str {
    node.text().unwrap_or("")
}

pub(super) fn problem(
    node: Node,
    attribute: Option<&str>,
    value: Option<&str>,
    message: impl Into<String>,
) -> DomainXmlError {
    let pos = node.document().text_pos_at(node.range().start);
    DomainXmlError::Invalid(Box::new(Invalid {
        line: pos.row,
        column: pos.col,
        element: node.tag_name().name().to_string(),
        attribute: attribute.map(str::to_string),
        value: value.map(str::to_string),
        message: message.into(),
    }))
}

/// An error about attribute `attr` of `node`, quoting its current value.
pub(super) fn attr_problem(node: Node, attr: &str, message: impl Into<String>) -> DomainXmlError {
    problem(node, Some(attr), node.attribute(attr), message)
}

/// An error about the text content of `node`.
pub(super) fn text_problem(node: Node, message: impl Into<String>) -> DomainXmlError {
    problem(node, None, Some(text(node)), message)
}

pub(super) fn required_attr<'a>(node: Node<'a, '_>, attr: &str) -> Result<&'a str> {
    node.attribute(attr).ok_or_else(|| {
        problem(
            node,
            Some(attr),
            None,
            format!("missing attribute '{attr}'"),
        )
    })
}

pub(super) fn required_child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Result<Node<'a, 'i>> {
    child(node, name).ok_or_else(|| problem(node, None, None, format!("missing element <{name}>")))
}

/// Decimal number, surrounding whitespace allowed. Signs are only accepted
/// where the target type is signed.
fn number<T: FromStr>(text: &str) -> Option<T> {
    text.trim().parse().ok()
}

/// Why a text is not a number of the wanted type: digits that overflow it
/// are a number out of range, anything else is no number at all.
fn not_a_number(text: &str) -> &'static str {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        "a number out of range (too large)"
    } else {
        "not a valid number"
    }
}

pub(super) fn attr_number<T: FromStr>(node: Node, attr: &str) -> Result<Option<T>> {
    node.attribute(attr)
        .map(|v| number(v).ok_or_else(|| attr_problem(node, attr, not_a_number(v))))
        .transpose()
}

pub(super) fn required_number<T: FromStr>(node: Node, attr: &str) -> Result<T> {
    let value = required_attr(node, attr)?;
    number(value).ok_or_else(|| attr_problem(node, attr, not_a_number(value)))
}

pub(super) fn text_number<T: FromStr>(node: Node) -> Result<T> {
    number(text(node)).ok_or_else(|| text_problem(node, not_a_number(text(node))))
}

/// A non-empty id list in libvirt syntax. Empty lists are rejected because
/// libvirt rejects them too: pinning to nothing has no meaning.
pub(super) fn attr_set(node: Node, attr: &str) -> Result<Option<IdSet>> {
    let Some(value) = node.attribute(attr) else {
        return Ok(None);
    };
    let set: IdSet = value
        .parse()
        .map_err(|e| attr_problem(node, attr, format!("{e}")))?;
    if set.is_empty() {
        return Err(attr_problem(node, attr, "the list is empty"));
    }
    Ok(Some(set))
}

pub(super) fn required_set(node: Node, attr: &str) -> Result<IdSet> {
    required_attr(node, attr)?;
    attr_set(node, attr).map(Option::unwrap_or_default)
}

/// Reads an enumerated attribute through `lookup`, naming the accepted
/// values when the one given is not among them.
pub(super) fn attr_enum<T>(
    node: Node,
    attr: &str,
    expected: &str,
    lookup: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>> {
    node.attribute(attr)
        .map(|v| lookup(v).ok_or_else(|| attr_problem(node, attr, format!("expected {expected}"))))
        .transpose()
}

/// `placement='static|auto'`, as `Some(is_auto)`.
pub(super) fn placement(node: Node) -> Result<Option<bool>> {
    attr_enum(node, "placement", "'static' or 'auto'", |v| match v {
        "static" => Some(false),
        "auto" => Some(true),
        _ => None,
    })
}

// ---- sizes ------------------------------------------------------------

/// `value` counted in the element's `unit` (KiB by default), in KiB rounded
/// up as libvirt rounds.
fn kib_in_unit(node: Node, value: u64, shown: Option<&str>) -> Result<u64> {
    let unit = node.attribute("unit").unwrap_or("KiB");
    let bytes = units::unit_bytes(unit).ok_or_else(|| {
        attr_problem(
            node,
            "unit",
            format!("unknown unit; expected {}", units::KNOWN_UNITS),
        )
    })?;
    units::kib(value, bytes, Round::Up)
        .filter(|&kib| kib <= MAX_MEMORY_KIB)
        .ok_or_else(|| {
            let msg = format!("{value} {unit} is more than 4 PiB, the most numapin handles");
            match shown {
                Some(attr) => attr_problem(node, attr, msg),
                None => text_problem(node, msg),
            }
        })
}

pub(super) fn text_kib(node: Node) -> Result<u64> {
    kib_in_unit(node, text_number(node)?, None)
}

pub(super) fn attr_kib(node: Node, attr: &str) -> Result<u64> {
    kib_in_unit(node, required_number(node, attr)?, Some(attr))
}
