//! Raw line metrics exactly as radon 6.0.1 (`radon.raw.analyze`) computes them on Python 3.11.
//!
//! radon does not count lines from a parse tree: it strips every line (Python's `str.splitlines`,
//! so form feeds and other separators also end lines), then re-tokenizes the smallest run of
//! stripped lines that CPython 3.11's pure-Python `tokenize` accepts without `TokenError` or
//! `ERRORTOKEN`, and classifies that run. Users compare our numbers with radon's, so this module
//! reproduces that process, quirks included (for instance `d = {1: 2}` is two logical lines,
//! because radon looks for the last `:` of a statement). The tokenizer below follows 3.11's
//! `tokenize._tokenize` state machine; it is driven incrementally so a long string costs linear
//! time instead of radon's quadratic re-tokenization.

use pyo3::prelude::*;

/// radon's `Module` tuple.
#[pyclass(frozen, eq, get_all, module = "pyagent._rust")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawMetrics {
    pub loc: u64,
    pub lloc: u64,
    pub sloc: u64,
    pub comments: u64,
    pub multi: u64,
    pub blank: u64,
    pub single_comments: u64,
}

/// Where radon's tokenizer loop gives up (it raises `SyntaxError` at that line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawError {
    pub line: usize,
}

/// The token kinds radon's classification looks at; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tk {
    Comment,
    Str { srow: u32, erow: u32 },
    Colon,
    Semi,
    Nl,
    Newline,
    EndMarker,
    Error,
    Other,
}

/// Python's `str.isspace()` (what `str.strip()` removes).
fn py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\x0b'
            | '\x0c'
            | '\r'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `str.splitlines()` boundaries, after universal-newline translation (no `\r` left).
#[cfg(test)]
fn py_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// `[l.strip() for l in source.splitlines()]`; `source` must already have `\r\n`/`\r` turned into `\n`.
fn stripped_lines(source: &str) -> Vec<&str> {
    let b = source.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 32 + 1);
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        // Byte-level test for the separators of `py_line_break` (U+0085 is C2 85, U+2028/9 E2 80 A8/A9).
        let width = match b[i] {
            b'\n' | b'\r' | 0x0b | 0x0c | 0x1c | 0x1d | 0x1e => 1,
            0xc2 if b.get(i + 1) == Some(&0x85) => 2,
            0xe2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xa8 | 0xa9)) => 3,
            _ => 0,
        };
        if width == 0 {
            i += 1;
            continue;
        }
        out.push(source[start..i].trim_matches(py_space));
        i += width;
        start = i;
    }
    if start < b.len() {
        out.push(source[start..].trim_matches(py_space));
    }
    out
}

/// Python `\w` (Unicode alphanumeric or underscore), close enough for source code.
fn is_word(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn digitpart(s: &[u8], i: usize) -> Option<usize> {
    if i < s.len() && s[i].is_ascii_digit() {
        let mut j = i + 1;
        loop {
            if j < s.len() && s[j].is_ascii_digit() {
                j += 1;
            } else if j + 1 < s.len() && s[j] == b'_' && s[j + 1].is_ascii_digit() {
                j += 2;
            } else {
                return Some(j);
            }
        }
    }
    None
}

fn exponent(s: &[u8], i: usize) -> Option<usize> {
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        let k = if i + 1 < s.len() && (s[i + 1] == b'+' || s[i + 1] == b'-') { i + 2 } else { i + 1 };
        return digitpart(s, k);
    }
    None
}

fn pointfloat(s: &[u8], i: usize) -> Option<usize> {
    let base = if let Some(d) = digitpart(s, i).filter(|&d| d < s.len() && s[d] == b'.') {
        digitpart(s, d + 1).unwrap_or(d + 1)
    } else if i < s.len() && s[i] == b'.' {
        digitpart(s, i + 1)?
    } else {
        return None;
    };
    Some(exponent(s, base).unwrap_or(base))
}

fn expfloat(s: &[u8], i: usize) -> Option<usize> {
    exponent(s, digitpart(s, i)?)
}

fn is_j(s: &[u8], i: usize) -> bool {
    i < s.len() && (s[i] == b'j' || s[i] == b'J')
}

