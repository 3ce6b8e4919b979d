//! Kubernetes label selectors: the string syntax of `kubectl -l` and of
//! `labels.Parse` in k8s.io/apimachinery, and `LabelSelector` objects
//! (`matchLabels` + `matchExpressions`) from manifests, both turned into one
//! [`Selector`] that matches label maps and prints back canonically.
//!
//! Grammar (whitespace `' ' '\t' '\r' '\n'` separates tokens and is
//! otherwise ignored):
//! ```text
//! selector    ::= "" | requirement ( "," requirement )*
//! requirement ::= "!" KEY | KEY | KEY ("=" | "==" | "!=") VALUE?
//!               | KEY ("in" | "notin") "(" VALUE? ( "," VALUE? )* ")"
//!               | KEY (">" | "<") INTEGER
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::kube::validation::check_dns1123_subdomain;

/// Why a selector string or object was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The string does not follow the grammar.
    #[error("invalid selector {input:?}: at offset {offset}: found {found}, expected {expected}")]
    Syntax {
        /// The whole selector string.
        input: String,
        /// Byte offset of the offending token.
        offset: usize,
        /// The offending token, quoted, or `end of string`.
        found: String,
        /// What the grammar allows there.
        expected: &'static str,
    },
    /// A label key breaks Kubernetes' qualified-name rules.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey {
        /// The key as written.
        key: String,
        /// Which part is wrong and why.
        reason: String,
    },
    /// A label value breaks Kubernetes' label-value rules.
    #[error("invalid label value {value:?} for key {key:?}: {reason}")]
    InvalidValue {
        /// The key the value belongs to.
        key: String,
        /// The value as written.
        value: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The operator and the values of a requirement do not fit together.
    #[error("invalid requirement on key {key:?}: {reason}")]
    InvalidRequirement {
        /// The requirement's key.
        key: String,
        /// Why it is wrong.
        reason: String,
    },
}

/// A requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `key in (a,b)`: the label exists and has one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or has none of the values.
    NotIn,
    /// `key=a`.
    Equals,
    /// `key==a` (same meaning as `=`, kept to print back as written).
    DoubleEquals,
    /// `key!=a`: the label is absent or has another value.
    NotEquals,
    /// `key`: the label exists.
    Exists,
    /// `!key`: the label does not exist.
    DoesNotExist,
    /// `key>5`: the label is an integer greater than the value.
    GreaterThan,
    /// `key<5`: the label is an integer less than the value.
    LessThan,
}

impl Operator {
    fn symbol(self) -> &'static str {
        match self {
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => "",
        }
    }
}

/// One clause of a selector; all clauses of a [`Selector`] must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    op: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    /// Builds a validated requirement, with the same checks as the API
    /// server's `labels.NewRequirement`.
    pub fn new<I, S>(key: &str, op: Operator, values: I) -> Result<Requirement, SelectorError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        validate_label_key(key).map_err(|reason| SelectorError::InvalidKey {
            key: key.to_string(),
            reason,
        })?;
        let values: BTreeSet<String> = values.into_iter().map(Into::into).collect();
        let invalid = |reason: &str| SelectorError::InvalidRequirement {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(invalid(
                    "for 'in', 'notin' operators, values set can't be empty",
                ));
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                return Err(invalid(
                    "exact-match compatibility requires one single value",
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(invalid(
                    "values set must be empty for exists and does not exist",
                ));
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    return Err(invalid(
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                if values.iter().any(|v| v.parse::<i64>().is_err()) {
                    return Err(invalid(
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    ));
                }
            }
            _ => {}
        }
        for value in &values {
            validate_label_value(value).map_err(|reason| SelectorError::InvalidValue {
                key: key.to_string(),
                value: value.clone(),
                reason,
            })?;
        }
        Ok(Requirement {
            key: key.to_string(),
            op,
            values,
        })
    }

    /// The label key this requirement looks at.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.op
    }

    /// The values (sorted; empty for `Exists`/`DoesNotExist`).
    pub fn values(&self) -> &BTreeSet<String> {
        &self.values
    }

    /// Whether a label set satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                label.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotIn | Operator::NotEquals => label.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    label.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        f.write_str(self.op.symbol())?;
        let set = matches!(self.op, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        for (i, value) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(value)?;
        }
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A label selector: the AND of its requirements, kept sorted by key (stable
/// for equal keys) as the API server does, so that equal selectors print the
/// same. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// A selector from requirements (sorted by key).
    pub fn new(mut requirements: Vec<Requirement>) -> Selector {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Selector { requirements }
    }

    /// Parses the string syntax (`app=web,tier in (a,b),!canary`).
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        Parser::new(input).parse().map(Selector::new)
    }

    /// `key=value` for every entry, like a Service's `spec.selector`. An empty
    /// map gives the selector that matches everything; callers that treat an
    /// empty Service selector as "no selector" must check that first.
    pub fn from_map(labels: &BTreeMap<String, String>) -> Result<Selector, SelectorError> {
        labels
            .iter()
            .map(|(k, v)| Requirement::new(k, Operator::Equals, [v.as_str()]))
            .collect::<Result<Vec<_>, _>>()
            .map(Selector::new)
    }

    /// Converts a manifest's `LabelSelector` (`matchLabels` and
    /// `matchExpressions` with In, NotIn, Exists, DoesNotExist). An empty
    /// object matches everything; an absent one (`None` in the caller's
    /// field) matches nothing in Kubernetes and is the caller's to handle.
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::new(key, Operator::Equals, [value.as_str()])?);
        }
        for expr in selector.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::InvalidRequirement {
                        key: expr.key.clone(),
                        reason: format!(
                            "operator {other:?} is not a valid label selector operator \
                             (supported: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\")"
                        ),
                    });
                }
            };
            let values = expr.values.iter().flatten().map(String::as_str);
            requirements.push(Requirement::new(&expr.key, op, values)?);
        }
        Ok(Selector::new(requirements))
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True for the selector that matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse(s)
    }
}

