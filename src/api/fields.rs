//! Field selectors (`?fieldSelector=spec.nodeName=n1,status.phase!=Running`) with the fields
//! the apiserver supports per kind; any other field is refused with its own message
//! (`field label not supported: ...`), never silently ignored.

use serde_json::Value;

/// One requirement: field, `=`/`==` (true) or `!=` (false), value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    field: String,
    equal: bool,
    value: String,
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<Requirement>,
}

/// Fields every kind supports.
const META: &[&str] = &["metadata.name", "metadata.namespace"];

/// The apiserver's extra selectable fields per kind (`GetAttrs`/`AddFieldLabelConversionFunc`).
fn fields_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `a=b,c!=d` (`\,`, `\=` and `\\` escape).
    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for term in split_unescaped(text, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            reqs.push(Requirement {
                field: field.trim().to_string(),
                equal,
                value: unescape(value.trim()),
            });
        }
        Ok(FieldSelector { reqs })
    }

    /// Checks that `kind` supports every field: the apiserver's 400 message otherwise.
    pub fn check(&self, kind: &str) -> Result<(), String> {
        for r in &self.reqs {
            if !META.contains(&r.field.as_str()) && !fields_of(kind).contains(&r.field.as_str()) {
                return Err(format!(
                    "field label not supported: {} (for {kind}, supported: {})",
                    r.field,
                    META.iter()
                        .chain(fields_of(kind))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether the served object (JSON) matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs
            .iter()
            .all(|r| (field_value(obj, &r.field) == r.value) == r.equal)
    }

    /// Whether there is no requirement.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The value a requirement wants for `field` with `=`, if any (e.g. `metadata.name`).
    pub fn equals(&self, field: &str) -> Option<&str> {
        self.reqs
            .iter()
            .find(|r| r.equal && r.field == field)
            .map(|r| r.value.as_str())
    }
}

/// A field's value as the apiserver compares it: strings as they are, booleans as
/// `true`/`false`, missing as "".
fn field_value(obj: &Value, field: &str) -> String {
    let path = match field {
        // An event's `source` selects its component.
        "source" => "source.component",
        f => f,
    };
    let mut v = obj;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null if field == "spec.hostNetwork" || field == "spec.unschedulable" => {
            "false".into()
        }
        _ => String::new(),
    }
}

fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            out.last_mut().expect("never empty").extend(['\\', c]);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("never empty").push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pod_fields_match_as_the_apiserver() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": "10.0.0.5"}});
        let sel = |s: &str| FieldSelector::parse(s).unwrap();
        assert!(sel("metadata.name=web").matches(&pod));
        assert!(sel("spec.nodeName==n1,status.phase!=Pending").matches(&pod));
        assert!(!sel("status.phase=Pending").matches(&pod));
        assert!(sel("status.podIP=10.0.0.5").matches(&pod));
        assert!(sel("spec.hostNetwork=false").matches(&pod));
        assert!(sel("").matches(&pod));
        assert!(
            sel("metadata.name=web,spec.nodeName=n1")
                .check("Pod")
                .is_ok()
        );
        assert_eq!(
            sel("metadata.name=web").equals("metadata.name"),
            Some("web")
        );
    }

    #[test]
    fn unsupported_fields_are_named() {
        let err = FieldSelector::parse("spec.containers=x")
            .unwrap()
            .check("Pod")
            .unwrap_err();
        assert!(
            err.starts_with("field label not supported: spec.containers"),
            "{err}"
        );
        assert!(
            FieldSelector::parse("spec.nodeName=n1")
                .unwrap()
                .check("Service")
                .is_err()
        );
        assert!(
            FieldSelector::parse("involvedObject.name=web")
                .unwrap()
                .check("Event")
                .is_ok()
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn escapes() {
        let s = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert!(s.matches(&json!({"metadata": {"name": "a,b"}})));
    }
}
