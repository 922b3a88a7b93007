//! Memory a training run and a server need, item by item, each with its formula.
//!
//! Derived from what ferrotune's training code keeps alive (see docs/plan.md for the census and
//! the derivation); validated against the measured peaks in `bench/` (tests/memory.rs).
//!
//! The peak of a training step is reached during backward: candle keeps every tensor the graph
//! recorded until the loss is dropped (its backward walks a list of all nodes), so the whole
//! step's activations are alive while the gradients of one layer are being made. On top of them
//! sits the largest transient of one op's backward (attention's `dP` and `dS`, or SwiGLU's
//! gradients) or, earlier, the chunked cross-entropy's logits; whichever is larger.

use ferrotune_model::ModelConfig;
use ferrotune_model::attention::train::{KEEP_PROBS_MAX_BYTES_CPU, KEEP_PROBS_MAX_T};
use serde::Serialize;

use crate::{Backend, Method};

const MIB: u64 = 1 << 20;

/// A CUDA context as nvidia-smi counts it. Basis: measured on an H100 80GB (driver 580.159.04,
/// the driver of the recorded runs) through the driver API: `memory.used` 0 MiB idle, 529 MiB
/// after `cuDevicePrimaryCtxRetain` and a 2 MiB `cuMemAlloc` (docs/plan.md, "runtime
/// overhead"). The kernels candle and ferrotune load lazily on top are not included.
pub const CUDA_CONTEXT_BYTES: u64 = 528 * MIB;

/// cuBLAS: its handle and workspace, measured the same way: +68 MiB after `cublasCreate` (CUDA
/// 13.1's libcublas), nothing more after a first SGEMM. candle makes one handle per device.
pub const CUBLAS_WORKSPACE_BYTES: u64 = 68 * MIB;

/// Resident memory of a `ferrotune bench train` process beyond its tensors: code and libraries
/// as mapped pages, the rayon pool's stacks, the allocator's arenas. Basis: a 1×8-token run on
/// the record's 2-core machine peaks at 633.6 MiB RSS, of which the formulas account for
/// 598.4 MiB (f32 weights 513.1, LoRA state 74.5, activations and loss chunk ~10.8): 35 MiB remain
/// (the idle binary alone: 7 MiB).
pub const CPU_PROCESS_BYTES: u64 = 35 * MIB;

/// Rows of the cross-entropy's logits chunk (`ops::loss::ce_chunk_rows`, private there): about
/// 64M values at a time.
pub fn ce_chunk_rows(vocab: usize) -> usize {
    ((64usize << 20) / vocab.max(1)).max(1)
}

/// Bits per weight of a QLoRA base linear: NF4 (4 bits) + an fp8 scale per 64 weights
/// (0.125 bits) + the double quantization's f32 scale per 256 blocks (32 / (64·256) ≈ 0.002).
pub const QLORA_BITS_PER_WEIGHT: f64 = 4.127;

/// One line of an estimate.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryItem {
    pub name: String,
    pub bytes: u64,
    /// The formula with the numbers put in, e.g. `134.5M params × 2 B (bf16)`.
    pub formula: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub items: Vec<MemoryItem>,
    pub total_bytes: u64,
}

impl MemoryEstimate {
    fn new(items: Vec<MemoryItem>) -> Self {
        let total_bytes = items.iter().map(|i| i.bytes).sum();
        Self { items, total_bytes }
    }

    /// The item called `name`, if any.
    pub fn item(&self, name: &str) -> Option<&MemoryItem> {
        self.items.iter().find(|i| i.name == name)
    }

    /// Bytes of the item called `name` (0 when absent).
    pub fn bytes_of(&self, name: &str) -> u64 {
        self.item(name).map_or(0, |i| i.bytes)
    }
}

/// What a training step looks like.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepShape {
    /// Rows per step (per device).
    pub batch: usize,
    /// Tokens per row (padded length).
    pub seq: usize,
    /// Gradient (activation) checkpointing: keep only each layer's input, recompute in backward.
    /// ferrotune's trainer does not do this yet; the estimate shows what it would save.
    pub checkpointing: bool,
}

