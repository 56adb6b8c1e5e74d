//! The value a prefix of a JSON text stands for so far, for object-delta events.
//!
//! A model streaming structured output sends its JSON in pieces; a client
//! wants to see the object grow. `parse_partial(r#"{"answer": "fo"#)` is
//! `{"answer": "fo"}`: an open string value is closed, open arrays and
//! objects are closed, and a trailing piece that cannot stand yet (a key
//! without its value, half a `true`, a number that may still grow, a dangling
//! comma) is dropped. The same rules as the Python reference runner's
//! partial_json.py, so both runners show a streamed object growing by the
//! same steps.

use serde_json::Value;

/// The value so far; None when the prefix holds no value yet.
pub fn parse_partial(prefix: &str) -> Option<Value> {
    // By characters, as the Python version indexes: every cut then falls on one.
    let text: Vec<char> = prefix.chars().collect();
    candidates(&text).iter().find_map(|candidate| serde_json::from_str(candidate).ok())
}

/// Where everything before stands, and the closers still open there.
type Cut = Option<(usize, Vec<char>)>;

/// Completions of `text`, best first: the whole prefix closed (an open string
/// value kept), then the last point at which a value was whole.
fn candidates(text: &[char]) -> Vec<String> {
    let mut closers: Vec<char> = Vec::new(); // '}' or ']', innermost last
    let mut expecting_key: Vec<bool> = Vec::new(); // per open object: is the next string a key?
    let mut cut: Cut = None;
    let (mut in_string, mut escaped, mut string_is_key, mut string_start) = (false, false, false, 0);
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                if string_is_key {
                    if let Some(last) = expecting_key.last_mut() {
                        *last = false;
                    }
                } else {
                    cut = Some((i + 1, closers.clone()));
                }
            }
            i += 1;
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                string_is_key = closers.last() == Some(&'}') && expecting_key.last() == Some(&true);
                string_start = i;
            }
            '{' | '[' => {
                closers.push(if c == '{' { '}' } else { ']' });
                expecting_key.push(c == '{');
                cut = Some((i + 1, closers.clone()));
            }
            '}' | ']' => {
                if closers.pop().is_some() {
                    expecting_key.pop();
                }
                cut = Some((i + 1, closers.clone()));
            }
            ',' => {
                if closers.last() == Some(&'}') {
                    if let Some(last) = expecting_key.last_mut() {
                        *last = true;
                    }
                }
            }
            ':' | ' ' | '\t' | '\r' | '\n' => {}
            _ => {
                let end = (i..text.len()).find(|&j| ",:}] \t\r\n".contains(text[j])).unwrap_or(text.len());
                if end == text.len() {
                    // A literal or number at the very end may still grow: leave it out.
                    return from_cut(cut, text);
                }
                cut = Some((end, closers.clone()));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    let mut found = Vec::new();
    if in_string && !string_is_key {
        let kept: String = text[..whole_escapes_end(text, string_start)].iter().collect();
        found.push(close(kept + "\"", &closers));
    }
    found.extend(from_cut(cut, text));
    found
}

/// Where an open string can be cut: before an escape that is not yet whole,
/// and before a high surrogate whose low half has not arrived (a lone
/// surrogate cannot be encoded to send on).
fn whole_escapes_end(text: &[char], string_start: usize) -> usize {
    let hex = |from: usize| -> Option<u32> {
        let digits: String = text.get(from..from + 4)?.iter().collect();
        if digits.chars().all(|c| c.is_ascii_hexdigit()) { u32::from_str_radix(&digits, 16).ok() } else { None }
    };
    let high_surrogate = |unit: Option<u32>| unit.is_some_and(|u| (0xD800..0xDC00).contains(&u));
    let (mut end, mut i) = (string_start + 1, string_start + 1);
    while i < text.len() {
        if text[i] != '\\' {
            i += 1;
            end = i;
            continue;
        }
        if i + 1 >= text.len() {
            break;
        }
        if text[i + 1] != 'u' {
            i += 2;
            end = i;
            continue;
        }
        if i + 6 > text.len() {
            break;
        }
        let unit = hex(i + 2);
        let pair_arrived = text.get(i + 6..i + 8) == Some(&['\\', 'u'][..]) && i + 12 <= text.len();
        if high_surrogate(unit) && !pair_arrived {
            break; // the pair's second half is still to come
        }
        i += if high_surrogate(unit) { 12 } else { 6 };
        end = i;
    }
    end
}

fn from_cut(cut: Cut, text: &[char]) -> Vec<String> {
    let Some((end, closers)) = cut else { return Vec::new() };
    let kept: String = text[..end].iter().collect();
    vec![close(kept.trim_end().trim_end_matches(',').to_string(), &closers)]
}

fn close(mut text: String, closers: &[char]) -> String {
    text.extend(closers.iter().rev());
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefixes_of_an_object() {
        let cases = [
            ("", None),
            ("{", Some(json!({}))),
            (r#"{"ans"#, Some(json!({}))),
            (r#"{"answer": "#, Some(json!({}))),
            (r#"{"answer": "fo"#, Some(json!({"answer": "fo"}))),
            (r#"{"answer": "four", "n": 1"#, Some(json!({"answer": "four"}))),
            (r#"{"answer": "four", "n": 12,"#, Some(json!({"answer": "four", "n": 12}))),
            (r#"{"list": [true, fa"#, Some(json!({"list": [true]}))),
            (r#"{"s": "a\"#, Some(json!({"s": "a"}))),
            (r#"{"s": "\ud83d"#, Some(json!({"s": ""}))),
            (r#"{"s": "\ud83d\ude00"#, Some(json!({"s": "😀"}))),
            (r#"{"s": "é"#, Some(json!({"s": "é"}))),
        ];
        for (prefix, expected) in cases {
            assert_eq!(parse_partial(prefix), expected, "{prefix}");
        }
    }
}