fn radix_int(s: &[u8], i: usize, marks: [u8; 2], ok: fn(u8) -> bool) -> Option<usize> {
    if i + 1 < s.len() && s[i] == b'0' && (s[i + 1] == marks[0] || s[i + 1] == marks[1]) {
        let mut j = i + 2;
        let mut any = false;
        loop {
            if j < s.len() && ok(s[j]) {
                j += 1;
            } else if j + 1 < s.len() && s[j] == b'_' && ok(s[j + 1]) {
                j += 2;
            } else {
                break;
            }
            any = true;
        }
        if any {
            return Some(j);
        }
    }
    None
}

/// tokenize's `Number` regex with Python's leftmost-first alternation order.
fn number(s: &[u8], i: usize) -> Option<usize> {
    if let Some(d) = digitpart(s, i).filter(|&d| is_j(s, d)) {
        return Some(d + 1);
    }
    if let Some(p) = pointfloat(s, i).filter(|&p| is_j(s, p)) {
        return Some(p + 1);
    }
    if let Some(e) = expfloat(s, i).filter(|&e| is_j(s, e)) {
        return Some(e + 1);
    }
    if let Some(f) = pointfloat(s, i).or_else(|| expfloat(s, i)) {
        return Some(f);
    }
    if let Some(e) = radix_int(s, i, [b'x', b'X'], |c| c.is_ascii_hexdigit())
        .or_else(|| radix_int(s, i, [b'b', b'B'], |c| c == b'0' || c == b'1'))
        .or_else(|| radix_int(s, i, [b'o', b'O'], |c| (b'0'..=b'7').contains(&c)))
    {
        return Some(e);
    }
    if i < s.len() && s[i] == b'0' {
        let mut j = i + 1;
        loop {
            if j < s.len() && s[j] == b'0' {
                j += 1;
            } else if j + 1 < s.len() && s[j] == b'_' && s[j + 1] == b'0' {
                j += 2;
            } else {
                return Some(j);
            }
        }
    }
    digitpart(s, i).filter(|_| s[i] != b'0')
}

const OPS3: [&[u8]; 5] = [b"**=", b"...", b"//=", b"<<=", b">>="];
const OPS2: [&[u8]; 19] = [
    b"!=", b"%=", b"&=", b"**", b"*=", b"+=", b"-=", b"->", b"//", b"/=", b":=", b"<<", b"<=", b"==", b">=",
    b">>", b"@=", b"^=", b"|=",
];
const OPS1: &[u8] = b"%&()*+,-./:;<=>@[]^{|}~";

/// tokenize's `Special` (exact operator tokens, longest first).
fn special(s: &[u8], i: usize) -> Option<usize> {
    let rest = &s[i..];
    if OPS3.iter().any(|op| rest.starts_with(op)) {
        return Some(i + 3);
    }
    if OPS2.iter().any(|op| rest.starts_with(op)) {
        return Some(i + 2);
    }
    if !rest.is_empty() && OPS1.contains(&rest[0]) {
        return Some(i + 1);
    }
    None
}

/// Length of a valid string prefix (b, r, u, f, br, rb, fr, rf in any case) at `i`, if followed by a quote.
fn string_prefix(s: &[u8], i: usize) -> Option<usize> {
    let low = |k: usize| if i + k < s.len() { s[i + k].to_ascii_lowercase() } else { 0 };
    let is_quote = |k: usize| i + k < s.len() && (s[i + k] == b'\'' || s[i + k] == b'"');
    if is_quote(0) {
        return Some(0);
    }
    let two = matches!((low(0), low(1)), (b'b', b'r') | (b'r', b'b') | (b'f', b'r') | (b'r', b'f'));
    if two && is_quote(2) {
        return Some(2);
    }
    if matches!(low(0), b'b' | b'r' | b'u' | b'f') && is_quote(1) {
        return Some(1);
    }
    None
}

