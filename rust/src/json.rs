//! The two JSON operations the framer needs, byte-compatible with the
//! pure-Python twin (`agentmark_gw._fallback`):
//!
//! * [`write_str`] escapes a string exactly as Python's
//!   `json.dumps(s, ensure_ascii=False)` does;
//! * [`is_valid`] accepts exactly the JSON texts the twin accepts: RFC 8259
//!   (no `NaN`/`Infinity`, no raw control characters in strings), any `\uXXXX`
//!   escape (lone surrogates included, as Python's parser allows), nesting at
//!   most [`MAX_DEPTH`] deep;
//! * [`write_spliced`] copies a valid JSON text into a line without
//!   re-encoding it.

/// Deepest nesting of arrays and objects a runner may send in a JSON field.
/// Python's recursive parser would fail somewhere near 1,000; a fixed, lower
/// limit keeps both implementations in agreement.
pub const MAX_DEPTH: usize = 128;

/// JSON's insignificant whitespace.
const WHITESPACE: &[u8] = b" \t\n\r";

/// Append `s` as a JSON string literal, quotes included.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Append a JSON text that [`is_valid`] accepted. Surrounding whitespace is
/// dropped, and a CR or LF between tokens becomes a space: inside a valid
/// JSON text they can only be insignificant whitespace, and a raw newline
/// would end the NDJSON line early.
pub fn write_spliced(out: &mut Vec<u8>, text: &str) {
    let trimmed = trim(text.as_bytes());
    out.extend(trimmed.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !WHITESPACE.contains(first) {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !WHITESPACE.contains(last) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// Whether `text` is one complete JSON value (see the module docs).
pub fn is_valid(text: &str) -> bool {
    let mut parser = Validator { bytes: text.as_bytes(), pos: 0 };
    parser.skip_whitespace();
    if !parser.value(0) {
        return false;
    }
    parser.skip_whitespace();
    parser.pos == parser.bytes.len()
}

struct Validator<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Validator<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b) if WHITESPACE.contains(&b)) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.pos += 1; // '{'
        self.skip_whitespace();
        if self.eat(b'}') {
            return true;
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') || !self.string() {
                return false;
            }
            self.skip_whitespace();
            if !self.eat(b':') {
                return false;
            }
            self.skip_whitespace();
            if !self.value(depth) {
                return false;
            }
            self.skip_whitespace();
            if self.eat(b'}') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.pos += 1; // '['
        self.skip_whitespace();
        if self.eat(b']') {
            return true;
        }
        loop {
            self.skip_whitespace();
            if !self.value(depth) {
                return false;
            }
            self.skip_whitespace();
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn string(&mut self) -> bool {
        self.pos += 1; // opening quote
        loop {
            let Some(b) = self.peek() else { return false };
            self.pos += 1;
            match b {
                b'"' => return true,
                b'\\' => {
                    let Some(e) = self.peek() else { return false };
                    self.pos += 1;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.pos..self.pos + 4);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.pos += 4;
                        }
                        _ => return false,
                    }
                }
                0x00..=0x1f => return false,
                _ => {}
            }
        }
    }

    fn number(&mut self) -> bool {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return false,
        }
        if self.eat(b'.') {
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return false;
            }
            self.digits();
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return false;
            }
            self.digits();
        }
        true
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
    fn escapes_like_python_json_dumps() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}\u{7f}é😀\u{2028}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\nd\\u0001\u{7f}é😀\u{2028}\""
        );
    }

    #[test]
    fn validates_rfc8259() {
        for ok in ["0", "-0.5e+3", " {\"a\": [1, true, null]}\n", "\"\\ud800\"", "[]", "{}"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "NaN", "01", "1.", "[1,]", "{\"a\"}", "\"\u{1}\"", "\"\\x\"", "[1] 2", "tru"] {
            assert!(!is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn limits_nesting_depth() {
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(is_valid(&deep(MAX_DEPTH)));
        assert!(!is_valid(&deep(MAX_DEPTH + 1)));
    }

    #[test]
    fn splicing_keeps_the_line_whole() {
        let mut out = Vec::new();
        write_spliced(&mut out, "\n {\"a\":\r\n1} \t");
        assert_eq!(out, b"{\"a\":  1}");
    }
}
