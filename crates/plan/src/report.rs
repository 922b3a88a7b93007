//! The plan: every (method, hardware) option with its memory, time and cost, the recommended
//! settings and method, and serving — as a struct (`--json`) and as the table the CLI prints.

use std::fmt::Write as _;

use ferrotune_model::ModelConfig;
use serde::Serialize;

use crate::cost::{Prices, ServingTco, Traffic, serving_tco};
use crate::hardware::{Backend, Hardware};
use crate::hyper::{DataStats, Hyper};
use crate::memory::{self, MemoryEstimate, ServeWeights, StepShape};
use crate::recommend::{self, Recommendation};
use crate::throughput::{self, Record, ServeRecord, SpeedEstimate};
use crate::{Method, gib};

pub struct PlanInputs {
    pub model_name: String,
    pub cfg: ModelConfig,
    /// Where the token statistics come from (the model's own tokenizer, or a stand-in).
    pub tokenizer_note: String,
    pub data: DataStats,
    pub methods: Vec<Method>,
    pub hardware: Vec<Hardware>,
    /// User overrides of the recommended settings.
    pub epochs: Option<f64>,
    pub batch_size: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub traffic: Option<Traffic>,
    pub prices: Prices,
    pub records: Vec<Record>,
    pub serve_records: Vec<ServeRecord>,
    /// Share of a server's measured throughput a deployment plans to use.
    pub utilization: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OptionPlan {
    pub method: String,
    pub hardware: String,
    /// Whether `ferrotune train` can run this method today.
    pub runnable: bool,
    pub settings: Hyper,
    pub trainable_parameters: u64,
    pub step: StepShape,
    pub memory: MemoryEstimate,
    pub memory_checkpointed: MemoryEstimate,
    pub device_memory_gib: f64,
    pub fits: bool,
    pub fits_checkpointed: bool,
    /// Tokens the run processes (padding included).
    pub training_tokens: f64,
    pub speed: Option<SpeedEstimate>,
    /// Why there is no speed, when there is none.
    pub speed_missing: Option<String>,
    pub hours: Option<f64>,
    pub cost: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServingPlan {
    pub traffic: Traffic,
    pub hardware: String,
    pub memory: MemoryEstimate,
    pub basis: String,
    pub tco: ServingTco,
    pub currency: String,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: String,
    pub parameters: u64,
    pub tokenizer: String,
    pub data: DataStats,
    pub options: Vec<OptionPlan>,
    pub recommendation: Recommendation,
    pub serving: Option<ServingPlan>,
    pub prices_as_of: String,
    pub currency: String,
}

/// Builds the plan.
pub fn plan(inp: &PlanInputs) -> Plan {
    let params = inp.cfg.parameter_count();
    let mut options = Vec::new();
    for method in &inp.methods {
        for hw in &inp.hardware {
            let gpu = hw.backend == Backend::Cuda;
            let mut settings =
                crate::hyper::recommend(params, inp.cfg.max_position_embeddings, method, &inp.data, gpu);
            if let Some(e) = inp.epochs {
                settings.epochs = crate::hyper::Choice { value: e, reason: "given (--epochs)".into() };
            }
            if let Some(b) = inp.batch_size {
                settings.batch_size =
                    crate::hyper::Choice { value: b, reason: "given (--batch-size)".into() };
            }
            if let Some(s) = inp.max_seq_len {
                settings.max_seq_len =
                    crate::hyper::Choice { value: s, reason: "given (--max-seq-len)".into() };
            }
            let seq_cap = settings.max_seq_len.value;
            // Memory at the worst step: a full batch of the longest rows (packed sequences are all
            // that long). A recommended GPU batch that does not fit is halved until it does.
            // Unpacked batches are padded to their longest row, so the worst is the longest row
            // (within the cap), not the cap itself.
            let worst_seq = if settings.packing.value {
                seq_cap
            } else {
                seq_cap.min(inp.data.tokens_max.max(1) as usize)
            };
            let mut step =
                StepShape { batch: settings.batch_size.value, seq: worst_seq, checkpointing: false };
            let mut mem = memory::training(&inp.cfg, method, hw.backend, step);
            if inp.batch_size.is_none() && gpu {
                let first = step.batch;
                while step.batch > 1 && gib(mem.total_bytes) > hw.memory_gib {
                    step.batch /= 2;
                    mem = memory::training(&inp.cfg, method, hw.backend, step);
                }
                if step.batch != first {
                    settings.batch_size = crate::hyper::Choice {
                        value: step.batch,
                        reason: format!(
                            "{} (the first choice, {first} rows, does not fit {:.0} GiB: halved until it does or reaches 1)",
                            settings.batch_size.reason, hw.memory_gib
                        ),
                    };
                }
            }
            let batch = step.batch;
            let mem_ck =
                memory::training(&inp.cfg, method, hw.backend, StepShape { checkpointing: true, ..step });
            // Time at the average step.
            let rows = inp.data.rows as f64;
            let (tokens_per_epoch, avg_seq) = if settings.packing.value {
                (rows * inp.data.tokens_mean.min(seq_cap as f64), seq_cap as f64)
            } else {
                let padded = inp.data.padded_length(batch, seq_cap);
                ((rows / batch as f64).ceil() * batch as f64 * padded, padded)
            };
            let training_tokens = tokens_per_epoch * settings.epochs.value;
            settings.steps = if settings.packing.value {
                ((tokens_per_epoch / (batch * seq_cap) as f64).ceil() * settings.epochs.value).ceil() as u64
            } else {
                ((rows / batch as f64).ceil() * settings.epochs.value).ceil() as u64
            };
            let (speed, speed_missing) = if method.runnable() {
                match throughput::predict_training(
                    &inp.records,
                    hw,
                    &inp.cfg,
                    method,
                    avg_seq.round().max(1.0) as usize,
                ) {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                }
            } else {
                (None, Some("ferrotune cannot train this method yet: no measured speed".into()))
            };
            let hours = speed.as_ref().map(|s| training_tokens / s.tokens_per_sec / 3600.0);
            let cost = hours.zip(inp.prices.hour(&hw.name)).map(|(h, p)| h * p);
            let fits = gib(mem.total_bytes) <= hw.memory_gib;
            let fits_checkpointed = gib(mem_ck.total_bytes) <= hw.memory_gib;
            options.push(OptionPlan {
                method: method.name().into(),
                hardware: hw.name.clone(),
                runnable: method.runnable(),
                settings,
                trainable_parameters: method.trainable_parameters(&inp.cfg),
                step,
                memory: mem,
                memory_checkpointed: mem_ck,
                device_memory_gib: hw.memory_gib,
                fits,
                fits_checkpointed,
                training_tokens,
                speed,
                speed_missing,
                hours,
                cost,
            });
        }
    }
    let choices: Vec<recommend::Option_> = options
        .iter()
        .map(|o| recommend::Option_ {
            method: o.method.clone(),
            hardware: o.hardware.clone(),
            runnable: o.runnable,
            fits: o.fits,
            peak_gib: gib(o.memory.total_bytes),
            memory_gib: o.device_memory_gib,
            hours: o.hours,
            cost: o.cost,
        })
        .collect();
    let recommendation = recommend::choose(&inp.data, &choices);
    let serving = inp.traffic.map(|t| {
        // ferrotune serves on the CPU (GPU inference is not built yet): f32 weights, KV cache for
        // 32 concurrent sequences of the data's longest rendered row.
        let ctx = inp.data.tokens_max.max(256) as usize;
        let mem = memory::serving(&inp.cfg, Backend::Cpu, ServeWeights::F32, ctx, 32);
        let (tps, basis) = throughput::predict_serving(&inp.serve_records, &inp.cfg).unwrap_or((f64::NAN, "no serving record".into()));
        let hour = inp.prices.hour("cpu").unwrap_or(f64::NAN);
        let model_gb = inp.cfg.parameter_count() as f64 * 4.0 / 1e9;
        let tco = serving_tco(t, tps, hour, inp.utilization, model_gb, &inp.prices);
        ServingPlan {
            traffic: t,
            hardware: "cpu".into(),
            memory: mem,
            basis,
            tco,
            currency: inp.prices.currency.clone(),
            note: "ferrotune serves on the CPU today (GPU inference is not built yet); each server is one 2-core machine like the recorded one, f32 weights, continuous batching at 32 streams".into(),
        }
    });
    Plan {
        model: inp.model_name.clone(),
        parameters: params,
        tokenizer: inp.tokenizer_note.clone(),
        data: inp.data.clone(),
        options,
        recommendation,
        serving,
        prices_as_of: inp.prices.as_of.clone(),
        currency: inp.prices.currency.clone(),
    }
}

fn money(v: f64, cur: &str) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0} {cur}")
    } else {
        format!("{v:.2} {cur}")
    }
}

