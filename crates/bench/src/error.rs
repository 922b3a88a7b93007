//! Errors of the benchmarks: a bad setting, a peer (PEFT, llama.cpp) that failed, a run whose
//! own check failed, or an error of the crate being measured.

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting out of range; the message names the flag.
    #[error("{0}")]
    InvalidSetting(String),

    /// Writing a result file, or running a peer's script.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A peer benchmark (HF PEFT, llama.cpp) failed or printed what could not be read.
    #[error("{0}")]
    Peer(String),

    /// The measured run broke its own check (a log that does not verify, a sequence cut short).
    #[error("{0}")]
    Failed(String),

    #[error(transparent)]
    Json(#[from] serde_json::Error),

    #[error(transparent)]
    Model(#[from] ferrotune_model::ModelError),

    #[error(transparent)]
    Constrain(#[from] ferrotune_model::constrain::ConstrainError),

    #[error(transparent)]
    Train(#[from] ferrotune_train::TrainError),

    #[error(transparent)]
    Rag(#[from] ferrotune_rag::RagError),

    #[error(transparent)]
    Govern(#[from] ferrotune_govern::GovernError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl BenchError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
