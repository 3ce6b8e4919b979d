use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use proptest::prelude::*;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Valid inputs and their canonical form.
#[test]
fn parses_valid_selectors() {
    let long_name = "a".repeat(63);
    let long_prefix = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(long_prefix.len(), 253);
    let cases: Vec<(String, String)> = [
        ("", ""),
        ("   ", ""),
        ("x", "x"),
        ("!x", "!x"),
        ("! x", "!x"),
        ("x=a", "x=a"),
        ("x = a", "x=a"),
        ("x==a", "x==a"),
        ("x!=a", "x!=a"),
        ("x=", "x="),
        ("x=,y", "x=,y"),
        ("x in (b,a)", "x in (a,b)"),
        ("x in(a)", "x in (a)"),
        ("x notin (a, b ,c)", "x notin (a,b,c)"),
        ("x in ()", "x in ()"),
        ("x in (,a)", "x in (,a)"),
        ("x in (a,,b)", "x in (,a,b)"),
        ("x in (a,)", "x in (,a)"),
        ("in in (in, notin)", "in in (in,notin)"),
        ("z,y=b,!x", "!x,y=b,z"),
        ("b=1,a=2,b!=3", "a=2,b=1,b!=3"),
        ("\tapp = web ,\n tier in (fe)", "app=web,tier in (fe)"),
        ("example.com/app=web", "example.com/app=web"),
        ("a.b-c_d=A.b-C_9", "a.b-c_d=A.b-C_9"),
        ("x>5", "x>5"),
        ("x < 10", "x<10"),
    ]
    .iter()
    .map(|(i, o)| (i.to_string(), o.to_string()))
    .chain([
        (format!("{long_name}=v"), format!("{long_name}=v")),
        (format!("k={long_name}"), format!("k={long_name}")),
        (format!("{long_prefix}/n"), format!("{long_prefix}/n")),
    ])
    .collect();
    for (input, canonical) in cases {
        let sel = Selector::parse(&input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(sel.to_string(), canonical, "input {input:?}");
        assert_eq!(
            Selector::parse(&canonical).unwrap(),
            sel,
            "reparse {canonical:?}"
        );
    }
}

/// Invalid inputs and a fragment of the error that names what is wrong.
#[test]
fn rejects_invalid_selectors() {
    let long = "a".repeat(64);
    let long_prefix = format!("{}.b", "a".repeat(252));
    let cases: Vec<(String, String)> = [
        ("=a", "offset 0: found '=', expected '!' or a label key"),
        (
            "x=a,",
            "offset 4: found end of string, expected '!' or a label key after ','",
        ),
        (",x", "found ','"),
        ("x y", "offset 2: found 'y', expected one of 'in'"),
        ("x in a", "found 'a', expected '(' after 'in' or 'notin'"),
        ("x in (a", "found end of string, expected ',' or ')'"),
        ("x in (a b)", "found 'b', expected ',' or ')'"),
        ("x in (=)", "found '=', expected a value, ',' or ')'"),
        (
            "x notin",
            "found end of string, expected '(' after 'in' or 'notin'",
        ),
        (
            "x=a=b",
            "offset 3: found '=', expected ',' or end of string",
        ),
        ("x=(a)", "found '(', expected a value"),
        ("!x=a", "offset 2: found '=', expected ',' or end of string"),
        ("!", "found end of string, expected a label key after '!'"),
        ("!!x", "found '!', expected a label key after '!'"),
        ("x=a b", "found 'b', expected ',' or end of string"),
        (
            "-x",
            "invalid label key \"-x\": name part \"-x\" must consist of alphanumeric",
        ),
        ("x_=a", "name part \"x_\" must consist"),
        (
            "Example.com/x",
            "prefix part \"Example.com\" a lowercase RFC 1123 subdomain",
        ),
        (
            "/x",
            "invalid label key \"/x\": prefix part must be non-empty",
        ),
        ("a.com/", "name part must be non-empty"),
        ("a/b/c", "more than one '/'"),
        (
            "x=-a",
            "invalid label value \"-a\" for key \"x\": a valid label must be an empty string",
        ),
        ("x in (a,b.)", "invalid label value \"b.\" for key \"x\""),
        ("x>a", "the value must be an integer"),
        ("x>", "the value must be an integer"),
        ("ключ=a", "invalid label key \"ключ\""),
    ]
    .iter()
    .map(|(i, e)| (i.to_string(), e.to_string()))
    .chain([
        (
            format!("{long}=v"),
            format!("name part \"{long}\" must be no more than 63 characters (is 64)"),
        ),
        (
            format!("k={long}"),
            "must be no more than 63 characters (is 64)".to_string(),
        ),
        (
            format!("{long_prefix}/n"),
            "must be no more than 253 characters (is 254)".to_string(),
        ),
    ])
    .collect();
    for (input, fragment) in cases {
        match Selector::parse(&input) {
            Ok(sel) => panic!("{input:?} parsed as {sel}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&fragment),
                    "{input:?}: {msg:?} lacks {fragment:?}"
                );
            }
        }
    }
}

