//! `dataset_item_name`: AgentMark's stable name for a dataset item, the first
//! 12 hex digits of the MD5 of the item input's canonical JSON
//! (`dataset-item-name.json`).
//!
//! "Canonical" is whatever Python's
//! `json.dumps(value, sort_keys=True, separators=(",", ":"))` prints for the
//! parsed input, so this module re-creates it exactly: keys sorted by code
//! point, ASCII-only output with `\uXXXX` escapes (lone surrogates included),
//! integers as written, floats as Python's `repr`, infinities as `Infinity`.

use md5::{Digest, Md5};

/// Python refuses to convert integers longer than this to or from text.
const PYTHON_INT_MAX_DIGITS: usize = 4300;

#[derive(Debug, PartialEq)]
pub enum ItemNameError {
    InvalidJson,
    IntegerTooLong,
}

impl std::fmt::Display for ItemNameError {
    /// One message for every refusal: which check trips first differs
    /// between parsers, and the twin must say the same thing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(ITEM_INPUT_REFUSED)
    }
}

pub const ITEM_INPUT_REFUSED: &str =
    "dataset item input must be JSON nested at most 128 deep, with integers of at most 4300 digits";

enum Value {
    Null,
    Bool(bool),
    /// Canonical decimal text: Python prints ints as written, but `-0` is `0`.
    Int(String),
    Float(f64),
    /// Code points, lone surrogates allowed (Python strings allow them).
    Str(Vec<u32>),
    Array(Vec<Value>),
    Object(Vec<(Vec<u32>, Value)>),
}