/// What else a training estimate depends on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TrainOptions {
    /// LoRA dropout: on the CPU each adapted projection then keeps its own masked input.
    pub lora_dropout: f64,
    /// Rayon threads of a CPU run: the batch's rows run as this many shares at once, each with
    /// its own cross-entropy chunk and backward transient (`trainer::optimizer_step`).
    pub cpu_threads: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            lora_dropout: ferrotune_model::LoraSpec::default().dropout,
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Item names, shared with the tests and the report.
pub mod names {
    pub const WEIGHTS: &str = "weights";
    pub const TRAINABLE: &str = "trainable parameters";
    pub const GRADIENTS: &str = "gradients";
    pub const OPTIMIZER: &str = "optimizer state";
    pub const ACTIVATIONS: &str = "activations kept for backward";
    pub const HEAD: &str = "head activations";
    pub const PROBS: &str = "attention probabilities";
    pub const BACKWARD: &str = "backward transient";
    pub const LOSS: &str = "loss/head transient";
    pub const STEP: &str = "optimizer step transient";
    pub const RUNTIME: &str = "runtime overhead";
    pub const KV: &str = "KV cache";
    pub const LOGITS: &str = "logits";
}

/// The model's dimensions, named as in the formulas.
#[derive(Debug, Clone, Copy)]
struct Dims {
    h: u64,
    q: u64,
    kv: u64,
    f: u64,
    l: u64,
    v: u64,
    heads: u64,
}

impl Dims {
    fn of(cfg: &ModelConfig) -> Self {
        let d = cfg.head_dim as u64;
        Self {
            h: cfg.hidden_size as u64,
            q: cfg.num_heads as u64 * d,
            kv: cfg.num_kv_heads as u64 * d,
            f: cfg.intermediate_size as u64,
            l: cfg.num_layers as u64,
            v: cfg.vocab_size as u64,
            heads: cfg.num_heads as u64,
        }
    }

    /// Weights of the seven projections of one layer.
    fn linear_params_per_layer(&self) -> u64 {
        2 * self.h * self.q + 2 * self.h * self.kv + 3 * self.h * self.f
    }
}

/// Tensors of one kind kept per token: `count × symbol` with the symbol's value.
#[derive(Debug, Default)]
struct Census {
    terms: Vec<(u64, &'static str, u64)>,
}

impl Census {
    fn add(&mut self, count: u64, symbol: &'static str, value: u64) {
        if count == 0 {
            return;
        }
        match self.terms.iter_mut().find(|t| t.1 == symbol) {
            Some(t) => t.0 += count,
            None => self.terms.push((count, symbol, value)),
        }
    }

    fn elements(&self) -> u64 {
        self.terms.iter().map(|(c, _, v)| c * v).sum()
    }

