//! HTML → plain text for indexing. Hand-written rather than an HTML5 parser crate: the crates
//! that parse HTML properly (html5ever and what wraps it) add ~40 dependencies and a code-generating
//! build, while indexing only needs the visible text with block boundaries kept as paragraph
//! breaks (so chunking can respect them). Handles comments, `<!DOCTYPE>`, CDATA, quoted attributes
//! containing `>`, skipped elements (`script`, `style`, `noscript`, `template`, `svg`, `title`), `<pre>`
//! whitespace, and named / numeric character references. Malformed input never fails: a stray
//! `<` that opens no tag is kept as text.

/// Elements that end a paragraph (a blank line in the text).
const BLOCK: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "ul",
    "title",
    "body",
    "html",
    "head",
];
/// Elements that end a line.
const LINE: &[&str] = &["br", "li", "tr", "caption", "option"];
/// Elements whose content is not visible text. `title` too: pages repeat it as their `h1`, and a
/// duplicated heading would only skew BM25 term frequencies.
const SKIP: &[&str] = &["script", "style", "noscript", "template", "svg", "iframe", "object", "title"];

/// The visible text of an HTML document; paragraphs separated by blank lines.
pub fn html_to_text(html: &str) -> String {
    let mut out = Out::default();
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut skip_until: Option<String> = None;
    let mut pre_depth = 0usize;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            let end = html[i..].find('<').map_or(html.len(), |p| i + p);
            if skip_until.is_none() {
                out.text(&decode_entities(&html[i..end]), pre_depth > 0);
            }
            i = end;
            continue;
        }
        let rest = &html[i..];
        if let Some(body) = rest.strip_prefix("<!--") {
            i += 4 + body.find("-->").map_or(body.len(), |p| p + 3);
            continue;
        }
        if let Some(body) = rest.strip_prefix("<![CDATA[") {
            let n = body.find("]]>").unwrap_or(body.len());
            if skip_until.is_none() {
                out.text(&body[..n], pre_depth > 0);
            }
            i += 9 + (n + 3).min(body.len());
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            i += rest.find('>').map_or(rest.len(), |p| p + 1);
            continue;
        }
        let Some((name, closing, len)) = parse_tag(rest) else {
            // Not a tag ("a < b"): literal text.
            if skip_until.is_none() {
                out.text("<", pre_depth > 0);
            }
            i += 1;
            continue;
        };
        i += len;
        if let Some(until) = &skip_until {
            if closing && *until == name {
                skip_until = None;
            }
            continue;
        }
        let self_closing = rest[..len].ends_with("/>");
        if !closing && !self_closing && SKIP.contains(&name.as_str()) {
            skip_until = Some(name);
            continue;
        }
        if name == "pre" {
            pre_depth = if closing { pre_depth.saturating_sub(1) } else { pre_depth + 1 };
        }
        if BLOCK.contains(&name.as_str()) {
            out.paragraph();
        } else if LINE.contains(&name.as_str()) {
            out.line();
        } else if name == "td" || name == "th" {
            out.text(" ", false);
        }
    }
    out.finish()
}

/// `<name ...>` or `</name ...>` at the start of `s`: (lower-case name, closing, byte length).
fn parse_tag(s: &str) -> Option<(String, bool, usize)> {
    let b = s.as_bytes();
    let mut i = 1;
    let closing = b.get(1) == Some(&b'/');
    if closing {
        i += 1;
    }
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b':') {
        i += 1;
    }
    if i == start || !b[start].is_ascii_alphabetic() {
        return None;
    }
    let name = s[start..i].to_ascii_lowercase();
    // Scan to the closing '>' outside quoted attribute values.
    let mut quote: Option<u8> = None;
    while i < b.len() {
        match (quote, b[i]) {
            (None, b'>') => return Some((name, closing, i + 1)),
            (None, q @ (b'"' | b'\'')) => quote = Some(q),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        i += 1;
    }
    Some((name, closing, b.len()))
}

#[derive(Default)]
struct Out {
    s: String,
    /// Newlines owed before the next text (1 = line break, 2 = paragraph break).
    pending: usize,
}

