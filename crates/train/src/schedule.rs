//! Learning-rate schedules as pure functions of the step, as transformers' `get_scheduler`
//! defines them: linear warmup from 0, then constant, linear decay to 0, or cosine decay to 0.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Constant,
    #[default]
    Linear,
    Cosine,
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            other => Err(format!("unknown scheduler `{other}` (constant, linear, cosine)")),
        }
    }
}

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn lr_at(kind: Scheduler, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match kind {
        Scheduler::Constant => base,
        Scheduler::Linear => base * (1.0 - progress),
        Scheduler::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_from_zero() {
        assert_eq!(lr_at(Scheduler::Cosine, 1.0, 0, 4, 20), 0.0);
        assert_eq!(lr_at(Scheduler::Cosine, 1.0, 2, 4, 20), 0.5);
        assert_eq!(lr_at(Scheduler::Cosine, 1.0, 4, 4, 20), 1.0);
    }

    #[test]
    fn linear_and_cosine_reach_zero_at_the_end_and_half_in_the_middle() {
        assert!((lr_at(Scheduler::Linear, 2.0, 12, 2, 22) - 1.0).abs() < 1e-12);
        assert!((lr_at(Scheduler::Cosine, 2.0, 12, 2, 22) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(Scheduler::Linear, 2.0, 22, 2, 22), 0.0);
        assert!(lr_at(Scheduler::Cosine, 2.0, 22, 2, 22).abs() < 1e-12);
        assert_eq!(lr_at(Scheduler::Constant, 2.0, 21, 2, 22), 2.0);
    }
}