    /// `(6·H + 4·Q + …) = (6·576 + 4·576 + …)`.
    fn formula(&self) -> String {
        let sym: Vec<String> = self.terms.iter().map(|(c, s, _)| format!("{c}·{s}")).collect();
        let val: Vec<String> = self.terms.iter().map(|(c, _, v)| format!("{c}·{v}")).collect();
        format!("({}) = ({})", sym.join(" + "), val.join(" + "))
    }
}

fn targets_of(method: &Method) -> (&[String], u64) {
    match method {
        Method::Lora { r, targets } | Method::QLora { r, targets } => (targets.as_slice(), *r as u64),
        Method::Full => (&[], 0),
    }
}

fn has(targets: &[String], name: &str) -> bool {
    targets.iter().any(|t| t == name)
}

/// Elements kept per token by one decoder layer from forward to backward.
///
/// GPU (and any layer half the CPU does not fuse): every op's inputs stay in candle's graph —
/// `x` (the layer input, kept by RMSNorm and the residual add), `h₁ = norm(x)` (kept by q/k/v),
/// the q/k/v projections' outputs (kept by the head split), the heads after split+RoPE (kept by
/// attention), attention's output (kept by the merge), the merged heads (kept by `o_proj`),
/// `o_proj`'s output (kept by the add), `x₁ = x + attn`, `h₂ = norm(x₁)`, `g`, `u` (kept by
/// SwiGLU), `s = silu(g)⊙u` (kept by `down_proj`), `down_proj`'s output: 6·H + 4·Q + 4·KV + 3·F.
/// Each LoRA projection adds its `h = s·(x⊙m)·Aᵀ` (r per token); on the CPU with dropout its
/// masked input too (`LoraSaved::masked_input`; the GPU recomputes the mask in backward).
///
/// CPU, f32, all four attention (or all three MLP) projections adapted: the half is one op
/// (`ops::layer::lora_attention_residual`, `lora_mlp_residual`) that keeps the input, q after
/// RoPE, k, v, the merged heads (o's input), each projection's `h` and masked input — without
/// dropout q, k and v share one `h₁`, with it each has its own copy — and for the MLP `g`, `u`,
/// `s` (down's input) and `h₂` (one copy, or two with dropout).
fn layer_census(d: &Dims, method: &Method, backend: Backend, dropout: bool) -> Census {
    let (targets, _) = targets_of(method);
    let lora = !matches!(method, Method::Full);
    let cpu = backend == Backend::Cpu;
    // The fused CPU ops need a dense f32 frozen weight: not QLoRA's, not full fine-tuning's.
    let fusable = cpu && matches!(method, Method::Lora { .. });
    let attn_all = ["q_proj", "k_proj", "v_proj", "o_proj"].iter().all(|t| has(targets, t));
    let mlp_all = ["gate_proj", "up_proj", "down_proj"].iter().all(|t| has(targets, t));
    let masked_copies = cpu && dropout && lora;
    let mut c = Census::default();
    let n_attn = ["q_proj", "k_proj", "v_proj", "o_proj"].iter().filter(|t| has(targets, t)).count() as u64;
    let n_mlp = ["gate_proj", "up_proj", "down_proj"].iter().filter(|t| has(targets, t)).count() as u64;
    // Attention half.
    if fusable && attn_all {
        c.add(1, "H", d.h);
        c.add(if dropout { 3 } else { 1 }, "H", d.h);
        c.add(2, "Q", d.q);
        c.add(2, "KV", d.kv);
    } else {
        c.add(3, "H", d.h);
        c.add(4, "Q", d.q);
        c.add(4, "KV", d.kv);
        if masked_copies {
            c.add(["q_proj", "k_proj", "v_proj"].iter().filter(|t| has(targets, t)).count() as u64, "H", d.h);
            c.add(u64::from(has(targets, "o_proj")), "Q", d.q);
        }
    }
    // MLP half.
    if fusable && mlp_all {
        c.add(1, "H", d.h);
        c.add(if dropout { 2 } else { 1 }, "H", d.h);
        c.add(3, "F", d.f);
    } else {
        c.add(3, "H", d.h);
        c.add(3, "F", d.f);
        if masked_copies {
            c.add(["gate_proj", "up_proj"].iter().filter(|t| has(targets, t)).count() as u64, "H", d.h);
            c.add(u64::from(has(targets, "down_proj")), "F", d.f);
        }
    }
    if lora {
        let (_, r) = targets_of(method);
        c.add(n_attn + n_mlp, "r", r);
    }
    c
}

/// Human-readable sizes for formulas.
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= MIB as f64 {
        format!("{:.1} MiB", b / MIB as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// `134.5M`, `8,192`.
fn count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    }
}

fn item(name: &str, bytes: u64, formula: String) -> MemoryItem {
    MemoryItem { name: name.to_string(), bytes, formula: format!("{formula} = {}", size(bytes)) }
}

fn dtype_name(bytes: u64) -> &'static str {
    match bytes {
        2 => "bf16",
        4 => "f32",
        _ => "?",
    }
}

/// Row shares of a step: one per rayon thread on the CPU (at most one per row), the whole batch
/// on a GPU (`trainer::optimizer_step`).
fn shares(batch: usize, backend: Backend, threads: usize) -> Vec<u64> {
    match backend {
        Backend::Cuda => vec![batch as u64],
        Backend::Cpu => {
            let k = threads.min(batch).max(1);
            (0..k).map(|i| (batch * (i + 1) / k - batch * i / k) as u64).collect()
        }
    }
}

