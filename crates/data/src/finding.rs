//! A finding: one problem in one row (or in the whole dataset), with where it is and how to fix it.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::reader::FileKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// What kind of problem a finding is. Errors make a row unusable (validation exits 1); warnings
/// are reported and, except duplicates under `prepare --dedup`, leave the row in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // Errors.
    BadJson,
    BadCsv,
    NotAnObject,
    UnknownFormat,
    MixedFormats,
    MissingField,
    UnknownKey,
    UnknownRole,
    WrongType,
    BadWeight,
    NoAssistant,
    EmptyTarget,
    AssistantNotLast,
    NoTrainableTurn,
    TooLong,
    RenderFailed,
    TooFewExamples,
    // Warnings.
    MissingSystem,
    MissingUser,
    ExactDuplicate,
    NearDuplicate,
    ConflictingAnswers,
    EvalLeakage,
    Pii,
    FewExamples,
    SkewedCoverage,
    LowAgreement,
    PossibleBackdoorTrigger,
}

impl Code {
    pub fn severity(self) -> Severity {
        use Code::*;
        match self {
            BadJson | BadCsv | NotAnObject | UnknownFormat | MixedFormats | MissingField | UnknownKey
            | UnknownRole | WrongType | BadWeight | NoAssistant | EmptyTarget | AssistantNotLast
            | NoTrainableTurn | TooLong | RenderFailed | TooFewExamples => Severity::Error,
            MissingSystem
            | MissingUser
            | ExactDuplicate
            | NearDuplicate
            | ConflictingAnswers
            | EvalLeakage
            | Pii
            | FewExamples
            | SkewedCoverage
            | LowAgreement
            | PossibleBackdoorTrigger => Severity::Warning,
        }
    }

    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            BadJson => "bad_json",
            BadCsv => "bad_csv",
            NotAnObject => "not_an_object",
            UnknownFormat => "unknown_format",
            MixedFormats => "mixed_formats",
            MissingField => "missing_field",
            UnknownKey => "unknown_key",
            UnknownRole => "unknown_role",
            WrongType => "wrong_type",
            BadWeight => "bad_weight",
            NoAssistant => "no_assistant",
            EmptyTarget => "empty_target",
            AssistantNotLast => "assistant_not_last",
            NoTrainableTurn => "no_trainable_turn",
            TooLong => "too_long",
            RenderFailed => "render_failed",
            TooFewExamples => "too_few_examples",
            MissingSystem => "missing_system",
            MissingUser => "missing_user",
            ExactDuplicate => "exact_duplicate",
            NearDuplicate => "near_duplicate",
            ConflictingAnswers => "conflicting_answers",
            EvalLeakage => "eval_leakage",
            Pii => "pii",
            FewExamples => "few_examples",
            SkewedCoverage => "skewed_coverage",
            LowAgreement => "low_agreement",
            PossibleBackdoorTrigger => "possible_backdoor_trigger",
        }
    }
}

/// What a row's position counts: lines of a text file (JSONL, CSV) or rows of a Parquet file,
/// which has no lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Line,
    Row,
}

impl Unit {
    /// The unit of positions in `file`, by its extension (the rule [`FileKind::of`] reads by).
    pub fn of_file(file: &str) -> Unit {
        match FileKind::of(Path::new(file)) {
            FileKind::Parquet => Unit::Row,
            FileKind::Jsonl | FileKind::Csv => Unit::Line,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Line => "line",
            Unit::Row => "row",
        }
    }
}

/// Where row `n` of `file` is, as messages show it: `data.jsonl:12`, `data.parquet row 12`.
pub fn locate(file: &str, n: u64) -> String {
    match Unit::of_file(file) {
        Unit::Line => format!("{file}:{n}"),
        Unit::Row => format!("{file} row {n}"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: Code,
    #[serde(serialize_with = "serialize_str")]
    pub file: Arc<str>,
    /// What `line` counts: `line` (JSONL, CSV) or `row` (Parquet).
    pub unit: Unit,
    /// 1-based line (JSONL), record line (CSV) or row (Parquet); `None` for dataset-level findings.
    pub line: Option<u64>,
    /// JSON path of the offending field, like `messages[2].content`; empty for the whole row.
    pub field: String,
    pub message: String,
    /// One line telling the user what to change.
    pub hint: String,
}

fn serialize_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

impl Finding {
    pub fn new(
        code: Code,
        file: &Arc<str>,
        line: Option<u64>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        let unit = Unit::of_file(file);
        Self {
            severity: code.severity(),
            code,
            file: file.clone(),
            unit,
            line,
            field: field.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.line {
            Some(l) => write!(f, "{}", locate(&self.file, l))?,
            None => write!(f, "{}", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, " {}", self.field)?;
        }
        write!(f, ": {sev}[{}]: {} (fix: {})", self.code.as_str(), self.message, self.hint)
    }
}
