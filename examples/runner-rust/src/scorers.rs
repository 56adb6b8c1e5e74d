//! The evals this runner scores, by the names prompts' `test_settings.evals`
//! use: the Python SDK's built-in `exact_match` and `exact_match_json`
//! (python/agentmark_gw/runner/scorers.py), scored the same way, so a dataset
//! row reads the same from either runner.

use serde_json::{json, Value};

pub const NAMES: [&str; 2] = ["exact_match", "exact_match_json"];

/// `{"name", "score", "passed", "label"}` for eval `name`, or None for an
/// eval this runner does not know (left out of the row, as the Python
/// runner leaves out evals it has no scorer for). `expected` is None when
/// the row has no expected output.
pub fn score(name: &str, output: &Value, expected: Option<&Value>) -> Option<Value> {
    let (passed, label) = match name {
        "exact_match" => (exact_match(output, expected), None),
        "exact_match_json" => exact_match_json(output, expected),
        _ => return None,
    };
    let label = label.unwrap_or(if passed { "match" } else { "mismatch" });
    Some(json!({"name": name, "score": i32::from(passed), "passed": passed, "label": label}))
}

/// The output is exactly the expected output (surrounding whitespace aside, for text).
fn exact_match(output: &Value, expected: Option<&Value>) -> bool {
    match (output, expected) {
        (Value::String(output), Some(Value::String(expected))) => output.trim() == expected.trim(),
        (_, Some(expected)) => !expected.is_null() && same(output, expected),
        (_, None) => false,
    }
}

/// The output equals the expected output as JSON values. Datasets hold an
/// expected object as JSON text, and text prompts answer JSON as text, so
/// strings are read as JSON first. A text that is not JSON is a mismatch
/// saying which side it was.
fn exact_match_json(output: &Value, expected: Option<&Value>) -> (bool, Option<&'static str>) {
    fn as_json(value: &Value) -> Result<Value, ()> {
        match value {
            Value::String(text) => serde_json::from_str(text).map_err(|_| ()),
            other => Ok(other.clone()),
        }
    }
    let Ok(expected) = as_json(expected.unwrap_or(&Value::Null)) else { return (false, Some("expected output is not JSON")) };
    let Ok(output) = as_json(output) else { return (false, Some("output is not JSON")) };
    (!expected.is_null() && same(&output, &expected), None)
}

/// Equality as Python's `==` sees parsed JSON: numbers by value (1 equals
/// 1.0) and, as in Python, true equals 1 and false equals 0.
pub fn same(a: &Value, b: &Value) -> bool {
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() == y.is_f64() => x == y, // exact for big integers
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(name: &str, output: Value, expected: Option<Value>) -> Value {
        score(name, &output, expected.as_ref()).unwrap()
    }

    #[test]
    fn exact_match_trims_text_and_compares_values() {
        assert_eq!(verdict("exact_match", json!(" 4\n"), Some(json!("4"))), json!({"name": "exact_match", "score": 1, "passed": true, "label": "match"}));
        assert_eq!(verdict("exact_match", json!("5"), Some(json!("4")))["label"], "mismatch");
        assert_eq!(verdict("exact_match", json!({"a": 1}), Some(json!({"a": 1.0})))["passed"], true);
        assert_eq!(verdict("exact_match", json!(null), None)["passed"], false);
    }

    #[test]
    fn exact_match_json_reads_strings_as_json() {
        assert_eq!(verdict("exact_match_json", json!({"b": 2, "a": 1}), Some(json!("{\"a\": 1, \"b\": 2}")))["passed"], true);
        assert_eq!(verdict("exact_match_json", json!("{\"a\":1}"), Some(json!({"a": 1})))["passed"], true);
        assert_eq!(verdict("exact_match_json", json!({}), Some(json!("{oops")))["label"], "expected output is not JSON");
        assert_eq!(verdict("exact_match_json", json!("nope"), Some(json!("{}")))["label"], "output is not JSON");
        assert_eq!(verdict("exact_match_json", json!(null), None)["passed"], false);
    }

    #[test]
    fn unknown_evals_are_not_scored() {
        assert_eq!(score("tone", &json!("x"), None), None);
    }

    #[test]
    fn equality_is_pythons() {
        assert!(same(&json!(true), &json!(1)) && same(&json!(1), &json!(1.0)) && !same(&json!("1"), &json!(1)));
        assert!(!same(&json!([1, 2]), &json!([1])) && same(&json!({"a": [false]}), &json!({"a": [0]})));
    }
}