/// Peak memory of one training step of `method` on `backend` (CPU: f32 everywhere; CUDA: bf16
/// base weights and activations, f32 trainable parameters and AdamW state).
pub fn training(cfg: &ModelConfig, method: &Method, backend: Backend, step: StepShape) -> MemoryEstimate {
    training_with(cfg, method, backend, step, TrainOptions::default())
}

/// [`training`] with the LoRA dropout and the CPU thread count given.
pub fn training_with(
    cfg: &ModelConfig,
    method: &Method,
    backend: Backend,
    step: StepShape,
    opts: TrainOptions,
) -> MemoryEstimate {
    let d = Dims::of(cfg);
    let a = match backend {
        Backend::Cpu => 4u64,
        Backend::Cuda => 2,
    };
    let adt = dtype_name(a);
    let (b, t) = (step.batch as u64, step.seq as u64);
    let n = b * t;
    let params = cfg.parameter_count();
    let full = matches!(method, Method::Full);
    let dropout = opts.lora_dropout > 0.0 && !full;
    let mut items = Vec::new();

    // ---- weights ----
    let embed = d.v * d.h;
    match method {
        Method::QLora { .. } => {
            let lin = d.l * d.linear_params_per_layer();
            let rest = params - lin;
            let bytes = (lin as f64 * QLORA_BITS_PER_WEIGHT / 8.0).round() as u64 + rest * a;
            items.push(item(
                names::WEIGHTS,
                bytes,
                format!("{} linear weights × {QLORA_BITS_PER_WEIGHT} bits (NF4 + double-quantized scales) + {} embedding/head/norm params × {a} B ({adt})", count(lin), count(rest)),
            ));
        }
        Method::Full => items.push(item(
            names::WEIGHTS,
            params * a,
            format!(
                "{} params × {a} B ({adt}, trainable in place: AdamW updates these, no f32 master copy)",
                count(params)
            ),
        )),
        Method::Lora { .. } => items.push(item(
            names::WEIGHTS,
            params * a,
            format!("{} params × {a} B ({adt}, frozen)", count(params)),
        )),
    }

    // ---- trainable parameters, gradients, optimizer ----
    let p_train = method.trainable_parameters(cfg);
    if full {
        // make_trainable turns the (cast) weights into variables: their dtype is the model's.
        items.push(item(names::TRAINABLE, 0, "the weights above (Llama::make_trainable)".into()));
        items.push(item(
            names::GRADIENTS,
            p_train * a,
            format!(
                "{} params × {a} B ({adt}, every weight's gradient held to the end of backward)",
                count(p_train)
            ),
        ));
        items.push(item(
            names::OPTIMIZER,
            2 * p_train * a,
            format!(
                "2 moments × {} params × {a} B ({adt}: AdamW's moments take the variables' dtype)",
                count(p_train)
            ),
        ));
    } else {
        // f32 variables; on a GPU each forward casts A and B to bf16 and the graph keeps the casts.
        let casts = if backend == Backend::Cuda { p_train * a } else { 0 };
        let cast_text = if casts > 0 {
            format!(" + {} × {a} B ({adt} casts kept by the graph)", count(p_train))
        } else {
            String::new()
        };
        items.push(item(
            names::TRAINABLE,
            p_train * 4 + casts,
            format!("{} LoRA params × 4 B (f32){cast_text}", count(p_train)),
        ));
        items.push(item(names::GRADIENTS, p_train * 4, format!("{} params × 4 B (f32)", count(p_train))));
        items.push(item(
            names::OPTIMIZER,
            2 * p_train * 4,
            format!("2 moments × {} params × 4 B (f32)", count(p_train)),
        ));
    }

    // ---- activations ----
    let census = layer_census(&d, method, backend, dropout);
    let per_token_layer = census.elements() * a;
    let acts = if step.checkpointing {
        let inputs = d.l * n * d.h * a;
        let one = n * per_token_layer;
        item(
            names::ACTIVATIONS,
            inputs + one,
            format!(
                "checkpointing: {} layers × {} tokens × {} hidden × {a} B (each layer's input) + one layer recomputed: {} × {a} B = {} B/token × {} tokens",
                d.l,
                count(n),
                d.h,
                census.formula(),
                count(per_token_layer),
                count(n)
            ),
        )
    } else {
        item(
            names::ACTIVATIONS,
            d.l * n * per_token_layer,
            format!(
                "{} × {a} B ({adt}) = {} B/token/layer × {} tokens × {} layers",
                census.formula(),
                count(per_token_layer),
                count(n),
                d.l
            ),
        )
    };
    items.push(acts);

    // Outside the layers: the last layer's output, the final norm's, the target rows picked from
    // it (`batch::loss_sum`), and — for a frozen head — `∂h` taken in forward by the chunked
    // cross-entropy (`ops::loss::HeadCrossEntropy`). Full fine-tuning keeps the whole logits: bf16
    // (the matmul's output, kept by the cast), their f32 copy, `logits − max` and its `exp`
    // (candle's `log_sum_exp`; exp's backward reads its output).
    let head = if full {
        let per = if a == 4 { 12 } else { 14 };
        item(
            names::HEAD,
            3 * n * d.h * a + n * d.v * per,
            format!(
                "3 × {} tokens × {} hidden × {a} B + logits {} tokens × {} vocab × {per} B ({})",
                count(n),
                d.h,
                count(n),
                count(d.v),
                if a == 4 {
                    "f32 logits, logits − max, exp"
                } else {
                    "bf16 logits, their f32 copy, logits − max, exp"
                }
            ),
        )
    } else {
        item(
            names::HEAD,
            4 * n * d.h * a,
            format!(
                "4 × {} tokens × {} hidden × {a} B (last layer out, final norm, picked targets, ∂h from the chunked cross-entropy)",
                count(n),
                d.h
            ),
        )
    };
    items.push(head);

    // ---- attention probabilities ----
    let shares = shares(step.batch, backend, opts.cpu_threads);
    let probs_of = |rows: u64| rows * d.heads * t * t * a;
    let keep = |rows: u64| match backend {
        Backend::Cuda => step.seq <= KEEP_PROBS_MAX_T,
        Backend::Cpu => probs_of(rows) <= KEEP_PROBS_MAX_BYTES_CPU as u64,
    };
    let kept_rows: u64 = shares.iter().filter(|&&r| keep(r)).sum();
    let layers_with_probs = if step.checkpointing { 1 } else { d.l };
    let probs_bytes = layers_with_probs * probs_of(kept_rows);
    let rule = match backend {
        Backend::Cuda => format!("kept when seq ≤ {KEEP_PROBS_MAX_T}"),
        Backend::Cpu => format!(
            "kept when a share's rows × heads × seq² × 4 B ≤ {}",
            size(KEEP_PROBS_MAX_BYTES_CPU as u64)
        ),
    };
    items.push(item(
        names::PROBS,
        probs_bytes,
        if kept_rows == 0 {
            format!("recomputed in backward ({rule})")
        } else {
            format!(
                "{} layer(s) × {} rows × {} heads × {t}² × {a} B ({rule})",
                layers_with_probs, kept_rows, d.heads
            )
        },
    ));

    // ---- the backward transient (per share, summed over the shares in flight) ----
    // Attention's backward holds `dP` and `dS` (each the probabilities' size) beside the kept
    // probabilities, or the recomputed ones too. SwiGLU's backward on a GPU: the incoming `∂s`,
    // both gradients in one `[2, n, F]` buffer, and candle's accumulation (a zeroed buffer and the
    // sum) for each: ~6·n·F; the fused CPU MLP holds `∂s`, `∂g`, `∂u`: 3·n·F. Plus the residual
    // stream's gradient and the op's incoming one: 2·n·H.
    let mlp_factor = if backend == Backend::Cpu && matches!(method, Method::Lora { .. }) { 3 } else { 6 };
    let mut bwd = 0u64;
    let mut bwd_text = Vec::new();
    for &rows in &shares {
        let ns = rows * t;
        let attn = if keep(rows) { 2 * probs_of(rows) } else { 3 * probs_of(rows) };
        let mlp = mlp_factor * ns * d.f * a;
        bwd += attn.max(mlp) + 2 * ns * d.h * a;
        if bwd_text.is_empty() {
            bwd_text.push(format!(
                "max(attention {}× {rows}·{}·{t}²·{a} B, SwiGLU {mlp_factor}·{}·{}·{a} B) + 2·{}·{}·{a} B",
                if keep(rows) { 2 } else { 3 },
                d.heads,
                count(ns),
                d.f,
                count(ns),
                d.h
            ));
        }
    }
    let mut bwd_formula = format!(
        "{}{}",
        bwd_text.join(""),
        if shares.len() > 1 {
            format!(" per share × {} shares at once", shares.len())
        } else {
            String::new()
        }
    );
    if full {
        // The head's backward (f32 gradients of exp, logits − max and the gather, ~3·n·V·4 B) and
        // the embedding's (index_add into a zeroed [V, H] buffer, accumulated: ~3·V·H) come
        // before and after the layers': the largest of the three counts.
        let head_bwd = 3 * n * d.v * 4;
        let embed_bwd = 3 * embed * a;
        if head_bwd.max(embed_bwd) > bwd {
            bwd = head_bwd.max(embed_bwd);
            bwd_formula = format!(
                "max(head 3·{}·{}·4 B, embedding 3·{}·{a} B, layers {bwd_formula})",
                count(n),
                count(d.v),
                count(embed)
            );
        }
    }
    if matches!(method, Method::QLora { .. }) {
        // The largest base weight dequantized for its matmul (bitsandbytes does it per call).
        let deq = d.h * d.f.max(d.q) * a;
        bwd += deq;
        bwd_formula = format!("{bwd_formula} + one dequantized weight {}·{}·{a} B", d.h, d.f.max(d.q));
    }
    let bwd_item = item(names::BACKWARD, bwd, bwd_formula);

    // ---- the loss: chunked cross-entropy in forward (frozen head) ----
    let loss = if full {
        item(names::LOSS, 0, "the full logits, counted in the head activations".into())
    } else {
        let mut bytes = 0;
        let c_rows = ce_chunk_rows(cfg.vocab_size) as u64;
        for &rows in &shares {
            let c = c_rows.min(rows * t);
            // GPU: the bf16 logits chunk and its gradient (cross_entropy_backward); CPU: one f32
            // buffer turned into its gradient in place. Plus ∂h's pieces before they are joined.
            let per = if backend == Backend::Cuda { 2 * c * d.v * a } else { c * d.v * 4 };
            bytes += per + rows * t * d.h * a;
        }
        let (k, what) = if backend == Backend::Cuda {
            (2, "bf16 logits chunk + its gradient")
        } else {
            (1, "f32 logits chunk, its gradient in place")
        };
        item(
            names::LOSS,
            bytes,
            format!(
                "{k} × {} rows × {} vocab × {} B ({what}) + ∂h pieces {}·{}·{a} B{}",
                count(c_rows.min(shares[0] * t)),
                count(d.v),
                if backend == Backend::Cuda { a } else { 4 },
                count(shares[0] * t),
                d.h,
                if shares.len() > 1 {
                    format!(", per share × {} shares", shares.len())
                } else {
                    String::new()
                }
            ),
        )
    };
    // The peak is the larger of the two moments: end of forward (the loss chunk) or backward.
    let (bwd_item, loss) = if bwd_item.bytes >= loss.bytes {
        (
            bwd_item,
            MemoryItem {
                bytes: 0,
                formula: format!("{} (below the backward transient, not at the peak)", loss.formula),
                ..loss
            },
        )
    } else {
        (
            MemoryItem {
                bytes: 0,
                formula: format!("{} (below the loss transient, not at the peak)", bwd_item.formula),
                ..bwd_item
            },
            loss,
        )
    };
    items.push(bwd_item);
    items.push(loss);

    // ---- the optimizer step, once the graph is gone ----
    // Flat AdamW on a GPU (`optim::AdamW::step`): flattened gradients and parameters, new m and
    // v beside the old, and ~2 temporaries of the update: 6 more parameter-sized tensors beside
    // weights, gradients and moments. Per variable on the CPU: one variable's temporaries.
    let (pt_bytes, extra) = if full {
        (a, if backend == Backend::Cuda { 6 } else { 0 })
    } else {
        (4, if backend == Backend::Cuda { 6 } else { 0 })
    };
    let step_live = items
        .iter()
        .filter(|i| {
            [names::WEIGHTS, names::TRAINABLE, names::GRADIENTS, names::OPTIMIZER].contains(&i.name.as_str())
        })
        .map(|i| i.bytes)
        .sum::<u64>()
        + extra * p_train * pt_bytes;
    let backward_live: u64 = items.iter().map(|i| i.bytes).sum();
    let over = step_live.saturating_sub(backward_live);
    items.push(item(
        names::STEP,
        over,
        format!(
            "AdamW step: weights, gradients, moments + {extra} × {} params × {pt_bytes} B (flat copies, new moments, update) = {}; counted only where it exceeds the backward peak ({})",
            count(p_train),
            size(step_live),
            size(backward_live)
        ),
    ));

    items.push(runtime(backend));
    MemoryEstimate::new(items)
}

