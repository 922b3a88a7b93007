//! A version's lineage for people: [`tree`] (what `ferrotune registry show NAME@VERSION` prints:
//! data → run → artifact → evals → releases) and [`dot`] (the same graph for Graphviz). The
//! readers of the records both views share (an eval's scores for this version, a dataset's role,
//! timestamps and number formats) live here too, and the model card (`card`) uses them.

use std::fmt::Write;

use serde_json::Value;

use crate::records::{ArtifactKind, DatasetRecord, EvalRecord, FileHash, HistoryEvent, Lineage, RunStatus};

/// At most this many evals / release events in the tree; the rest are counted.
const MAX_LISTED: usize = 10;

// ---- the records, read ----

/// A value with its 95% interval, as `eval.json` writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    pub value: f64,
    pub ci95: Option<(f64, f64)>,
}

/// One metric of an evaluation, seen from one artifact version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricRow {
    pub name: String,
    pub higher_is_better: Option<bool>,
    pub this: Option<Estimate>,
    pub base: Option<Estimate>,
    /// This version minus the base, paired over rows (`vs_base`).
    pub diff: Option<Estimate>,
}

/// An evaluation seen from one artifact version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EvalView {
    /// The system matched to the version (`None`: the version is not among its systems).
    pub system: Option<String>,
    pub base_system: Option<String>,
    /// Every system's name, in the eval's order.
    pub systems: Vec<String>,
    pub rows: Vec<MetricRow>,
}

fn estimate(v: &Value) -> Option<Estimate> {
    let value = v.get("value")?.as_f64()?;
    let ci95 = v.get("ci95").and_then(Value::as_array).and_then(|a| match a.as_slice() {
        [lo, hi] => Some((lo.as_f64()?, hi.as_f64()?)),
        _ => None,
    });
    Some(Estimate { value, ci95 })
}

fn score_of<'a>(list: Option<&'a Value>, system: Option<&str>) -> Option<&'a Value> {
    let system = system?;
    list?.as_array()?.iter().find(|s| s.get("system").and_then(Value::as_str) == Some(system))
}

/// Read `e` from the side of the artifact version `artifact`: its system is the one the
/// registry matched to that version id; the base is the system without an adapter.
pub(crate) fn eval_view(e: &EvalRecord, artifact: i64) -> EvalView {
    let system = e.systems.iter().find(|(_, id)| *id == Some(artifact)).map(|(s, _)| s.name.clone());
    let base_system = e.systems.iter().find(|(s, _)| s.adapter.is_none()).map(|(s, _)| s.name.clone());
    let rows = e
        .metrics
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    Some(MetricRow {
                        name: m.get("name")?.as_str()?.to_string(),
                        higher_is_better: m.get("higher_is_better").and_then(Value::as_bool),
                        this: score_of(m.get("scores"), system.as_deref()).and_then(estimate),
                        base: score_of(m.get("scores"), base_system.as_deref()).and_then(estimate),
                        diff: score_of(m.get("vs_base"), system.as_deref()).and_then(estimate),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    EvalView { system, base_system, systems: e.systems.iter().map(|(s, _)| s.name.clone()).collect(), rows }
}

/// `train data`, `eval data`, or `data` (not an input of the recorded run). The run's config
/// names the files; its dataset list puts training data first when the config does not say.
pub(crate) fn dataset_role(l: &Lineage, d: &DatasetRecord) -> &'static str {
    let Some(run) = &l.run else { return "data" };
    let names = |key: &str| match run.config.get(key) {
        Some(Value::String(s)) => s == &d.path,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(d.path.as_str())),
        _ => false,
    };
    if names("data") {
        return "train data";
    }
    if names("eval_data") {
        return "eval data";
    }
    match run.datasets.iter().position(|&id| id == d.id) {
        Some(0) => "train data",
        Some(_) => "eval data",
        None => "data",
    }
}

/// The file that identifies a folder at a glance: the largest (the weights).
pub(crate) fn main_file(files: &[FileHash]) -> Option<&FileHash> {
    files.iter().max_by_key(|f| f.bytes)
}

