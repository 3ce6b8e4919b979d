//! Field errors worded as the apiserver's `field.ErrorList` prints them, so a refused object
//! reads the same under skiff as under kube-apiserver (`spec.x: Invalid value: 3: detail`).

use std::collections::BTreeMap;

/// `<path>: Invalid value: <value>: <detail>`; `value` is already printed as Go prints it
/// (numbers bare, strings quoted: see [`quoted`]).
pub fn invalid(path: &str, value: impl std::fmt::Display, detail: &str) -> String {
    format!("{path}: Invalid value: {value}: {detail}")
}

/// `<path>: Required value`, with `: <detail>` when there is one.
pub fn required(path: &str, detail: &str) -> String {
    if detail.is_empty() {
        format!("{path}: Required value")
    } else {
        format!("{path}: Required value: {detail}")
    }
}

/// `<path>: Unsupported value: "<value>": supported values: "a", "b"`.
pub fn not_supported(path: &str, value: &str, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| quoted(s)).collect();
    format!(
        "{path}: Unsupported value: {}: supported values: {}",
        quoted(value),
        list.join(", ")
    )
}

/// `<path>: Forbidden: <detail>`.
pub fn forbidden(path: &str, detail: &str) -> String {
    format!("{path}: Forbidden: {detail}")
}

/// A string as Go's `%q` prints it (for the ASCII that object fields hold, Rust's `{:?}`
/// escapes the same way).
pub fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A label map as Go's `%#v` prints a `map[string]string` (keys sorted), the form the
/// apiserver shows in "`selector` does not match template `labels`".
pub fn go_map(labels: Option<&BTreeMap<String, String>>) -> String {
    match labels {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
    }
}

/// `must be greater than or equal to 0` on a negative value (`ValidateNonnegativeField`).
pub fn nonnegative(errs: &mut Vec<String>, path: &str, value: Option<i64>) {
    if let Some(v) = value
        && v < 0
    {
        errs.push(invalid(path, v, "must be greater than or equal to 0"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_apiservers() {
        assert_eq!(
            invalid("spec.completions", -1, "must be greater than or equal to 0"),
            "spec.completions: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            required("spec.selector", ""),
            "spec.selector: Required value"
        );
        assert_eq!(
            not_supported("spec.x", "Always", &["OnFailure", "Never"]),
            "spec.x: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let m = BTreeMap::from([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
        assert_eq!(go_map(Some(&m)), r#"map[string]string{"a":"1", "b":"2"}"#);
        assert_eq!(go_map(None), "map[string]string(nil)");
        let mut errs = Vec::new();
        nonnegative(&mut errs, "spec.a", Some(0));
        nonnegative(&mut errs, "spec.b", None);
        assert!(errs.is_empty());
        nonnegative(&mut errs, "spec.c", Some(-2));
        assert_eq!(errs.len(), 1);
    }
}
