//! The terminal form of a validation [`Report`]: the same content as its JSON, grouped by code,
//! a few examples per code.

use std::fmt::{self, Display, Write as _};

use crate::finding::Severity;
use crate::stats::Summary;
use crate::validate::Report;

/// Findings shown per code on the terminal (the JSON has them all, up to its own cap).
pub const SHOWN_PER_CODE: usize = 5;

fn summary(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "min {} · p5 {} · median {} · p95 {} · max {} (mean {:.1}, total {})",
            s.min, s.p5, s.median, s.p95, s.max, s.mean, s.sum
        ),
        None => "n/a".into(),
    }
}

impl Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = &self.stats;
        writeln!(
            f,
            "{} rows in {} file(s): {} errors, {} warnings",
            st.rows + st.eval_rows,
            self.files.len(),
            self.errors,
            self.warnings
        )?;
        for file in &self.files {
            let fmt = file.format.map_or("-", |x| x.as_str());
            writeln!(
                f,
                "  {} [{}] {}: {} rows, {} valid",
                file.path, file.role, fmt, file.rows, file.valid_rows
            )?;
        }
        for (sev, title) in [(Severity::Error, "errors"), (Severity::Warning, "warnings")] {
            let codes: Vec<_> = self.counts.iter().filter(|(c, _)| c.severity() == sev).collect();
            if codes.is_empty() {
                continue;
            }
            writeln!(f, "\n{title}:")?;
            for (code, n) in codes {
                writeln!(f, "  {} ({n})", code.as_str())?;
                let shown: Vec<_> =
                    self.findings.iter().filter(|x| x.code == *code).take(SHOWN_PER_CODE).collect();
                for x in &shown {
                    let mut at = match x.line {
                        Some(l) => crate::finding::locate(&x.file, l),
                        None => x.file.to_string(),
                    };
                    if !x.field.is_empty() {
                        let _ = write!(at, " {}", x.field);
                    }
                    writeln!(f, "    {at}: {}\n      fix: {}", x.message, x.hint)?;
                }
                if *n as usize > shown.len() {
                    writeln!(f, "    … and {} more (see --json)", *n as usize - shown.len())?;
                }
            }
        }
        writeln!(f, "\nstatistics:")?;
        let formats: Vec<String> = st.per_format.iter().map(|(k, v)| format!("{} {v}", k.as_str())).collect();
        writeln!(f, "  training rows: {} ({} valid; {})", st.rows, st.valid_rows, formats.join(", "))?;
        writeln!(f, "  messages per example: {}", summary(&st.messages_per_example))?;
        if self.settings.model.is_some() {
            writeln!(f, "  tokens per example: {}", summary(&st.total_tokens))?;
            writeln!(f, "  target tokens per example: {}", summary(&st.target_tokens))?;
            if let Some(b) = st.billed_training_tokens {
                writeln!(f, "  billed training tokens for {} epochs: {b}", st.epochs)?;
            }
        } else {
            writeln!(f, "  tokens: give --model to count tokens, check lengths and estimate training cost")?;
        }
        let lsh = self.settings.lsh_bands_rows.map(|(b, r)| format!(", LSH {b}×{r}")).unwrap_or_default();
        writeln!(
            f,
            "  duplicates: {} exact, {} near (Jaccard ≥ {}{lsh}); conflicting answers: {}; rows with PII: {}",
            st.exact_duplicates,
            st.near_duplicates,
            self.settings.near_dup_threshold.map_or("off".into(), |t| t.to_string()),
            st.conflicting_answers,
            st.rows_with_pii
        )?;
        if let Some(b) = &st.backdoor {
            let flagged =
                self.counts.get(&crate::finding::Code::PossibleBackdoorTrigger).copied().unwrap_or(0);
            writeln!(
                f,
                "  backdoor triggers: {flagged} flagged; {} of {} trigger-like prompt tokens tested (in {}–{} of {} rows){}",
                b.tested_tokens,
                b.trigger_like_tokens,
                b.token_rows.0,
                b.token_rows.1,
                b.rows,
                if b.untracked_tokens > 0 {
                    format!(", {} untracked past the cap", b.untracked_tokens)
                } else {
                    String::new()
                }
            )?;
        }
        if st.eval_rows > 0 {
            writeln!(f, "  eval rows: {}, leaked from training: {}", st.eval_rows, st.eval_rows_leaked)?;
        }
        for (field, fc) in &st.coverage {
            if fc.high_cardinality {
                writeln!(
                    f,
                    "  coverage by {field}: more than {} distinct values (an identifier?)",
                    crate::stats::MAX_CLASSES
                )?;
                continue;
            }
            let mut v: Vec<_> = fc.counts.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown: Vec<String> = v.iter().take(12).map(|(k, c)| format!("{k} {c}")).collect();
            let more = if v.len() > 12 { format!(", … {} more", v.len() - 12) } else { String::new() };
            writeln!(f, "  coverage by {field}: {}{more}", shown.join(", "))?;
        }
        if let Some(a) = &self.agreement {
            let alpha = a.alpha.map_or("undefined (one label only)".into(), |x| format!("{x:.3}"));
            writeln!(
                f,
                "  annotator agreement (Krippendorff's alpha, nominal): {alpha} over {} units",
                a.units
            )?;
        }
        let verdict = if !self.ok {
            "FAILED: fix the errors above"
        } else if self.warnings > 0 {
            "OK with warnings"
        } else {
            "OK"
        };
        write!(f, "\n{verdict}")
    }
}
