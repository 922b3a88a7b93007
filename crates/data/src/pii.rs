//! Personal data in free text: e-mail addresses, phone numbers, credit card numbers (Luhn
//! checked), IBANs (ISO 13616 mod-97 checked), US social security numbers and IPv4/IPv6
//! addresses. One `RegexSet` pass (linear time) tells which kinds may be present; only those
//! kinds' patterns then run, and numeric candidates must pass their checksum, which keeps order
//! numbers and dates from being reported.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::{Regex, RegexSet};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    CreditCard,
    Iban,
    Ssn,
    IpAddress,
}

impl PiiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Iban => "iban",
            PiiKind::Ssn => "ssn",
            PiiKind::IpAddress => "ip_address",
        }
    }

    /// What redaction puts in place of a match.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::CreditCard => "[CREDIT_CARD]",
            PiiKind::Iban => "[IBAN]",
            PiiKind::Ssn => "[SSN]",
            PiiKind::IpAddress => "[IP_ADDRESS]",
        }
    }
}

/// One match: byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiMatch {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Copy)]
enum Check {
    None,
    Luhn,
    Iban,
    Ssn,
    Ipv4,
    Ipv6,
    PhoneDigits,
}

/// Order matters where kinds overlap (earlier wins): cards and IBANs before phones (a card
/// number also looks like a long phone number), SSNs and IPv4 addresses before phones.
const PATTERNS: [(PiiKind, Check, &str); 7] = [
    (PiiKind::Email, Check::None, r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    (PiiKind::CreditCard, Check::Luhn, r"\b\d(?:[ \-]?\d){12,18}\b"),
    (PiiKind::Iban, Check::Iban, r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    (PiiKind::Ssn, Check::Ssn, r"\b\d{3}-\d{2}-\d{4}\b"),
    (PiiKind::IpAddress, Check::Ipv4, r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
    (PiiKind::IpAddress, Check::Ipv6, r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}"),
    (
        PiiKind::Phone,
        Check::PhoneDigits,
        r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\b\d{2,4}[ .\-])\d{3,4}[ .\-]\d{3,4}\b|\+\d{7,14}\b",
    ),
];

pub struct PiiDetector {
    /// All patterns as one alternation: a text none of them matches (almost every text) is
    /// rejected by one `is_match` scan, cheaper than the set's overlapping search.
    any: Regex,
    set: RegexSet,
    each: Vec<(PiiKind, Check, Regex)>,
}

impl Default for PiiDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl PiiDetector {
    pub fn new() -> Self {
        // The patterns are constants checked by the tests below; failing to compile them is a bug.
        #[allow(clippy::expect_used)]
        let set = RegexSet::new(PATTERNS.iter().map(|p| p.2)).expect("PII patterns compile");
        #[allow(clippy::expect_used)]
        let each =
            PATTERNS.iter().map(|(k, c, p)| (*k, *c, Regex::new(p).expect("PII pattern compiles"))).collect();
        let alternation: Vec<String> = PATTERNS.iter().map(|p| format!("(?:{})", p.2)).collect();
        #[allow(clippy::expect_used)]
        let any = Regex::new(&alternation.join("|")).expect("PII patterns compile");
        Self { any, set, each }
    }

    /// Whether any pattern matches somewhere in `text` (before checksums): `false` means
    /// [`PiiDetector::find`] finds nothing.
    pub fn may_contain(&self, text: &str) -> bool {
        might_match(text) && self.any.is_match(text)
    }

    /// Every validated match, in text order, without overlaps (earlier kinds in `PATTERNS` win).
    pub fn find(&self, text: &str) -> Vec<PiiMatch> {
        if !self.may_contain(text) {
            return Vec::new();
        }
        let hits = self.set.matches(text);
        if !hits.matched_any() {
            return Vec::new();
        }
        let mut found: Vec<PiiMatch> = Vec::new();
        for i in hits.iter() {
            let (kind, check, re) = &self.each[i];
            for m in re.find_iter(text) {
                let s = m.as_str();
                let ok = match check {
                    Check::None => true,
                    Check::Luhn => luhn_valid(s),
                    Check::Iban => iban_valid(s),
                    Check::Ssn => ssn_plausible(s),
                    Check::Ipv4 => s.parse::<Ipv4Addr>().is_ok(),
                    Check::Ipv6 => ipv6_plausible(s),
                    Check::PhoneDigits => (7..=15).contains(&s.bytes().filter(u8::is_ascii_digit).count()),
                };
                if ok && !found.iter().any(|f| f.start < m.end() && m.start() < f.end) {
                    found.push(PiiMatch { kind: *kind, start: m.start(), end: m.end() });
                }
            }
        }
        found.sort_by_key(|m| m.start);
        found
    }

    /// The text with each match replaced by its kind's placeholder, and the matches.
    pub fn redact(&self, text: &str) -> (String, Vec<PiiMatch>) {
        let matches = self.find(text);
        if matches.is_empty() {
            return (text.to_string(), matches);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for m in &matches {
            out.push_str(&text[at..m.start]);
            out.push_str(m.kind.placeholder());
            at = m.end;
        }
        out.push_str(&text[at..]);
        (out, matches)
    }
}

/// A necessary condition for any of `PATTERNS` to match, cheaper than the regex scan: in ASCII
/// text every pattern needs an `@` (e-mail), two `:` (IPv6), `+` before a digit (phone), a
/// digit, then a space, `.` or `-`, then a digit (phone, SSN, IPv4, card numbers with
/// separators), 13 digits (card numbers without), or two capitals before two digits (IBAN).
/// Text with a non-ASCII byte goes to the regex (`\d` matches every Unicode digit).
fn might_match(text: &str) -> bool {
    const BLOCK: usize = 32;
    let b = text.as_bytes();
    let interesting = |c: u8| c.is_ascii_digit() || c == b'@' || c == b':' || c == b'+' || c >= 0x80;
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let (mut digits, mut colons) = (0, 0);
    for (k, block) in b.chunks(BLOCK).enumerate() {
        // Most blocks hold none of these bytes; this test vectorises.
        if !block.iter().fold(false, |any, &c| any | interesting(c)) {
            continue;
        }
        for (j, &c) in block.iter().enumerate() {
            let i = k * BLOCK + j;
            match c {
                b'0'..=b'9' => {
                    digits += 1;
                    let separated = matches!(at(i + 1), b' ' | b'.' | b'-') && at(i + 2).is_ascii_digit();
                    let iban = i >= 2
                        && at(i + 1).is_ascii_digit()
                        && b[i - 1].is_ascii_uppercase()
                        && b[i - 2].is_ascii_uppercase();
                    if digits >= 13 || separated || iban {
                        return true;
                    }
                }
                b':' => {
                    colons += 1;
                    if colons >= 2 {
                        return true;
                    }
                }
                b'+' if at(i + 1).is_ascii_digit() => return true,
                b'@' => return true,
                0x80.. => return true,
                _ => {}
            }
        }
    }
    false
}

/// Luhn checksum over the digits of `s` (separators ignored); 13–19 digits as card numbers have.
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == 0) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 IBAN check: move the first four characters to the end, letters to 10..35, and
/// the number mod 97 must be 1. Spaces are ignored; 15–34 characters.
pub fn iban_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else {
            rem = (rem * 100 + u32::from(b - b'A' + 10)) % 97;
        }
    }
    rem == 1
}

/// SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn_plausible(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, group, serial] = parts.as_slice() else { return false };
    *area != "000" && *area != "666" && !area.starts_with('9') && *group != "00" && *serial != "0000"
}

/// Colon runs that parse as IPv6 and carry at least three groups or a `::` with two groups,
/// so times like `10:30` or `a::` in prose are not reported.
fn ipv6_plausible(s: &str) -> bool {
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    s.parse::<Ipv6Addr>().is_ok() && (groups >= 3 || (s.contains("::") && groups >= 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<PiiKind> {
        PiiDetector::new().find(text).into_iter().map(|m| m.kind).collect()
    }

    #[test]
    fn each_kind_is_found_in_prose() {
        assert_eq!(kinds("mail jane.doe+x@mail.example.co.uk now"), vec![PiiKind::Email]);
        assert_eq!(kinds("call +1 415-555-0132 or (020) 7946 0958"), vec![PiiKind::Phone, PiiKind::Phone]);
        assert_eq!(kinds("card 4111 1111 1111 1111 ok"), vec![PiiKind::CreditCard]);
        assert_eq!(kinds("IBAN GB82 WEST 1234 5698 7654 32."), vec![PiiKind::Iban]);
        assert_eq!(kinds("ssn 123-45-6789"), vec![PiiKind::Ssn]);
        assert_eq!(
            kinds("from 192.168.0.1 and 2001:db8::8a2e:370:7334"),
            vec![PiiKind::IpAddress, PiiKind::IpAddress]
        );
    }

    #[test]
    fn checksums_reject_look_alikes() {
        assert!(kinds("order 4111 1111 1111 1112").iter().all(|k| *k != PiiKind::CreditCard));
        assert!(!kinds("ref GB82 WEST 1234 5698 7654 33").contains(&PiiKind::Iban));
        assert!(kinds("version 1.2.3.400 at 10:30:00").is_empty());
        assert!(kinds("ssn 666-45-6789").iter().all(|k| *k != PiiKind::Ssn));
    }

    #[test]
    fn redaction_replaces_every_match_with_its_placeholder() {
        let (out, m) = PiiDetector::new().redact("write to a@b.io or 10.0.0.1");
        assert_eq!(out, "write to [EMAIL] or [IP_ADDRESS]");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn the_alternation_prefilter_agrees_with_the_set() {
        let d = PiiDetector::new();
        for t in [
            "",
            "plain words only",
            "a@b.io",
            "4111 1111 1111 1111",
            "GB82 WEST 1234 5698 7654 32",
            "123-45-6789",
            "10.0.0.1",
            "fe80::1:2",
            "+1 415-555-0132",
            "10:30",
            "v1.2.3",
        ] {
            assert_eq!(d.may_contain(t), d.set.is_match(t), "{t}");
        }
    }

    #[test]
    fn the_byte_prefilter_passes_every_text_a_pattern_matches() {
        use rand::{Rng, SeedableRng};
        // Short texts over the characters the patterns are made of, so that many match.
        let alphabet: Vec<char> = "0123456789      ..::@+()--ABCFGXZabcfx\né٣".chars().collect();
        let d = PiiDetector::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (mut matched, mut skipped) = (0, 0);
        for _ in 0..200_000 {
            let n = rng.random_range(0..40);
            let t: String = (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let (pass, hit) = (might_match(&t), d.any.is_match(&t));
            assert!(pass || !hit, "{t:?}");
            matched += usize::from(hit);
            skipped += usize::from(!pass);
        }
        assert!(matched > 10_000 && skipped > 10_000, "{matched} matched, {skipped} skipped");
    }

    #[test]
    fn the_byte_prefilter_passes_the_examples() {
        for t in [
            "a@b.io",
            "4111 1111 1111 1111",
            "4111111111111111",
            "GB82 WEST 1234 5698 7654 32",
            "123-45-6789",
            "10.0.0.1",
            "fe80::1:2",
            "+1 415-555-0132",
            "+14155550132",
            "(020) 7946 0958",
            "٣٣٣-٣٣-٣٣٣٣",
        ] {
            assert!(might_match(t), "{t}");
        }
        for t in [
            "Hi, question 123456: order refund?",
            "Answer 123456: parcel late.",
            "10:30",
            "You are the support assistant.",
        ] {
            assert!(!might_match(t), "{t}");
        }
    }

    #[test]
    fn luhn_and_iban_match_known_values() {
        assert!(!luhn_valid("79927398713000"));
        assert!(luhn_valid("4012888888881881"));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(!iban_valid("DE89370400440532013001"));
    }
}