#[test]
fn matches_like_the_api_server() {
    let l = labels(&[("app", "web"), ("tier", "fe"), ("n", "7"), ("empty", "")]);
    let yes = [
        "",
        "app",
        "app=web",
        "app==web",
        "app!=db",
        "missing!=x",
        "!missing",
        "app in (web,db)",
        "app notin (db)",
        "missing notin (x)",
        "n>6",
        "n<8",
        "empty=",
        "empty in ()",
        "app,tier=fe",
    ];
    let no = [
        "missing",
        "!app",
        "app=db",
        "app!=web",
        "app in (db)",
        "app notin (web)",
        "missing in (x)",
        "n>7",
        "app>1",
        "missing<1",
        "app=web,tier=be",
        "missing=",
    ];
    for s in yes {
        assert!(
            Selector::parse(s).unwrap().matches(&l),
            "{s:?} should match"
        );
    }
    for s in no {
        assert!(
            !Selector::parse(s).unwrap().matches(&l),
            "{s:?} should not match"
        );
    }
}

#[test]
fn label_selector_objects() {
    let ls = LabelSelector {
        match_labels: Some([("app".to_string(), "web".to_string())].into()),
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["fe".into(), "be".into()]),
            },
            LabelSelectorRequirement {
                key: "canary".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
            LabelSelectorRequirement {
                key: "env".into(),
                operator: "Exists".into(),
                values: Some(vec![]),
            },
            LabelSelectorRequirement {
                key: "zone".into(),
                operator: "NotIn".into(),
                values: Some(vec!["b".into()]),
            },
        ]),
    };
    let sel = Selector::from_label_selector(&ls).unwrap();
    assert_eq!(
        sel.to_string(),
        "app=web,!canary,env,tier in (be,fe),zone notin (b)"
    );
    assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe"), ("env", "p")])));
    assert!(!sel.matches(&labels(&[
        ("app", "web"),
        ("tier", "fe"),
        ("env", "p"),
        ("canary", "")
    ])));
    assert!(
        Selector::from_label_selector(&LabelSelector::default())
            .unwrap()
            .is_empty()
    );

    let bad = |op: &str, values: Option<Vec<String>>| LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values,
        }]),
    };
    let err = |ls: LabelSelector| Selector::from_label_selector(&ls).unwrap_err().to_string();
    assert!(
        err(bad("Gt", Some(vec!["1".into()])))
            .contains("\"Gt\" is not a valid label selector operator")
    );
    assert!(err(bad("In", None)).contains("values set can't be empty"));
    assert!(err(bad("Exists", Some(vec!["a".into()]))).contains("values set must be empty"));
    assert!(
        err(bad("In", Some(vec!["-".into()]))).contains("invalid label value \"-\" for key \"k\"")
    );

    let map: BTreeMap<String, String> = [("b".into(), "2".into()), ("a".into(), "1".into())].into();
    assert_eq!(Selector::from_map(&map).unwrap().to_string(), "a=1,b=2");
    let bad_map: BTreeMap<String, String> = [("a b".into(), "1".into())].into();
    assert!(
        Selector::from_map(&bad_map)
            .unwrap_err()
            .to_string()
            .contains("invalid label key \"a b\"")
    );
}