/// Hours as seconds, minutes or hours.
pub fn duration(h: f64) -> String {
    if h < 1.0 / 60.0 {
        format!("{:.0} s", h * 3600.0)
    } else if h < 1.0 {
        format!("{:.0} min", h * 60.0)
    } else {
        format!("{h:.1} h")
    }
}

/// The human-readable plan.
pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let d = &p.data;
    let _ = writeln!(s, "plan for {} ({:.1}M parameters)", p.model, p.parameters as f64 / 1e6);
    let _ = writeln!(
        s,
        "data: {} rows; tokens per row mean {:.0}, p5 {}, median {}, p95 {}, max {}; answer tokens mean {:.0} ({})",
        d.rows,
        d.tokens_mean,
        d.tokens_p5,
        d.tokens_median,
        d.tokens_p95,
        d.tokens_max,
        d.target_mean,
        p.tokenizer
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<6} {:<5} {:>11} {:>11} {:>11} {:>10} {:>8} {:>11} {:>9} {:>12}",
        "method", "hw", "trainable", "peak GiB", "w/ ckpt", "device GiB", "fits", "tokens/s", "time", "cost"
    );
    for o in &p.options {
        let fits = match (o.fits, o.fits_checkpointed) {
            (true, _) => "yes",
            (false, true) => "ckpt only",
            (false, false) => "no",
        };
        let _ = writeln!(
            s,
            "{:<6} {:<5} {:>10.1}M {:>11.2} {:>11.2} {:>10.0} {:>8} {:>11} {:>9} {:>12}",
            o.method,
            o.hardware,
            o.trainable_parameters as f64 / 1e6,
            gib(o.memory.total_bytes),
            gib(o.memory_checkpointed.total_bytes),
            o.device_memory_gib,
            fits,
            o.speed.as_ref().map_or("-".into(), |v| format!("{:.0}", v.tokens_per_sec)),
            o.hours.map_or("-".into(), duration),
            o.cost.map_or("-".into(), |c| money(c, &p.currency)),
        );
    }
    let _ = writeln!(
        s,
        "(peak: the worst step, a full batch of the longest rows; w/ ckpt: with gradient checkpointing, which ferrotune does not do yet; time and cost: the whole run at the settings below)"
    );
    for o in p.options.iter().filter(|o| o.speed_missing.is_some()) {
        let _ = writeln!(
            s,
            "  {} on {}: no time estimate — {}",
            o.method,
            o.hardware,
            o.speed_missing.as_deref().unwrap_or_default()
        );
    }
    let r = &p.recommendation;
    let _ = writeln!(s);
    let _ = writeln!(s, "recommended: {} on {}", r.method, r.hardware);
    for why in &r.reasons {
        let _ = writeln!(s, "  - {why}");
    }
    if let Some(o) = p.options.iter().find(|o| o.method == r.method && o.hardware == r.hardware) {
        let h = &o.settings;
        let _ = writeln!(s, "settings ({} steps; `ferrotune train` uses these when you give none):", h.steps);
        let _ = writeln!(s, "  --lr {:e}: {}", h.lr.value, h.lr.reason);
        let _ = writeln!(s, "  --epochs {}: {}", h.epochs.value, h.epochs.reason);
        let _ = writeln!(s, "  --batch-size {}: {}", h.batch_size.value, h.batch_size.reason);
        let _ = writeln!(s, "  --max-seq-len {}: {}", h.max_seq_len.value, h.max_seq_len.reason);
        if o.method != "full" {
            let _ = writeln!(s, "  --lora-r {}: {}", h.lora_r.value, h.lora_r.reason);
        }
        let _ = writeln!(
            s,
            "  packing {}: {}",
            if h.packing.value { "on (--packing)" } else { "off" },
            h.packing.reason
        );
        if let Some(sp) = &o.speed {
            let _ = writeln!(s, "time basis: {}", sp.basis);
        }
        let _ = writeln!(s, "memory of this option:");
        for it in &o.memory.items {
            let _ = writeln!(s, "  {:<34} {:>9.3} GiB  {}", it.name, gib(it.bytes), it.formula);
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "warnings:");
        for w in &r.warnings {
            let _ = writeln!(s, "  ! {w}");
        }
    }
    if let Some(sv) = &p.serving {
        let t = &sv.traffic;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "serving {:.0} requests/day × {:.0} tokens ({:.0}% completion), per month of 30 days:",
            t.requests_per_day,
            t.tokens_per_request,
            t.completion_share * 100.0
        );
        let _ = writeln!(
            s,
            "  self-hosted: {} server(s) at {:.0}% of {:.1} completion tokens/s each = {} (storage {}); server memory {:.2} GiB",
            sv.tco.servers,
            sv.tco.utilization * 100.0,
            sv.tco.server_tokens_per_sec,
            money(sv.tco.self_hosted_per_month, &sv.currency),
            money(sv.tco.storage_per_month, &sv.currency),
            gib(sv.memory.total_bytes)
        );
        let _ = writeln!(s, "  basis: {}", sv.basis);
        let ram = crate::hardware::this_cpu().memory_gib;
        if gib(sv.memory.total_bytes) > ram {
            let _ = writeln!(
                s,
                "  ! a server needs {:.1} GiB, more than this machine's {ram:.0} GiB: the recorded machine could not hold it",
                gib(sv.memory.total_bytes)
            );
        }
        for a in &sv.tco.apis {
            let _ = writeln!(
                s,
                "  {:<26} {:>12} / month; self-hosted is {:.2}x of it; {}",
                a.name,
                money(a.per_month, &sv.currency),
                a.ratio,
                a.break_even_requests_per_day.map_or(
                    "never breaks even at this server speed (a fully used server costs more per request)"
                        .into(),
                    |b| format!("break-even from {b:.0} requests/day")
                )
            );
        }
        let _ = writeln!(s, "  ({})", sv.note);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "prices: example table as of {} ({}); pass --prices FILE with yours",
        p.prices_as_of, p.currency
    );
    s
}