fn runtime(backend: Backend) -> MemoryItem {
    match backend {
        Backend::Cuda => item(
            names::RUNTIME,
            CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES,
            format!(
                "CUDA context {} + cuBLAS handle and workspace {} (measured, H100, driver 580)",
                size(CUDA_CONTEXT_BYTES),
                size(CUBLAS_WORKSPACE_BYTES)
            ),
        ),
        Backend::Cpu => item(
            names::RUNTIME,
            CPU_PROCESS_BYTES,
            format!(
                "process baseline {} (code, libraries, thread stacks, allocator arenas; measured)",
                size(CPU_PROCESS_BYTES)
            ),
        ),
    }
}

/// Weight storage of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeWeights {
    F32,
    Bf16,
    /// 4-bit blocks (GGUF Q4_1: 20 bytes per 32 weights = 5 bits a weight).
    Q4,
}

/// KV-cache bytes per token: `2 (K and V) × layers × kv_heads × head_dim × bytes per element`.
pub fn kv_bytes_per_token(cfg: &ModelConfig, bytes_per_element: u64) -> u64 {
    2 * cfg.num_layers as u64 * cfg.num_kv_heads as u64 * cfg.head_dim as u64 * bytes_per_element
}

/// Bytes per element of a server's activations and KV cache: f32 on the CPU whatever the
/// weights (the quantized path dequantizes the embedding to f32); on a GPU the weights' dtype,
/// f32 for Q4 (an f32 embedding sets the activations' dtype, `Llama::dtype`).
pub fn serve_activation_bytes(backend: Backend, weights: ServeWeights) -> u64 {
    match (backend, weights) {
        (Backend::Cuda, ServeWeights::Bf16) => 2,
        _ => 4,
    }
}