const QUALIFIED_NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', \
     and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or \
     '123-abc')";

/// True for `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks a label key: an optional DNS-1123 subdomain prefix (at most 253
/// characters) and `/`, then a name of at most 63 characters of
/// `[A-Za-z0-9-_.]` starting and ending alphanumeric. The error names the
/// part that is wrong.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        None => (None, key),
        Some((_, rest)) if rest.contains('/') => {
            return Err(format!(
                "a qualified name {QUALIFIED_NAME_RULE}, with an optional DNS subdomain prefix \
                 and '/' (e.g. 'example.com/MyName'); it has more than one '/'"
            ));
        }
        Some((prefix, name)) => (Some(prefix), name),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        check_dns1123_subdomain(prefix).map_err(|e| format!("prefix part {prefix:?} {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "name part {name:?} must be no more than 63 characters (is {})",
            name.len()
        ));
    }
    if !is_label_name(name) {
        return Err(format!("name part {name:?} {QUALIFIED_NAME_RULE}"));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 characters of
/// `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            value.len()
        ));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(format!(
            "a valid label must be an empty string or {QUALIFIED_NAME_RULE}"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    Ident,
    In,
    NotIn,
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

/// A token: its kind, text and byte offset.
#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok,
    text: &'a str,
    offset: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the input into tokens. Identifiers are maximal runs of bytes that
/// are neither whitespace nor one of `=!(),<>`; `in`/`notin` are keywords
/// only where an operator may stand (the parser decides).
fn lex(input: &str) -> Vec<Token<'_>> {
    let b = input.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i == b.len() {
            out.push(Token {
                tok: Tok::End,
                text: "",
                offset: i,
            });
            return out;
        }
        let start = i;
        let tok = if is_special(b[i]) {
            let two = b.get(i..i + 2);
            let (tok, len) = match (b[i], two) {
                (_, Some(b"!=")) => (Tok::NotEq, 2),
                (_, Some(b"==")) => (Tok::DoubleEq, 2),
                (b'!', _) => (Tok::Not, 1),
                (b'=', _) => (Tok::Eq, 1),
                (b'(', _) => (Tok::Open, 1),
                (b')', _) => (Tok::Close, 1),
                (b',', _) => (Tok::Comma, 1),
                (b'>', _) => (Tok::Gt, 1),
                _ => (Tok::Lt, 1),
            };
            i += len;
            tok
        } else {
            while i < b.len() && !is_special(b[i]) && !is_space(b[i]) {
                i += 1;
            }
            match &input[start..i] {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            }
        };
        out.push(Token {
            tok,
            text: &input[start..i],
            offset: start,
        });
    }
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Parser<'a> {
        Parser {
            input,
            tokens: lex(input),
            pos: 0,
        }
    }

    /// The next token; in value position the keywords are plain identifiers
    /// (`in in (in)` is a valid selector).
    fn peek(&self, values: bool) -> Token<'a> {
        let mut t = self.tokens[self.pos];
        if values && matches!(t.tok, Tok::In | Tok::NotIn) {
            t.tok = Tok::Ident;
        }
        t
    }

    fn next(&mut self, values: bool) -> Token<'a> {
        let t = self.peek(values);
        if t.tok != Tok::End {
            self.pos += 1;
        }
        t
    }

    fn error(&self, t: Token<'_>, expected: &'static str) -> SelectorError {
        SelectorError::Syntax {
            input: self.input.to_string(),
            offset: t.offset,
            found: if t.tok == Tok::End {
                "end of string".into()
            } else {
                format!("'{}'", t.text)
            },
            expected,
        }
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut out = Vec::new();
        if self.peek(true).tok == Tok::End {
            return Ok(out);
        }
        loop {
            out.push(self.requirement()?);
            let t = self.next(true);
            match t.tok {
                Tok::End => return Ok(out),
                Tok::Comma => {
                    let t = self.peek(true);
                    if !matches!(t.tok, Tok::Ident | Tok::Not) {
                        return Err(self.error(t, "'!' or a label key after ','"));
                    }
                }
                _ => return Err(self.error(t, "',' or end of string")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut t = self.next(true);
        let negated = t.tok == Tok::Not;
        if negated {
            t = self.next(true);
        }
        if t.tok != Tok::Ident {
            let expected = if negated {
                "a label key after '!'"
            } else {
                "'!' or a label key"
            };
            return Err(self.error(t, expected));
        }
        let key = t.text;
        if negated {
            return Requirement::new(key, Operator::DoesNotExist, [""; 0]);
        }
        // The key alone: an existence test.
        if matches!(self.peek(true).tok, Tok::End | Tok::Comma) {
            return Requirement::new(key, Operator::Exists, [""; 0]);
        }
        let t = self.next(false);
        let op = match t.tok {
            Tok::In => Operator::In,
            Tok::NotIn => Operator::NotIn,
            Tok::Eq => Operator::Equals,
            Tok::DoubleEq => Operator::DoubleEquals,
            Tok::NotEq => Operator::NotEquals,
            Tok::Gt => Operator::GreaterThan,
            Tok::Lt => Operator::LessThan,
            _ => {
                return Err(self.error(
                    t,
                    "one of 'in', 'notin', '=', '==', '!=', '>', '<', ',' or end of string",
                ));
            }
        };
        let values = if matches!(op, Operator::In | Operator::NotIn) {
            self.value_set()?
        } else {
            vec![self.exact_value()?]
        };
        // Validate the key before the values so that the error names the key
        // first, as the API server does.
        Requirement::new(key, op, values)
    }

    /// `(a,b)`; empty elements are the empty value (`(,a)`, `()`).
    fn value_set(&mut self) -> Result<Vec<&'a str>, SelectorError> {
        let t = self.next(true);
        if t.tok != Tok::Open {
            return Err(self.error(t, "'(' after 'in' or 'notin'"));
        }
        let mut values = Vec::new();
        let mut last_was_value = false;
        loop {
            let t = self.next(true);
            match t.tok {
                Tok::Ident if !last_was_value => {
                    values.push(t.text);
                    last_was_value = true;
                }
                Tok::Comma => {
                    if !last_was_value {
                        values.push("");
                    }
                    last_was_value = false;
                }
                Tok::Close => {
                    if !last_was_value {
                        values.push("");
                    }
                    return Ok(values);
                }
                _ if last_was_value => return Err(self.error(t, "',' or ')'")),
                _ => return Err(self.error(t, "a value, ',' or ')'")),
            }
        }
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`; nothing means "".
    fn exact_value(&mut self) -> Result<&'a str, SelectorError> {
        let t = self.peek(true);
        match t.tok {
            Tok::End | Tok::Comma => Ok(""),
            Tok::Ident => {
                self.next(true);
                Ok(t.text)
            }
            _ => Err(self.error(t, "a value, ',' or end of string")),
        }
    }
}

/// The selector of a workload as the Scale subresource prints it (`app=web`).
pub fn workload_selector_text(v: &serde_json::Value) -> String {
    let sel = &v["spec"]["selector"];
    let parsed = if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
        serde_json::from_value(sel.clone())
            .ok()
            .and_then(|ls| Selector::from_label_selector(&ls).ok())
    } else {
        // A ReplicationController's selector is a plain map.
        serde_json::from_value(sel.clone())
            .ok()
            .and_then(|m| Selector::from_map(&m).ok())
    };
    parsed.map(|s| s.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