/// Seconds since 1970 of an RFC 3339 UTC time as the registry writes it
/// (`2026-12-07T12:36:20Z`, fractions and `+00:00` accepted); `None` for anything else.
pub(crate) fn parse_utc(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let num = |t: &str| t.parse::<i64>().ok();
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':');
    let (hh, mm, ss) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm): proleptic Gregorian, no time zones.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Seconds between two recorded times (`None` if either does not parse or they run backwards).
pub(crate) fn seconds_between(start: &str, end: &str) -> Option<i64> {
    let d = parse_utc(end)? - parse_utc(start)?;
    (d >= 0).then_some(d)
}

/// `1m 53s`, `2h 05m`, `3d 4h`.
pub(crate) fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `6,450`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `134.5M`, `2.0T`, `950`.
pub(crate) fn count_short(n: u64) -> String {
    let units = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")];
    let x = n as f64;
    units
        .iter()
        .find(|(u, _)| x >= *u)
        .map(|(u, s)| format!("{:.1}{s}", x / u))
        .unwrap_or_else(|| n.to_string())
}

/// `19.6 MB` (decimal units).
pub(crate) fn bytes(n: u64) -> String {
    let units = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    let x = n as f64;
    units
        .iter()
        .find(|(u, _)| x >= *u)
        .map(|(u, s)| format!("{:.1} {s}", x / u))
        .unwrap_or_else(|| format!("{n} B"))
}

/// `1.2e14`.
pub(crate) fn sci(x: f64) -> String {
    format!("{x:.1e}")
}

/// `bfa2c6be…`.
pub(crate) fn short_sha(sha: &str) -> String {
    match sha.get(..8) {
        Some(head) if sha.len() > 8 => format!("{head}…"),
        _ => sha.to_string(),
    }
}

/// A metric value: 3 decimals (the scores are fractions or 0–100 scales).
pub(crate) fn num(x: f64) -> String {
    format!("{x:.3}")
}

pub(crate) fn signed(x: f64) -> String {
    format!("{x:+.3}")
}

/// `0.383 [0.353, 0.415]`, with `sign` for differences.
pub(crate) fn estimate_text(e: &Estimate, sign: bool) -> String {
    let f = if sign { signed } else { num };
    match e.ci95 {
        Some((lo, hi)) => format!("{} [{}, {}]", f(e.value), f(lo), f(hi)),
        None => f(e.value),
    }
}

/// ` ↑` (higher is better), ` ↓`, or nothing when eval.json does not say.
pub(crate) fn arrow(higher_is_better: Option<bool>) -> &'static str {
    match higher_is_better {
        Some(true) => " ↑",
        Some(false) => " ↓",
        None => "",
    }
}

pub(crate) fn status_word(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Abandoned => "abandoned",
    }
}

pub(crate) fn kind_word(k: ArtifactKind) -> &'static str {
    match k {
        ArtifactKind::Adapter => "adapter",
        ArtifactKind::Model => "model",
    }
}

/// `12:38:13Z` when `end` falls on `start`'s day, else `end` whole.
fn end_time<'a>(start: &str, end: &'a str) -> &'a str {
    match (start.split_once('T'), end.split_once('T')) {
        (Some((d1, _)), Some((d2, t2))) if d1 == d2 => t2,
        _ => end,
    }
}

/// Text on one line: control characters (newlines in a reason) become spaces.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `champion ← v2 (was v1)` / `disabled support@2` … by bob, request 7: "reason".
pub(crate) fn event_text(e: &HistoryEvent) -> String {
    let mut s = format!("{} ", e.time);
    match (&e.alias, e.to_version) {
        (Some(alias), Some(to)) => {
            let was = e.from_version.map_or("new".to_string(), |v| format!("was v{v}"));
            let _ = write!(s, "{} {alias} ← v{to} ({was})", e.action);
        }
        (Some(alias), None) => {
            let _ = write!(s, "{} {alias}", e.action);
        }
        _ => {
            let version = e.version.map_or(String::new(), |v| format!("@{v}"));
            let _ = write!(s, "{} {}{version}", e.action, e.name);
        }
    }
    let _ = write!(s, " by {}", e.actor);
    if let Some(r) = e.request {
        let _ = write!(s, ", request {r}");
    }
    if let Some(reason) = &e.reason {
        let _ = write!(s, ": \"{reason}\"");
    }
    one_line(&s)
}

// ---- tree ----

