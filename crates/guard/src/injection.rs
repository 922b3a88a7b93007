//! Prompt-injection detection (being written).