/// End of the tail of a string whose quote is `q` (`triple`: `Single3`/`Double3`, else `Single`/`Double`,
/// newlines allowed) starting at `i`; `None` at a backslash-newline or the end of the text.
fn string_end(s: &[u8], mut i: usize, q: u8, triple: bool) -> Option<usize> {
    while i < s.len() {
        let c = s[i];
        if c == b'\\' {
            if i + 1 < s.len() && s[i + 1] != b'\n' {
                i += 2;
                continue;
            }
            return None;
        }
        if c == q {
            if !triple {
                return Some(i + 1);
            }
            if i + 2 < s.len() && s[i + 1] == q && s[i + 2] == q {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The first line of a `'`/`"` string (`ContStr`): ends at the quote or at a backslash-newline.
fn contstr(s: &[u8], mut i: usize, q: u8) -> Option<usize> {
    while i < s.len() {
        let c = s[i];
        if c == b'\n' {
            return None;
        }
        if c == q {
            return Some(i + 1);
        }
        if c == b'\\' {
            if i + 1 < s.len() && s[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if i + 1 < s.len() {
                i += 2;
                continue;
            }
            return None;
        }
        i += 1;
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndPat {
    Single(u8),
    Triple(u8),
}

/// The state `_tokenize` carries from one line to the next.
#[derive(Clone, Debug, Default)]
struct TokState {
    lnum: u32,
    parenlev: i64,
    continued: bool,
    contstr: Option<(EndPat, u32)>,
    needcont: bool,
}

/// Raised by tokenize at end of input inside a string or a bracketed/continued statement.
struct TokenError;

enum Pseudo {
    Empty,
    Continuation,
    Comment,
    Triple(u8),
    Number,
    Newline,
    Op(u8),
    Str,
    ContStr(u8),
    Name(bool),
}

/// `PseudoToken.match(line, pos)` after the leading whitespace: (kind, end).
fn pseudo(line: &str, i: usize) -> Option<(Pseudo, usize)> {
    let s = line.as_bytes();
    if i >= s.len() {
        return Some((Pseudo::Empty, i));
    }
    let c = s[i];
    if c == b'\\' && i + 1 < s.len() && s[i + 1] == b'\n' {
        return Some((Pseudo::Continuation, i + 2));
    }
    if c == b'#' {
        let end = s[i..].iter().position(|&b| b == b'\n' || b == b'\r').map_or(s.len(), |p| i + p);
        return Some((Pseudo::Comment, end));
    }
    let prefix = string_prefix(s, i);
    if let Some(p) = prefix {
        let q = s[i + p];
        if i + p + 2 < s.len() && s[i + p + 1] == q && s[i + p + 2] == q {
            return Some((Pseudo::Triple(q), i + p + 3));
        }
    }
    if c.is_ascii_digit() || c == b'.' {
        if let Some(e) = number(s, i) {
            return Some((Pseudo::Number, e));
        }
    }
    if c == b'\n' {
        return Some((Pseudo::Newline, i + 1));
    }
    if let Some(e) = special(s, i) {
        return Some((Pseudo::Op(c), e));
    }
    if let Some(p) = prefix {
        let q = s[i + p];
        if let Some(e) = contstr(s, i + p + 1, q) {
            return Some(if s[e - 1] == b'\n' { (Pseudo::ContStr(q), e) } else { (Pseudo::Str, e) });
        }
    }
    let first = line[i..].chars().next()?;
    if is_word(first) {
        let mut end = i;
        while end < s.len() && (s[end].is_ascii_alphanumeric() || s[end] == b'_') {
            end += 1;
        }
        if end < s.len() && s[end] >= 0x80 {
            end = line[end..].char_indices().find(|&(_, ch)| !is_word(ch)).map_or(line.len(), |(k, _)| end + k);
        }
        return Some((Pseudo::Name(first == '_' || first.is_alphabetic()), end));
    }
    None
}

impl TokState {
    /// Feeds one line as `readline()` returns it (`line` includes its `\n`, or is the unterminated
    /// last line; `None` is end of input). Mirrors the body of `_tokenize`'s line loop.
    fn feed(&mut self, line: Option<&str>, out: &mut Vec<Tk>) -> Result<bool, TokenError> {
        self.lnum += 1;
        let lnum = self.lnum;
        let line = line.unwrap_or("");
        let s = line.as_bytes();
        let max = s.len();
        let mut pos = 0usize;
        if let Some((pat, srow)) = self.contstr {
            if line.is_empty() {
                return Err(TokenError);
            }
            let end = match pat {
                EndPat::Single(q) => string_end(s, 0, q, false),
                EndPat::Triple(q) => string_end(s, 0, q, true),
            };
            if let Some(end) = end {
                pos = end;
                out.push(Tk::Str { srow, erow: lnum });
                self.contstr = None;
                self.needcont = false;
            } else if self.needcont && !line.ends_with("\\\n") && !line.ends_with("\\\r\n") {
                out.push(Tk::Error);
                self.contstr = None;
                return Ok(true);
            } else {
                return Ok(true);
            }
        } else if self.parenlev == 0 && !self.continued {
            if line.is_empty() {
                return Ok(false);
            }
            while pos < max && matches!(s[pos], b' ' | b'\t' | b'\x0c') {
                pos += 1;
            }
            if pos == max {
                return Ok(false);
            }
            if matches!(s[pos], b'#' | b'\r' | b'\n') {
                if s[pos] == b'#' {
                    out.push(Tk::Comment);
                }
                out.push(Tk::Nl);
                return Ok(true);
            }
        } else {
            if line.is_empty() {
                return Err(TokenError);
            }
            self.continued = false;
        }

        while pos < max {
            let mut start = pos;
            while start < max && matches!(s[start], b' ' | b'\t' | b'\x0c') {
                start += 1;
            }
            let Some((kind, end)) = pseudo(line, start) else {
                out.push(Tk::Error);
                pos += line[pos..].chars().next().map_or(1, char::len_utf8);
                continue;
            };
            pos = end;
            if start == end {
                continue;
            }
            match kind {
                Pseudo::Empty => {}
                Pseudo::Number | Pseudo::Name(true) => out.push(Tk::Other),
                Pseudo::Newline => out.push(if self.parenlev > 0 { Tk::Nl } else { Tk::Newline }),
                Pseudo::Comment => out.push(Tk::Comment),
                Pseudo::Triple(q) => {
                    if let Some(e) = string_end(s, pos, q, true) {
                        pos = e;
                        out.push(Tk::Str { srow: lnum, erow: lnum });
                    } else {
                        self.contstr = Some((EndPat::Triple(q), lnum));
                        break;
                    }
                }
                Pseudo::ContStr(q) => {
                    self.contstr = Some((EndPat::Single(q), lnum));
                    self.needcont = true;
                    break;
                }
                Pseudo::Str => out.push(Tk::Str { srow: lnum, erow: lnum }),
                Pseudo::Continuation => self.continued = true,
                Pseudo::Op(c) => {
                    let single = end - start == 1;
                    match c {
                        b'(' | b'[' | b'{' => self.parenlev += 1,
                        b')' | b']' | b'}' => self.parenlev -= 1,
                        _ => {}
                    }
                    out.push(match (c, single) {
                        (b':', true) => Tk::Colon,
                        (b';', true) => Tk::Semi,
                        _ => Tk::Other,
                    });
                }
                Pseudo::Name(false) => out.push(Tk::Other),
            }
        }
        Ok(true)
    }
}

/// Tokens for one attempt of `_get_all_tokens`: the committed state plus `last` without newline.
fn finish_attempt(state: &TokState, last: &str, out: &mut Vec<Tk>) -> Result<(), TokenError> {
    let mut st = state.clone();
    // `last_line` as tokenize sees it when input ends: the unterminated `last`, or the previous
    // line (which ends with a newline) when `last` is empty.
    let mut last_line_unterminated = false;
    if !last.is_empty() {
        if st.feed(Some(last), out)? {
            st.feed(None, out)?;
        }
        last_line_unterminated = true;
    } else {
        st.feed(None, out)?;
    }
    if last_line_unterminated && !last.starts_with('#') {
        out.push(Tk::Newline);
    }
    out.push(Tk::EndMarker);
    Ok(())
}

/// radon's `_logical`: logical lines in one run of tokens.
fn logical(tokens: &[Tk]) -> u64 {
    let mut total = 0;
    for part in tokens.split(|t| *t == Tk::Semi) {
        // Over the part without comments and newlines: its length, the index of the last `:`,
        // and whether anything but the end marker is left.
        let (mut len, mut colon, mut content) = (0isize, None, false);
        for t in part {
            match t {
                Tk::Comment | Tk::Nl | Tk::Newline => continue,
                Tk::Colon => colon = Some(len),
                Tk::EndMarker => {}
                _ => {}
            }
            content |= *t != Tk::EndMarker;
            len += 1;
        }
        total += match colon {
            Some(idx) if idx == len - 2 => 1,
            Some(_) => 2,
            None => u64::from(content),
        };
    }
    total
}

fn only_trailing(tokens: &[Tk]) -> bool {
    tokens.iter().all(|t| matches!(t, Tk::EndMarker | Tk::Nl | Tk::Newline))
}

/// radon's `analyze(source)`. `source` must use `\n` line endings (what `open()` gives radon).
pub fn analyze(source: &str) -> Result<RawMetrics, RawError> {
    let lines = stripped_lines(source);
    let mut m = RawMetrics::default();
    let mut tokens: Vec<Tk> = Vec::new();
    let mut committed: Vec<Tk> = Vec::new();
    let mut tail: Vec<Tk> = Vec::new();
    let mut buf = String::new();
    let mut i = 0;
    while i < lines.len() {
        // Grow the run [i..=j] until tokenize accepts it (radon's `_get_all_tokens`).
        let mut state = TokState::default();
        committed.clear();
        let mut committed_error = false;
        let mut j = i;
        loop {
            // The attempt's own tokens go to `tail`, so a long run costs linear time, not quadratic.
            tail.clear();
            let ok = finish_attempt(&state, lines[j], &mut tail).is_ok()
                && !committed_error
                && !tail.contains(&Tk::Error);
            if ok {
                tokens.clear();
                tokens.extend_from_slice(&committed);
                tokens.extend_from_slice(&tail);
                break;
            }
            buf.clear();
            buf.push_str(lines[j]);
            buf.push('\n');
            let before = committed.len();
            // A line fed with its newline can only fail at end of input, which is not here.
            let _ = state.feed(Some(&buf), &mut committed);
            if committed[before..].contains(&Tk::Error) {
                committed_error = true;
            }
            j += 1;
            if j >= lines.len() {
                return Err(RawError { line: i + 1 });
            }
        }
        let run = &lines[i..=j];
        let nonempty = run.iter().filter(|l| !l.is_empty()).count() as u64;
        let empty = run.len() as u64 - nonempty;
        m.comments += tokens.iter().filter(|t| **t == Tk::Comment).count() as u64;
        match tokens.first() {
            Some(Tk::Comment) if only_trailing(&tokens[1..]) => m.single_comments += 1,
            Some(Tk::Str { srow, erow }) if only_trailing(&tokens[1..]) => {
                if srow == erow {
                    m.single_comments += 1;
                } else {
                    m.multi += nonempty;
                    m.blank += empty;
                }
            }
            _ => {
                m.sloc += nonempty;
                m.blank += empty;
            }
        }
        m.lloc += logical(&tokens);
        i = j + 1;
    }
    m.loc = m.sloc + m.blank + m.multi + m.single_comments;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_line_split_matches_char_level() {
        let text = "a\x0bb\x0cc\u{85}d\u{2028}e\u{2029}f\x1cg\x1fh \u{a0}\n\n é\u{2027}";
        let mut expected = Vec::new();
        let mut cur = String::new();
        for c in text.chars() {
            if py_line_break(c) {
                expected.push(cur.trim_matches(py_space).to_string());
                cur.clear();
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            expected.push(cur.trim_matches(py_space).to_string());
        }
        assert_eq!(stripped_lines(text), expected);
    }

    #[test]
    fn simple_module() {
        let m = analyze("\"\"\"Doc.\n\nMore.\n\"\"\"\nimport os  # c\n\n# only\nif x: y = 1\n").unwrap();
        assert_eq!((m.multi, m.sloc, m.blank, m.comments, m.single_comments), (3, 2, 2, 2, 1));
        assert_eq!(m.lloc, 4);
    }
}