struct Node {
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn leaf(text: String) -> Node {
        Node { text: one_line(&text), children: Vec::new() }
    }
}

fn print(out: &mut String, nodes: &[Node], prefix: &str) {
    for (i, n) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let _ = writeln!(out, "{prefix}{}{}", if last { "└─ " } else { "├─ " }, n.text);
        print(out, &n.children, &format!("{prefix}{}", if last { "   " } else { "│  " }));
    }
}

/// Keep the last `MAX_LISTED` of `nodes` (the newest, for lists kept oldest first).
fn newest(mut nodes: Vec<Node>, what: &str) -> Vec<Node> {
    if nodes.len() > MAX_LISTED {
        let dropped = nodes.len() - MAX_LISTED;
        nodes.drain(..dropped);
        nodes.insert(0, Node::leaf(format!("… {dropped} earlier {what}")));
    }
    nodes
}

fn root_line(l: &Lineage) -> String {
    let a = &l.artifact;
    let mut s = format!(
        "{}  {}  {}  ({} file{}",
        a.reference(),
        kind_word(a.kind),
        a.path,
        a.files.len(),
        if a.files.len() == 1 { "" } else { "s" }
    );
    if let Some(f) = main_file(&a.files) {
        let _ =
            write!(s, ", {}, sha256 {}", bytes(a.files.iter().map(|f| f.bytes).sum()), short_sha(&f.sha256));
    }
    let _ = write!(s, ")  registered {} by {}", a.created, a.actor);
    if !a.aliases.is_empty() {
        let _ = write!(s, "  aliases: {}", a.aliases.join(", "));
    }
    if a.disabled {
        let _ = write!(s, "  [DISABLED: {}]", a.disabled_reason.as_deref().unwrap_or("no reason recorded"));
    }
    one_line(&s)
}

fn base_model_node(l: &Lineage) -> Node {
    match &l.base_model {
        Some(m) => {
            let params = m
                .parameters
                .map_or("parameters not recorded".to_string(), |p| format!("{} parameters", count_short(p)));
            let sha =
                main_file(&m.files).map_or(String::new(), |f| format!(", sha256 {}", short_sha(&f.sha256)));
            Node::leaf(format!("base model {}  ({params}{sha})", m.name))
        }
        None => Node::leaf("base model: not recorded".into()),
    }
}

fn dataset_node(l: &Lineage, d: &DatasetRecord) -> Node {
    let mut s = format!("{} {}  sha256 {}", dataset_role(l, d), d.path, short_sha(&d.sha256));
    if let Some(r) = d.rows {
        let _ = write!(s, "  {} rows", thousands(r));
    }
    if let Some(f) = &d.format {
        let _ = write!(s, "  {f}");
    }
    if let Some(p) = d.pii_findings {
        let _ = write!(s, "  PII findings {p}");
    }
    if let Some(p) = d.duplicates {
        let _ = write!(s, "  duplicates {p}");
    }
    Node::leaf(s)
}

fn run_node(l: &Lineage) -> Option<Node> {
    let r = l.run.as_ref()?;
    let mut s = format!("run {} \"{}\" {}  {}", r.id, r.name, status_word(r.status), r.started);
    if let Some(f) = &r.finished {
        let _ = write!(s, " → {}", end_time(&r.started, f));
        if let Some(d) = seconds_between(&r.started, f) {
            let _ = write!(s, " ({})", duration(d));
        }
    }
    let _ = write!(s, "  by {}  {}  {}", r.actor, r.device, r.method);
    let mut work = Vec::new();
    if let Some(n) = r.steps {
        work.push(format!("{} steps", thousands(n)));
    }
    if let Some(n) = r.tokens {
        work.push(format!("{} tokens", thousands(n)));
    }
    if let Some(f) = &r.flops {
        work.push(format!("{} FLOPs", sci(f.value)));
    }
    if !work.is_empty() {
        let _ = write!(s, "  {}", work.join(", "));
    }
    let mut children = vec![base_model_node(l)];
    if let Some(e) = &r.error {
        children.insert(0, Node::leaf(format!("error: {e}")));
    }
    children.extend(l.datasets.iter().map(|d| dataset_node(l, d)));
    Some(Node { text: one_line(&s), children })
}