// ---- property tests ----

/// Keys and values from a small alphabet so that generated labels often hit
/// generated requirements.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("in".to_string()),
        Just("x.io/c".to_string()),
        "[a-z]([a-z0-9_.-]{0,6}[a-z0-9])?",
        "[a-z]{1,4}(\\.[a-z]{1,4})?/[A-Za-z0-9]([A-Za-z0-9_.-]{0,5}[A-Za-z0-9])?",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("1".to_string()),
        Just("v".to_string()),
        Just("notin".to_string()),
        "[A-Za-z0-9]([A-Za-z0-9_.-]{0,5}[A-Za-z0-9])?",
        (0u32..20).prop_map(|n| n.to_string()),
    ]
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let op = prop_oneof![
        Just(Operator::In),
        Just(Operator::NotIn),
        Just(Operator::Equals),
        Just(Operator::DoubleEquals),
        Just(Operator::NotEquals),
        Just(Operator::Exists),
        Just(Operator::DoesNotExist),
        Just(Operator::GreaterThan),
        Just(Operator::LessThan),
    ];
    (key(), op, prop::collection::vec(value(), 1..4), 0u32..30).prop_map(|(k, op, vals, n)| {
        let vals: Vec<String> = match op {
            Operator::In | Operator::NotIn => vals,
            Operator::Exists | Operator::DoesNotExist => vec![],
            Operator::GreaterThan | Operator::LessThan => vec![n.to_string()],
            _ => vals[..1].to_vec(),
        };
        Requirement::new(&k, op, vals).expect("generated requirement is valid")
    })
}

fn selector() -> impl Strategy<Value = Selector> {
    prop::collection::vec(requirement(), 0..5).prop_map(Selector::new)
}

fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..5)
}

/// The reference model: the definition of each operator written out plainly.
fn model_matches(sel: &Selector, labels: &BTreeMap<String, String>) -> bool {
    sel.requirements().iter().all(|r| {
        let vals: &BTreeSet<String> = r.values();
        let got = labels.get(r.key());
        let int = |s: &str| s.parse::<i64>().ok();
        match r.operator() {
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::Equals | Operator::DoubleEquals | Operator::In => match got {
                Some(v) => vals.iter().any(|x| x == v),
                None => false,
            },
            Operator::NotEquals | Operator::NotIn => match got {
                Some(v) => vals.iter().all(|x| x != v),
                None => true,
            },
            Operator::GreaterThan => {
                match (got.and_then(|v| int(v)), int(vals.iter().next().unwrap())) {
                    (Some(a), Some(b)) => a > b,
                    _ => false,
                }
            }
            Operator::LessThan => {
                match (got.and_then(|v| int(v)), int(vals.iter().next().unwrap())) {
                    (Some(a), Some(b)) => a < b,
                    _ => false,
                }
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn display_then_parse_round_trips(sel in selector()) {
        let text = sel.to_string();
        let back = Selector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&back, &sel, "text {:?}", text);
    }

    #[test]
    fn matching_agrees_with_model(sel in selector(), labels in label_set()) {
        prop_assert_eq!(sel.matches(&labels), model_matches(&sel, &labels), "selector {}", sel);
    }

    #[test]
    fn arbitrary_input_never_panics_and_canonical_form_is_stable(
        input in "[a-z0-9 !=(),<>._/-]{0,24}|[ -~]{0,16}"
    ) {
        if let Ok(sel) = Selector::parse(&input) {
            let text = sel.to_string();
            let again = Selector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(again.to_string(), text);
        }
    }

    #[test]
    fn whitespace_between_tokens_is_ignored(sel in selector(), ws in "[ \t\n]{1,3}") {
        // Respace the canonical text around every separator.
        let text = sel.to_string();
        let spaced = text.replace(',', &format!("{ws},{ws}")).replace('(', &format!("{ws}({ws}"));
        let back = Selector::parse(&spaced).map_err(|e| TestCaseError::fail(format!("{spaced:?}: {e}")))?;
        prop_assert_eq!(back, sel);
    }
}