/// The item's name: its canonical digest, or the index when the input is
/// empty (`null`, `""` or `{}`).
pub fn dataset_item_name(input_json: &str, index: u64) -> Result<String, ItemNameError> {
    let mut parser = Parser { bytes: input_json.as_bytes(), pos: 0 };
    parser.whitespace();
    let value = parser.value(0)?;
    parser.whitespace();
    if parser.pos != parser.bytes.len() {
        return Err(ItemNameError::InvalidJson);
    }
    match &value {
        Value::Null => return Ok(index.to_string()),
        Value::Str(s) if s.is_empty() => return Ok(index.to_string()),
        Value::Object(o) if o.is_empty() => return Ok(index.to_string()),
        _ => {}
    }
    let mut canonical = Vec::new();
    write_value(&mut canonical, &value);
    Ok(hex::encode(Md5::digest(&canonical))[..12].to_string())
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(digits) => out.extend_from_slice(digits.as_bytes()),
        Value::Float(f) => out.extend_from_slice(python_float_repr(*f).as_bytes()),
        Value::Str(s) => write_ascii_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            // Python keeps the last of duplicate keys; sort, then keep the last of each run.
            let mut sorted: Vec<(usize, &(Vec<u32>, Value))> = members.iter().enumerate().collect();
            sorted.sort_by(|a, b| a.1 .0.cmp(&b.1 .0).then(a.0.cmp(&b.0)));
            out.push(b'{');
            let mut first = true;
            for (i, (_, (key, item))) in sorted.iter().enumerate() {
                if sorted.get(i + 1).is_some_and(|next| next.1 .0 == *key) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_ascii_str(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// `json.dumps(s)` with the default `ensure_ascii=True`.
fn write_ascii_str(out: &mut Vec<u8>, s: &[u32]) {
    fn escape_unit(out: &mut Vec<u8>, unit: u32) {
        out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
    }
    out.push(b'"');
    for &c in s {
        match c {
            0x22 => out.extend_from_slice(b"\\\""),
            0x5c => out.extend_from_slice(b"\\\\"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x20..=0x7e => out.push(c as u8),
            0x10000.. => {
                let v = c - 0x10000;
                escape_unit(out, 0xd800 | (v >> 10));
                escape_unit(out, 0xdc00 | (v & 0x3ff));
            }
            _ => escape_unit(out, c),
        }
    }
    out.push(b'"');
}

/// Python's `repr(float)`, which `json.dumps` uses (infinities as JSON's
/// non-standard `Infinity`, as Python prints them).
pub fn python_float_repr(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, as Python's repr does.
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().expect("{:e} exponent is an integer");
    let point = exponent + 1; // digits are 0.DIGITS x 10^point
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if !(-4 < point && point <= 16) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    let len = digits.len() as i32;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point < len {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{sign}{whole}.{fraction}")
    } else {
        format!("{sign}{digits}{}.0", "0".repeat((point - len) as usize))
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), ItemNameError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(ItemNameError::InvalidJson)
        }
    }

    /// `depth`: how many arrays and objects enclose this value.
    fn value(&mut self, depth: usize) -> Result<Value, ItemNameError> {
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(ItemNameError::InvalidJson),
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, ItemNameError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(ItemNameError::InvalidJson)
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ItemNameError> {
        if depth >= crate::json::MAX_DEPTH {
            return Err(ItemNameError::InvalidJson);
        }
        self.pos += 1;
        let mut members = Vec::new();
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.whitespace();
            if self.peek() != Some(b'"') {
                return Err(ItemNameError::InvalidJson);
            }
            let key = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            members.push((key, self.value(depth + 1)?));
            self.whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(ItemNameError::InvalidJson),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ItemNameError> {
        if depth >= crate::json::MAX_DEPTH {
            return Err(ItemNameError::InvalidJson);
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.whitespace();
            items.push(self.value(depth + 1)?);
            self.whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(ItemNameError::InvalidJson),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ItemNameError> {
        let hex = self.bytes.get(self.pos..self.pos + 4).ok_or(ItemNameError::InvalidJson)?;
        let text = std::str::from_utf8(hex).map_err(|_| ItemNameError::InvalidJson)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ItemNameError::InvalidJson);
        }
        self.pos += 4;
        u32::from_str_radix(text, 16).map_err(|_| ItemNameError::InvalidJson)
    }

    /// A string's code points. A high surrogate escape followed by a low one
    /// is one astral character; any other surrogate stays alone (as in Python).
    fn string(&mut self) -> Result<Vec<u32>, ItemNameError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let start = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            let run = std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| ItemNameError::InvalidJson)?;
            out.extend(run.chars().map(u32::from));
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or(ItemNameError::InvalidJson)?;
                    self.pos += 1;
                    let unit = match escaped {
                        b'"' => 0x22,
                        b'\\' => 0x5c,
                        b'/' => 0x2f,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => 0x0a,
                        b'r' => 0x0d,
                        b't' => 0x09,
                        b'u' => {
                            let high = self.hex4()?;
                            if (0xd800..0xdc00).contains(&high) && self.bytes[self.pos..].starts_with(b"\\u") {
                                let save = self.pos;
                                self.pos += 2;
                                let low = self.hex4()?;
                                if (0xdc00..0xe000).contains(&low) {
                                    0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
                                } else {
                                    self.pos = save;
                                    high
                                }
                            } else {
                                high
                            }
                        }
                        _ => return Err(ItemNameError::InvalidJson),
                    };
                    out.push(unit);
                }
                _ => return Err(ItemNameError::InvalidJson),
            }
        }
    }

    fn number(&mut self) -> Result<Value, ItemNameError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(ItemNameError::InvalidJson),
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.bytes.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if matches!(self.peek(), Some(b'0'..=b'9')) {
                self.digits();
                is_float = true;
            } else {
                // Python's scanner stops before a bare `e`; the caller then sees extra data.
                self.pos = save;
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).expect("ASCII");
        if is_float {
            return text.parse::<f64>().map(Value::Float).map_err(|_| ItemNameError::InvalidJson);
        }
        let digits = &self.bytes[start + usize::from(negative)..int_end];
        if digits.len() > PYTHON_INT_MAX_DIGITS {
            return Err(ItemNameError::IntegerTooLong);
        }
        let canonical = if digits == b"0" { "0".to_string() } else { text.to_string() };
        Ok(Value::Int(canonical))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (f, expected) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::INFINITY, "Infinity"),
        ] {
            assert_eq!(python_float_repr(f), expected);
        }
    }

    #[test]
    fn names_match_the_vectors() {
        assert_eq!(dataset_item_name("null", 0).unwrap(), "0");
        assert_eq!(dataset_item_name("{}", 2).unwrap(), "2");
        assert_eq!(dataset_item_name(r#"{"b":[2,3],"a":1}"#, 0).unwrap(), "94dc2faee24e");
        assert_eq!(dataset_item_name(r#"{"x":"a😀b"}"#, 0).unwrap(), "7dcb3ddff94c");
        assert_eq!(dataset_item_name("{", 0), Err(ItemNameError::InvalidJson));
    }
}