/// Memory of a server holding `weights` and a KV cache for `sequences` sequences of `context`
/// tokens (each in the activation dtype: f32 on the CPU, bf16 on a GPU).
pub fn serving(
    cfg: &ModelConfig,
    backend: Backend,
    weights: ServeWeights,
    context: usize,
    sequences: usize,
) -> MemoryEstimate {
    let d = Dims::of(cfg);
    let params = cfg.parameter_count();
    let embed = d.v * d.h;
    let lin = d.l * d.linear_params_per_layer();
    let mut items = Vec::new();
    let w = match weights {
        ServeWeights::F32 => {
            // The CPU engine packs every projection and the head (serve's `pack_for_decode`); a
            // tied head gets its own packed copy beside the embedding table used for lookups.
            let tied_copy = if backend == Backend::Cpu && cfg.tie_word_embeddings { embed * 4 } else { 0 };
            let extra = if tied_copy > 0 {
                format!(" + packed copy of the tied head {} × 4 B", count(embed))
            } else {
                String::new()
            };
            item(
                names::WEIGHTS,
                params * 4 + tied_copy,
                format!("{} params × 4 B (f32){extra}", count(params)),
            )
        }
        ServeWeights::Bf16 => {
            item(names::WEIGHTS, params * 2, format!("{} params × 2 B (bf16)", count(params)))
        }
        ServeWeights::Q4 => {
            // Projections as Q4_1 blocks; the embedding dequantized to f32 (`Weights::dense`),
            // norms f32; the head read as the GGUF stores it, assumed Q8_0 (34 B per 32), as
            // SmolLM2's Q4_1 GGUF ships it (tied: a quantized copy of the embedding).
            let head = embed;
            let norms = params - lin - embed - if cfg.tie_word_embeddings { 0 } else { embed };
            let bytes = lin * 20 / 32 + embed * 4 + norms * 4 + head * 34 / 32;
            item(
                names::WEIGHTS,
                bytes,
                format!(
                    "{} projection weights × 20/32 B (Q4_1) + embedding {} × 4 B (f32) + head {} × 34/32 B (Q8_0) + {} norm weights × 4 B",
                    count(lin),
                    count(embed),
                    count(head),
                    count(norms)
                ),
            )
        }
    };
    items.push(w);
    let e = serve_activation_bytes(backend, weights);
    let per = kv_bytes_per_token(cfg, e);
    let (ctx, seqs) = (context as u64, sequences as u64);
    items.push(item(
        names::KV,
        per * ctx * seqs,
        format!(
            "2 × {} layers × {} kv heads × {} head dim × {e} B = {} B/token × {} tokens × {} sequences",
            d.l,
            cfg.num_kv_heads,
            cfg.head_dim,
            count(per),
            count(ctx),
            seqs
        ),
    ));
    // The last positions' logits of a decode step (f32), the largest activation that scales
    // with the sequences served.
    items.push(item(names::LOGITS, seqs * d.v * 4, format!("{seqs} sequences × {} vocab × 4 B", count(d.v))));
    items.push(runtime(backend));
    MemoryEstimate::new(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelConfig {
        crate::shapes::lookup("smollm2-135m").expect("known shape")
    }

    fn lora() -> Method {
        Method::Lora { r: 16, targets: crate::default_targets() }
    }

    fn opts(dropout: f64, threads: usize) -> TrainOptions {
        TrainOptions { lora_dropout: dropout, cpu_threads: threads }
    }

    #[test]
    fn census_formula_shows_symbols_and_values() {
        let d = Dims::of(&smollm2());
        let c = layer_census(&d, &lora(), Backend::Cuda, true);
        assert_eq!(c.elements(), 6 * 576 + 4 * 576 + 4 * 192 + 3 * 1536 + 7 * 16);
        assert!(c.formula().starts_with("(6·H + 4·Q + 4·KV + 3·F + 7·r)"), "{}", c.formula());
    }

    #[test]
    fn gpu_ignores_dropout_but_the_cpu_keeps_masked_inputs() {
        let cfg = smollm2();
        let step = StepShape { batch: 4, seq: 256, checkpointing: false };
        let act = |backend, dropout| {
            training_with(&cfg, &lora(), backend, step, opts(dropout, 2)).bytes_of(names::ACTIVATIONS)
        };
        assert_eq!(act(Backend::Cuda, 0.0), act(Backend::Cuda, 0.1));
        // CPU fused: three more hidden-sized copies per layer with dropout (q/k/v: 3 instead of
        // 1, gate/up: 2 instead of 1).
        assert_eq!(act(Backend::Cpu, 0.1) - act(Backend::Cpu, 0.0), 3 * 576 * 4 * 1024 * 30);
    }

    #[test]
    fn items_sum_to_the_total() {
        let e = training(
            &smollm2(),
            &lora(),
            Backend::Cuda,
            StepShape { batch: 2, seq: 128, checkpointing: false },
        );
        assert_eq!(e.items.iter().map(|i| i.bytes).sum::<u64>(), e.total_bytes);
        assert!(e.items.iter().all(|i| !i.formula.is_empty()));
    }
}