impl Out {
    fn text(&mut self, t: &str, pre: bool) {
        let emit = |out: &mut Out, piece: &str| {
            if piece.is_empty() {
                return;
            }
            if out.pending > 0 {
                out.s.truncate(out.s.trim_end_matches([' ', '\t']).len());
                if !out.s.is_empty() {
                    let have = out.s.len() - out.s.trim_end_matches('\n').len();
                    for _ in have..out.pending {
                        out.s.push('\n');
                    }
                }
                out.pending = 0;
            }
            out.s.push_str(piece);
        };
        if pre {
            emit(self, t);
            return;
        }
        // Collapse whitespace runs to one space, as a browser lays text out.
        let mut collapsed = String::with_capacity(t.len());
        let mut space = false;
        for c in t.chars() {
            if c.is_whitespace() && c != '\u{a0}' {
                space = true;
            } else {
                if space && (!collapsed.is_empty() || !self.at_line_start()) {
                    collapsed.push(' ');
                }
                space = false;
                collapsed.push(if c == '\u{a0}' { ' ' } else { c });
            }
        }
        if space && !collapsed.is_empty() {
            collapsed.push(' ');
        }
        if collapsed.is_empty() && space && !self.at_line_start() && self.pending == 0 {
            collapsed.push(' ');
        }
        emit(self, &collapsed);
    }

    fn at_line_start(&self) -> bool {
        self.pending > 0 || self.s.is_empty() || self.s.ends_with('\n') || self.s.ends_with(' ')
    }

    fn line(&mut self) {
        self.pending = self.pending.max(1);
    }

    fn paragraph(&mut self) {
        self.pending = 2;
    }

    fn finish(self) -> String {
        let lines: Vec<&str> = self.s.lines().map(str::trim_end).collect();
        lines.join("\n").trim().to_string()
    }
}

/// Replaces `&name;`, `&#123;` and `&#x1F600;`; unknown references stay as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).map(|e| e + 1);
        let decoded = match end {
            Some(e) if rest.as_bytes()[e] == b';' => decode_one(&rest[1..e]).map(|c| (c, e + 1)),
            _ => None,
        };
        match decoded {
            Some((c, n)) => {
                out.push(c);
                rest = &rest[n..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_one(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|&c| c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "deg" => '°',
        "times" => '×',
        "divide" => '÷',
        "plusmn" => '±',
        "frac12" => '½',
        "sect" => '§',
        "para" => '¶',
        "shy" => '\u{ad}',
        "auml" => 'ä',
        "ouml" => 'ö',
        "uuml" => 'ü',
        "Auml" => 'Ä',
        "Ouml" => 'Ö',
        "Uuml" => 'Ü',
        "szlig" => 'ß',
        "eacute" => 'é',
        "egrave" => 'è',
        "Eacute" => 'É',
        "agrave" => 'à',
        "aacute" => 'á',
        "ccedil" => 'ç',
        "ntilde" => 'ñ',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_paragraphs_and_inline_tags_vanish() {
        let html = "<html><head><title>Returns</title><style>p{color:red}</style></head>\
                    <body><h1>Returns  policy</h1><p>Send it <b>back</b>\n within 30 days.</p>\
                    <ul><li>Free label</li><li>Refund in 5 days</li></ul><script>alert('x<y')</script></body></html>";
        assert_eq!(
            html_to_text(html),
            "Returns policy\n\nSend it back within 30 days.\n\nFree label\nRefund in 5 days"
        );
    }

    #[test]
    fn entities_comments_and_quoted_gt_are_handled() {
        let html = "<p title=\"a > b\">Fish &amp; chips &euro;9.90 &#8211; &#x1F600; &bogus; &amp</p><!-- <p>hidden</p> -->";
        assert_eq!(html_to_text(html), "Fish & chips €9.90 – 😀 &bogus; &amp");
    }

    #[test]
    fn stray_less_than_is_text_and_pre_keeps_whitespace() {
        assert_eq!(html_to_text("<p>1 < 2</p><pre>a  b\n  c</pre>"), "1 < 2\n\na  b\n  c");
    }

    #[test]
    fn unterminated_markup_does_not_panic() {
        for s in ["<", "<p", "<!--", "<![CDATA[x", "<a href='", "&", "&#", "&#x;", "<script>never closed"] {
            let _ = html_to_text(s);
        }
    }
}