fn eval_node(l: &Lineage, e: &EvalRecord) -> Node {
    let v = eval_view(e, l.artifact.id);
    let mut text =
        format!("eval {}  {} ({} rows)  {} by {}", e.id, e.data_path, thousands(e.rows), e.created, e.actor);
    let children = match &v.system {
        Some(sys) => {
            let _ = write!(text, "  as \"{sys}\"");
            v.rows
                .iter()
                .map(|m| {
                    let mut s = format!(
                        "{}{} {}",
                        m.name,
                        arrow(m.higher_is_better),
                        m.this.as_ref().map_or("—".into(), |x| estimate_text(x, false))
                    );
                    if let Some(b) = &m.base {
                        let _ = write!(s, "  base {}", num(b.value));
                    }
                    if let Some(d) = &m.diff {
                        let _ = write!(s, "  Δ {}", estimate_text(d, true));
                    }
                    Node::leaf(s)
                })
                .collect()
        }
        None => vec![Node::leaf(format!("this version is not among its systems ({})", v.systems.join(", ")))],
    };
    Node { text: one_line(&text), children }
}

/// What `ferrotune registry show NAME@VERSION` prints.
pub fn tree(l: &Lineage) -> String {
    let mut out = root_line(l);
    out.push('\n');
    let mut top = Vec::new();
    match run_node(l) {
        Some(run) => top.push(run),
        None => {
            top.push(Node::leaf("run: not recorded".into()));
            top.push(base_model_node(l));
            top.extend(l.datasets.iter().map(|d| dataset_node(l, d)));
        }
    }
    if l.evals.is_empty() {
        top.push(Node::leaf("evals: none recorded for this version".into()));
    } else {
        top.extend(newest(l.evals.iter().map(|e| eval_node(l, e)).collect(), "evals"));
    }
    if l.releases.is_empty() {
        top.push(Node::leaf("releases: none (no alias has pointed at this version)".into()));
    } else {
        let events = l.releases.iter().map(|e| Node::leaf(event_text(e))).collect();
        top.push(Node { text: "releases".into(), children: newest(events, "events") });
    }
    print(&mut out, &top, "");
    out
}

// ---- dot ----

/// A Graphviz quoted string's body: backslashes and quotes escaped, newlines as `\n`.
pub(crate) fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

struct Graph {
    out: String,
}

impl Graph {
    /// A node; `lines` become the label's lines.
    fn node(&mut self, id: &str, lines: &[String], attrs: &str) {
        let label = lines.iter().map(|l| dot_escape(l)).collect::<Vec<_>>().join("\\n");
        let _ = writeln!(self.out, "  \"{id}\" [label=\"{label}\"{attrs}];");
    }
    fn edge(&mut self, from: &str, to: &str, label: &str, attrs: &str) {
        let mut list = Vec::new();
        if !label.is_empty() {
            list.push(format!("label=\"{}\"", dot_escape(label)));
        }
        if !attrs.is_empty() {
            list.push(attrs.to_string());
        }
        let attrs = if list.is_empty() { String::new() } else { format!(" [{}]", list.join(", ")) };
        let _ = writeln!(self.out, "  \"{from}\" -> \"{to}\"{attrs};");
    }
}

/// The lineage as a Graphviz digraph: datasets and base model → run → artifact → evals, with
/// the aliases that point (or pointed) at the version.
pub fn dot(l: &Lineage) -> String {
    let a = &l.artifact;
    let mut g = Graph {
        out: String::from(
            "digraph lineage {\n  graph [rankdir=LR, fontname=\"Helvetica\"];\n  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n",
        ),
    };
    let art = format!("artifact_{}", a.id);
    let mut lines = vec![a.reference(), kind_word(a.kind).to_string()];
    if let Some(f) = main_file(&a.files) {
        lines.push(format!("sha256 {}", short_sha(&f.sha256)));
    }
    if a.disabled {
        lines.push(format!("DISABLED: {}", a.disabled_reason.as_deref().unwrap_or("no reason recorded")));
    }
    let color = if a.disabled { ", color=red, fontcolor=red" } else { ", penwidth=2" };
    g.node(&art, &lines, &format!(", shape=box3d{color}"));

    // Inputs go to the run, or straight to the artifact when no run is recorded.
    let sink = match &l.run {
        Some(r) => {
            let id = format!("run_{}", r.id);
            let mut lines = vec![
                format!("run {} \"{}\"", r.id, r.name),
                format!("{} on {}", status_word(r.status), r.device),
            ];
            if let Some(f) = &r.flops {
                lines.push(format!("{} FLOPs", sci(f.value)));
            }
            g.node(&id, &lines, ", shape=ellipse");
            g.edge(&id, &art, "", "");
            id
        }
        None => art.clone(),
    };
    if let Some(m) = &l.base_model {
        let id = format!("model_{}", m.id);
        let mut lines = vec![format!("base model {}", m.name)];
        if let Some(p) = m.parameters {
            lines.push(format!("{} parameters", count_short(p)));
        }
        g.node(&id, &lines, ", shape=cylinder");
        g.edge(&id, &sink, "base", "");
    }
    for d in &l.datasets {
        let id = format!("dataset_{}", d.id);
        let mut lines = vec![d.path.clone(), format!("sha256 {}", short_sha(&d.sha256))];
        if let Some(r) = d.rows {
            lines.push(format!("{} rows", thousands(r)));
        }
        g.node(&id, &lines, ", shape=note");
        g.edge(&id, &sink, dataset_role(l, d), "");
    }
    for e in &l.evals {
        let id = format!("eval_{}", e.id);
        let v = eval_view(e, a.id);
        let mut lines = vec![format!("eval {} ({} rows)", e.id, thousands(e.rows))];
        let scored: Vec<_> = v.rows.iter().filter_map(|m| Some((m, m.this.as_ref()?))).collect();
        for (m, x) in scored.iter().take(4) {
            let diff = m.diff.as_ref().map_or(String::new(), |d| format!(" (Δ {})", signed(d.value)));
            lines.push(format!("{} {}{diff}", m.name, num(x.value)));
        }
        if scored.len() > 4 {
            lines.push(format!("… {} more metrics", scored.len() - 4));
        }
        g.node(&id, &lines, ", shape=component");
        g.edge(&art, &id, "evaluated", "");
        match l.datasets.iter().find(|d| d.sha256 == e.data_sha256) {
            Some(d) => g.edge(&format!("dataset_{}", d.id), &id, "data", "style=dashed"),
            None => {
                let data = format!("evaldata_{}", e.id);
                g.node(
                    &data,
                    &[e.data_path.clone(), format!("sha256 {}", short_sha(&e.data_sha256))],
                    ", shape=note",
                );
                g.edge(&data, &id, "data", "style=dashed");
            }
        }
    }
    // Aliases now pointing here, then those that did once.
    let mut aliases: Vec<(&str, bool)> = a.aliases.iter().map(|s| (s.as_str(), true)).collect();
    for e in &l.releases {
        if let Some(alias) = e.alias.as_deref()
            && !aliases.iter().any(|(x, _)| *x == alias)
        {
            aliases.push((alias, false));
        }
    }
    for (i, (alias, now)) in aliases.iter().enumerate() {
        let id = format!("alias_{i}");
        g.node(&id, &[alias.to_string()], ", shape=cds, style=filled, fillcolor=lightyellow");
        if *now {
            g.edge(&id, &art, "", "");
        } else {
            g.edge(&id, &art, "was", "style=dashed");
        }
    }
    g.out.push_str("}\n");
    g.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_utc_counts_seconds_from_the_epoch() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(seconds_between("2026-12-07T12:36:20Z", "2026-12-07T12:38:13Z"), Some(113));
        assert_eq!(seconds_between("2026-12-31T23:59:59.5Z", "2027-01-01T00:00:00+00:00"), Some(1));
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(parse_utc("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(thousands(6450), "6,450");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(count_short(134_515_008), "134.5M");
        assert_eq!(bytes(19_593_032), "19.6 MB");
        assert_eq!(sci(1.234e14), "1.2e14");
        assert_eq!(duration(113), "1m 53s");
        assert_eq!(duration(7500), "2h 05m");
        assert_eq!(short_sha("bfa2c6beef52"), "bfa2c6be…");
    }

    #[test]
    fn dot_escape_keeps_labels_inside_their_quotes() {
        assert_eq!(dot_escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(dot_escape("x\ny"), "x\\ny");
    }
}
