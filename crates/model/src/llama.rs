//! One LLaMA-family decoder (llama / mistral / qwen2 shapes) for training and inference:
//! GQA attention with RoPE, RMSNorm, SwiGLU MLP, tied or untied head, optional KV cache, and
//! per-row left padding for batched generation. Order follows HF's `modeling_llama.py`.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::attention;
use crate::config::ModelConfig;
use crate::linear::{BaseWeight, Linear};
use crate::ops::rope::{self, Positions, Rope};
use crate::weights::{WeightMode, Weights};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> crate::Result<Self> {
        Ok(Self { weight: w.dense(name, &[dim])?, eps })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn forward(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        if differentiable {
            crate::ops::norm::rms_norm(x, &self.weight, self.eps as f32)
        } else {
            candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// Per-call context shared by all layers: rope tables, the attention mask, the op flavour.
struct Ctx {
    cos: Tensor,
    sin: Tensor,
    /// Additive mask `[b, 1, 1, t, total]`, `None` when plain causal attention over the whole
    /// cache is right (a single new token, or no padding and no window in a full prefill
    /// would still need causality — see `build_mask`).
    mask: Option<Tensor>,
    differentiable: bool,
    /// Plain causal attention over exactly the new tokens (no cache, padding or window) in
    /// differentiable mode: `attention::train::causal_attention` (probabilities recomputed in backward).
    causal_op: bool,
    /// Where attention runs (fixed at model setup).
    backend: attention::Backend,
    /// `[t, t]` additive causal mask for `causal_op` on a device without a fused causal-softmax
    /// kernel (the CPU's and the CUDA kernels mask themselves).
    causal_mask: Option<Tensor>,
}

/// Per-step context of a batched decode step shared by all layers: each row's RoPE tables
/// `[b, 1, d/2]`, the sliding window, where attention runs.
struct StepCtx {
    cos: Tensor,
    sin: Tensor,
    window: Option<usize>,
    backend: attention::Backend,
}

impl Attention {
    fn load(w: &Weights, p: &str, cfg: &ModelConfig, mode: WeightMode) -> crate::Result<Self> {
        let (h, kv, d, hid) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size);
        let proj = |name: &str, out: usize, inp: usize, bias: bool| -> crate::Result<Linear> {
            let full = format!("{p}.{name}");
            let weight = w.linear(&format!("{full}.weight"), out, inp, mode)?;
            let b = if bias { Some(w.dense(&format!("{full}.bias"), &[out])?) } else { None };
            Ok(Linear::new(weight, b, inp, out))
        };
        Ok(Self {
            q_proj: proj("q_proj", h * d, hid, cfg.attention_bias)?,
            k_proj: proj("k_proj", kv * d, hid, cfg.attention_bias)?,
            v_proj: proj("v_proj", kv * d, hid, cfg.attention_bias)?,
            // HF llama's `attention_bias` also covers o_proj; qwen2 has no o_proj bias.
            o_proj: proj("o_proj", hid, h * d, cfg.attention_bias && cfg.family == crate::Family::Llama)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = if ctx.causal_op {
            // Training: the heads' transpose and the rotation as one op each way (a kernel on a GPU).
            let rot = Some((&ctx.cos, &ctx.sin));
            let split = crate::ops::rope::split_heads;
            (
                split(&self.q_proj.forward(x)?, h, d, rot)?,
                split(&self.k_proj.forward(x)?, kvh, d, rot)?,
                split(&self.v_proj.forward(x)?, kvh, d, None)?,
            )
        } else {
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()
            };
            let q = heads(self.q_proj.forward(x)?, h)?;
            let k = heads(self.k_proj.forward(x)?, kvh)?;
            let v = heads(self.v_proj.forward(x)?, kvh)?;
            (
                rope::apply(&q, &ctx.cos, &ctx.sin, ctx.differentiable)?,
                rope::apply(&k, &ctx.cos, &ctx.sin, ctx.differentiable)?,
                v,
            )
        };
        let (k, v) = match cache {
            // The cache hands back a narrowed view of its preallocated buffer; the matmuls take
            // its strides as they are (copying the whole cache every step was ~2% of decode).
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let rep = h / kvh;
        // GQA without copying K/V: fold the `rep` query heads that share a KV head into the
        // query-length axis, so one batched matmul serves them all.
        let q = q.reshape((b, kvh, rep * t, d))?;
        let params = attention::Params {
            t,
            scale: 1.0 / (d as f64).sqrt(),
            mask: ctx.mask.as_ref(),
            differentiable: ctx.differentiable,
            causal_op: ctx.causal_op,
            causal_mask: ctx.causal_mask.as_ref(),
        };
        let y = attention::attend(ctx.backend, &q, &k, &v, &params)?;
        let y = if ctx.causal_op {
            crate::ops::rope::merge_heads(&y.reshape((b, h, t, d))?)?
        } else {
            y.reshape((b, h, t, d))?.transpose(1, 2)?.reshape((b, t, h * d))?
        };
        self.o_proj.forward(&y)
    }

    /// One new token for each of `b` independent sequences (`x: [b, 1, hidden]`): the projections
    /// run batched over the rows, attention runs per row against that row's own cache (rows hold
    /// different lengths, so they cannot share one `[b, kv, total, d]` tensor without padding).
    /// `step` holds the per-row RoPE tables `[b, 1, d/2]`; `layer` picks each cache's layer.
    fn decode(
        &self,
        x: &Tensor,
        step: &StepCtx,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let (b, _, _) = x.dims3()?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // With one token per row, `[b, 1, n·d]` is already `[b, n, 1, d]` in memory.
        let q = self.q_proj.forward(x)?.reshape((b, h, 1, d))?;
        let k = self.k_proj.forward(x)?.reshape((b, kvh, 1, d))?;
        let v = self.v_proj.forward(x)?.reshape((b, kvh, 1, d))?;
        let q = rope::apply(&q, &step.cos, &step.sin, false)?;
        let k = rope::apply(&k, &step.cos, &step.sin, false)?;
        let scale = 1.0 / (d as f64).sqrt();
        let mut kv = Vec::with_capacity(b);
        for (r, cache) in caches.iter_mut().enumerate() {
            let pad = cache.left_pad.first().copied().unwrap_or(0);
            let (kc, vc) = cache.layers[layer].append(&k.narrow(0, r, 1)?, &v.narrow(0, r, 1)?)?;
            let total = kc.dim(2)?;
            // The one query sees keys from the end of the row's padding and inside the window:
            // a contiguous range, so a narrow replaces the mask.
            let start = pad.max(step.window.map_or(0, |w| total.saturating_sub(w)));
            kv.push((kc.narrow(2, start, total - start)?, vc.narrow(2, start, total - start)?));
        }
        let y = attention::attend_rows(step.backend, &q.reshape((b, h, d))?, &kv, kvh, scale)?;
        self.o_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn load(w: &Weights, p: &str, cfg: &ModelConfig, mode: WeightMode) -> crate::Result<Self> {
        let (hid, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let proj = |name: &str, out: usize, inp: usize| -> crate::Result<Linear> {
            let full = format!("{p}.{name}");
            let weight = w.linear(&format!("{full}.weight"), out, inp, mode)?;
            let b = if cfg.mlp_bias { Some(w.dense(&format!("{full}.bias"), &[out])?) } else { None };
            Ok(Linear::new(weight, b, inp, out))
        };
        Ok(Self {
            gate_proj: proj("gate_proj", ffn, hid)?,
            up_proj: proj("up_proj", ffn, hid)?,
            down_proj: proj("down_proj", hid, ffn)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (g, u) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        // Training: SwiGLU as one op with a hand-written backward (kernels on a GPU).
        let y =
            if g.track_op() || u.track_op() { crate::ops::swiglu::swiglu(&g, &u)? } else { (g.silu()? * u)? };
        self.down_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
    path: LayerPath,
}

/// How a layer's halves run in training, chosen when training is switched on or the adapters or
/// trainable weights change ([`Llama::choose_layer_paths`]), not probed on every forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerPath {
    /// LoRA training on the CPU (f32) with adapters on q, k, v and o and a frozen norm: the
    /// attention half and its residual as one op ([`crate::ops::layer::lora_attention_residual`])
    /// whenever the call is plain causal attention.
    pub fused_attention: bool,
    /// The same for the MLP half, with adapters on gate, up and down
    /// ([`crate::ops::layer::lora_mlp_residual`]).
    pub fused_mlp: bool,
}

impl Block {
    /// The layer's path for a model in `differentiable` mode on `backend` (see [`LayerPath`]).
    fn choose_path(&mut self, differentiable: bool, backend: attention::Backend) {
        let cpu_training = differentiable && backend == attention::Backend::CpuF32;
        let lora = |l: &Linear| l.trains_lora();
        let a = &self.self_attn;
        let m = &self.mlp;
        self.path = LayerPath {
            fused_attention: cpu_training
                && !self.input_layernorm.weight.track_op()
                && [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj].into_iter().all(lora),
            fused_mlp: cpu_training
                && !self.post_attention_layernorm.weight.track_op()
                && [&m.gate_proj, &m.up_proj, &m.down_proj].into_iter().all(lora),
        };
    }

    pub fn path(&self) -> LayerPath {
        self.path
    }

    /// The layer over new tokens (training, prefill, a cached single-stream step).
    fn forward(&self, x: &Tensor, ctx: &Ctx, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let fused = match cache {
            None if self.path.fused_attention && ctx.causal_op => self.fused_attention(x, ctx)?,
            _ => None,
        };
        let x = match fused {
            Some(y) => y,
            None => {
                let h = self.input_layernorm.forward(x, ctx.differentiable)?;
                (x + self.self_attn.forward(&h, ctx, cache)?)?
            }
        };
        self.mlp_half(&x, ctx.differentiable)
    }

    /// The layer for one new token per row, each row against its own cache (a batched decode step).
    fn decode(
        &self,
        x: &Tensor,
        step: &StepCtx,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, false)?;
        let x = (x + self.self_attn.decode(&h, step, caches, layer)?)?;
        self.mlp_half(&x, false)
    }

    /// `x + mlp(norm(x))`: the layer's second half.
    fn mlp_half(&self, x: &Tensor, differentiable: bool) -> Result<Tensor> {
        if self.path.fused_mlp
            && differentiable
            && let Some(y) = self.fused_mlp(x)?
        {
            return Ok(y);
        }
        let h = self.post_attention_layernorm.forward(x, differentiable)?;
        x + self.mlp.forward(&h)?
    }

    /// The attention half as one op (`None`: the adapters' parts are not there this call, e.g. a
    /// dtype that differs; the composed form runs).
    fn fused_attention(&self, x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        let a = &self.self_attn;
        let parts = |l: &Linear| l.training_lora(x.dtype()).transpose();
        let (Some(q), Some(k), Some(v), Some(o)) =
            (parts(&a.q_proj)?, parts(&a.k_proj)?, parts(&a.v_proj)?, parts(&a.o_proj)?)
        else {
            return Ok(None);
        };
        let (b, t, _) = x.dims3()?;
        let shape = crate::ops::layer::AttentionShape {
            b,
            t,
            heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
            cos: &ctx.cos,
            sin: &ctx.sin,
        };
        let norm = &self.input_layernorm;
        crate::ops::layer::lora_attention_residual(x, &norm.weight, norm.eps as f32, &shape, [&q, &k, &v, &o])
    }

    /// The MLP half as one op (`None` as for [`Self::fused_attention`]).
    fn fused_mlp(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let parts = |l: &Linear| l.training_lora(x.dtype()).transpose();
        let (Some(gate), Some(up), Some(down)) =
            (parts(&self.mlp.gate_proj)?, parts(&self.mlp.up_proj)?, parts(&self.mlp.down_proj)?)
        else {
            return Ok(None);
        };
        let norm = &self.post_attention_layernorm;
        crate::ops::layer::lora_mlp_residual(x, &norm.weight, norm.eps as f32, &gate, &up, &down)
    }
}

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `[b, t, vocab]` — scoring.
    All,
    /// `[b, vocab]` — generation only needs the last position; skips the head elsewhere.
    Last,
    /// No head: the final-normed hidden states `[b, t, hidden]`. Training applies the head to the
    /// target positions only (see `Llama::head`), so logits of masked positions never exist.
    Hidden,
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    rope: Rope,
    cfg: ModelConfig,
    differentiable: bool,
    /// Where attention runs: from the device and dtype, set when loaded or cast.
    attention: attention::Backend,
}

type LayerCache = candle_nn::kv_cache::KvCache;

/// Keys and values of every layer for a batch of sequences, plus each row's left padding.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    left_pad: Vec<usize>,
}

impl KvCache {
    /// `capacity` is a hint (tokens per sequence preallocated); the cache grows past it.
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        Self {
            layers: (0..cfg.num_layers).map(|_| LayerCache::new(2, capacity.max(1))).collect(),
            left_pad: Vec::new(),
        }
    }

    /// Tokens held per sequence (padding included).
    pub fn len(&self) -> usize {
        self.layers.first().map(|c| c.current_seq_len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerCache::reset);
        self.left_pad.clear();
    }
}

impl Llama {
    /// Build the model from HF-named weights; `mode` picks f32 or quantized linear layers.
    pub fn load(
        w: &Weights,
        cfg: &ModelConfig,
        mode: WeightMode,
        freq_factors: Option<&[f32]>,
    ) -> crate::Result<Self> {
        let embed_tokens = w.dense("model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
        // Grown as the layers load, not reserved from the config: a file's `block_count` is only a
        // claim (a fuzzed GGUF said 268 million layers, a 122 GB reservation), and the first
        // layer whose weights are missing ends the load with an error naming the tensor.
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                self_attn: Attention::load(w, &format!("{p}.self_attn"), cfg, mode)?,
                mlp: Mlp::load(w, &format!("{p}.mlp"), cfg, mode)?,
                input_layernorm: RmsNorm::load(
                    w,
                    &format!("{p}.input_layernorm.weight"),
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                )?,
                post_attention_layernorm: RmsNorm::load(
                    w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    cfg.hidden_size,
                    cfg.rms_norm_eps,
                )?,
                path: LayerPath::default(),
            });
        }
        let norm = RmsNorm::load(w, "model.norm.weight", cfg.hidden_size, cfg.rms_norm_eps)?;
        // A checkpoint may ship `lm_head.weight` even when tied (it is then equal to the
        // embedding); prefer it when present, as transformers' loading does for untied models.
        let head_name = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let head = match (mode, head_name == "model.embed_tokens.weight") {
            (WeightMode::F32, true) => BaseWeight::Dense(embed_tokens.clone()),
            _ => w.linear(head_name, cfg.vocab_size, cfg.hidden_size, mode)?,
        };
        let lm_head = Linear::new(head, None, cfg.hidden_size, cfg.vocab_size);
        let rope = Rope::new(cfg, freq_factors, w.device())?;
        let attention = attention::Backend::for_model(embed_tokens.device(), embed_tokens.dtype());
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            cfg: cfg.clone(),
            differentiable: false,
            attention,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The dtype activations run in (the embedding's; f32 unless [`Self::cast`] changed it).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The model on `device` with its weights in `dtype` (e.g. bf16 on a GPU for training; LoRA
    /// adapters keep f32 variables and run in the activations' dtype). Quantized layers are
    /// dequantized. A tied head keeps sharing the embedding. RoPE tables stay f32 and are cast
    /// at use.
    pub fn cast(&self, device: &Device, dtype: DType) -> Result<Self> {
        let mv = |t: &Tensor| -> Result<Tensor> { t.to_device(device)?.to_dtype(dtype) };
        let lin = |l: &Linear| -> Result<Linear> {
            let w = mv(&l.dense_weight()?)?;
            let b = l.bias().map(mv).transpose()?;
            let mut out = Linear::new(BaseWeight::Dense(w), b, l.in_features(), l.out_features());
            out.set_adapter(l.adapter().cloned());
            Ok(out)
        };
        let norm = |n: &RmsNorm| -> Result<RmsNorm> { Ok(RmsNorm { weight: mv(&n.weight)?, eps: n.eps }) };
        let embed_tokens = mv(&self.embed_tokens)?;
        let tied = matches!(self.lm_head.weight(), BaseWeight::Dense(w) if w.id() == self.embed_tokens.id());
        let lm_head = if tied {
            Linear::new(
                BaseWeight::Dense(embed_tokens.clone()),
                None,
                self.cfg.hidden_size,
                self.cfg.vocab_size,
            )
        } else {
            lin(&self.lm_head)?
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let a = &l.self_attn;
            let m = &l.mlp;
            layers.push(Block {
                self_attn: Attention {
                    q_proj: lin(&a.q_proj)?,
                    k_proj: lin(&a.k_proj)?,
                    v_proj: lin(&a.v_proj)?,
                    o_proj: lin(&a.o_proj)?,
                    num_heads: a.num_heads,
                    num_kv_heads: a.num_kv_heads,
                    head_dim: a.head_dim,
                },
                mlp: Mlp {
                    gate_proj: lin(&m.gate_proj)?,
                    up_proj: lin(&m.up_proj)?,
                    down_proj: lin(&m.down_proj)?,
                },
                input_layernorm: norm(&l.input_layernorm)?,
                post_attention_layernorm: norm(&l.post_attention_layernorm)?,
                path: LayerPath::default(),
            });
        }
        Ok(Self {
            embed_tokens,
            layers,
            norm: norm(&self.norm)?,
            lm_head,
            rope: self.rope.to_device(device)?,
            cfg: self.cfg.clone(),
            differentiable: self.differentiable,
            attention: attention::Backend::for_model(device, dtype),
        }
        .with_layer_paths())
    }

    /// Use only ops with a backward pass (training); the default uses candle's fused kernels.
    pub fn set_differentiable(&mut self, on: bool) {
        self.differentiable = on;
        self.choose_layer_paths();
    }

    /// Choose each layer's training path ([`LayerPath`]) for the current mode, adapters and
    /// trainable weights. Called by everything here that changes them ([`Self::set_differentiable`],
    /// [`Self::make_trainable`], `lora::Adapter::attach`/`detach`/`merge_into`); call it after
    /// setting a [`Linear`]'s adapter directly.
    pub fn choose_layer_paths(&mut self) {
        let (on, backend) = (self.differentiable, self.attention);
        self.layers.iter_mut().for_each(|l| l.choose_path(on, backend));
    }

    fn with_layer_paths(mut self) -> Self {
        self.choose_layer_paths();
        self
    }

    /// Where attention runs (see [`attention::Backend`]).
    pub fn attention_backend(&self) -> attention::Backend {
        self.attention
    }

    /// Full fine-tuning: make every base weight a trainable `Var` (embedding, projections and
    /// their biases, norms, untied head), returned by HF tensor name. A tied head keeps sharing
    /// the embedding's variable.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        let mut var = |name: String, t: &Tensor| -> Result<Tensor> {
            let v = Var::from_tensor(t)?;
            let out = v.as_tensor().clone();
            vars.push((name, v));
            Ok(out)
        };
        self.embed_tokens = var("model.embed_tokens.weight".into(), &self.embed_tokens)?;
        if self.cfg.tie_word_embeddings && matches!(self.lm_head.weight(), BaseWeight::Dense(_)) {
            self.lm_head.set_weight(BaseWeight::Dense(self.embed_tokens.clone()));
        } else {
            let w = var("lm_head.weight".into(), &self.lm_head.dense_weight()?)?;
            self.lm_head.set_weight(BaseWeight::Dense(w));
        }
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            l.input_layernorm.weight = var(format!("{p}.input_layernorm.weight"), &l.input_layernorm.weight)?;
            l.post_attention_layernorm.weight =
                var(format!("{p}.post_attention_layernorm.weight"), &l.post_attention_layernorm.weight)?;
        }
        self.norm.weight = var("model.norm.weight".into(), &self.norm.weight)?;
        for (name, lin) in self.linears_mut() {
            let w = var(format!("{name}.weight"), &lin.dense_weight()?)?;
            lin.set_weight(BaseWeight::Dense(w));
            if let Some(b) = lin.bias().cloned() {
                lin.set_bias(Some(var(format!("{name}.bias"), &b)?));
            }
        }
        self.choose_layer_paths();
        Ok(vars)
    }

    /// Every linear layer with its HF module name (`model.layers.3.self_attn.q_proj`), for
    /// attaching adapters by target-module name.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut l.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            let m = &mut l.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    /// Run the decoder. `ids: [b, t]` u32. `left_pad[i]` is the number of padding tokens at the
    /// start of row `i` (over the whole sequence, cache included); pass `None` when no row is
    /// padded. With a cache, `ids` continue the cached sequences.
    pub fn forward(
        &self,
        ids: &Tensor,
        left_pad: Option<&[usize]>,
        mut cache: Option<&mut KvCache>,
        which: Logits,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(c) = cache.as_deref_mut() {
            match left_pad {
                Some(p) if offset == 0 => c.left_pad = p.to_vec(),
                Some(p) if p != c.left_pad.as_slice() => {
                    candle_core::bail!("left padding changed mid-sequence")
                }
                None if offset == 0 => c.left_pad.clear(),
                _ => {}
            }
        }
        let pads: Vec<usize> = match (left_pad, cache.as_deref()) {
            (Some(p), _) => p.to_vec(),
            (None, Some(c)) => c.left_pad.clone(),
            (None, None) => Vec::new(),
        };
        if !pads.is_empty() && pads.len() != b {
            candle_core::bail!("left_pad has {} entries for a batch of {b}", pads.len())
        }
        let padded = pads.iter().any(|&p| p > 0);
        let total = offset + t;
        if total > self.rope.max_positions() {
            candle_core::bail!(
                "sequence of {total} tokens exceeds the model's {} positions",
                self.rope.max_positions()
            )
        }
        let positions = if padded {
            let mut v = Vec::with_capacity(b * t);
            for &p in &pads {
                v.extend((offset..total).map(|j| j.saturating_sub(p) as u32));
            }
            rope::positions_tensor(&v, b, t, self.device())?
        } else {
            Positions::Range { start: offset, len: t }
        };
        let dtype = self.dtype();
        let (cos, sin) = self.rope.tables(&positions)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let mask = build_mask(b, t, offset, &pads, self.cfg.sliding_window, self.device(), dtype)?;
        let causal_op =
            self.differentiable && offset == 0 && !padded && self.cfg.sliding_window.is_none_or(|w| t <= w);
        // Off the CPU, a `[t, t]` mask only for devices without the fused causal-softmax kernel.
        let causal_mask = if causal_op
            && !self.device().is_cpu()
            && self.attention != attention::Backend::Cuda
        {
            build_mask(1, t, 0, &[], None, self.device(), dtype)?.map(|m| m.reshape((t, t))).transpose()?
        } else {
            None
        };
        let ctx = Ctx {
            cos,
            sin,
            mask,
            differentiable: self.differentiable,
            causal_op,
            causal_mask,
            backend: self.attention,
        };

        let mut x =
            self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        if !self.embed_tokens.track_op() {
            // A frozen embedding needs no gradient: cut the graph here, or backward would
            // scatter into a zero buffer the size of the vocabulary every step.
            x = x.detach();
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &ctx, c)?;
        }
        let x = match which {
            Logits::All | Logits::Hidden => x,
            Logits::Last => x.narrow(1, t - 1, 1)?.contiguous()?,
        };
        let x = self.norm.forward(&x, self.differentiable)?;
        match which {
            Logits::Hidden => Ok(x),
            Logits::All => self.lm_head.forward(&x),
            Logits::Last => self.lm_head.forward(&x)?.squeeze(1),
        }
    }

    /// Inference prefill of one sequence into `cache`, at most `chunk` tokens per forward pass,
    /// so no pass holds more than `[heads, chunk, total]` attention scores (the whole prompt at
    /// once would be `[heads, t, t]`: gigabytes at 8k tokens). Returns the last position's
    /// logits `[1, vocab]`; the cache may already hold a prefix. Chunks only change how the
    /// same products are grouped, so the logits equal one full pass up to float rounding.
    pub fn prefill(&self, ids: &[u32], cache: &mut KvCache, chunk: usize) -> Result<Tensor> {
        if ids.is_empty() || chunk == 0 {
            candle_core::bail!("prefill: {} tokens in chunks of {chunk}", ids.len())
        }
        self.prefill_batch(&Tensor::new(ids, self.device())?.unsqueeze(0)?, None, cache, chunk)
    }

    /// [`Llama::prefill`] for a batch `ids: [b, t]`, left-padded by `left_pad` as in
    /// [`Llama::forward`] (the padding goes with the first chunk; the cache keeps it). Returns
    /// each row's last-position logits `[b, vocab]`.
    pub fn prefill_batch(
        &self,
        ids: &Tensor,
        left_pad: Option<&[usize]>,
        cache: &mut KvCache,
        chunk: usize,
    ) -> Result<Tensor> {
        let t = ids.dim(1)?;
        if t == 0 || chunk == 0 {
            candle_core::bail!("prefill: {t} tokens in chunks of {chunk}")
        }
        if self.differentiable {
            candle_core::bail!("prefill is inference only (the model is in differentiable mode)")
        }
        let mut start = 0;
        loop {
            let end = (start + chunk).min(t);
            let x = ids.narrow(1, start, end - start)?.contiguous()?;
            let pad = if start == 0 { left_pad } else { None };
            if end == t {
                return self.forward(&x, pad, Some(cache), Logits::Last);
            }
            // Earlier chunks only fill the cache: their hidden states need no head.
            self.forward(&x, pad, Some(cache), Logits::Hidden)?;
            start = end;
        }
    }

    /// One decode step for `ids.len()` independent sequences, each with its own cache (one
    /// sequence per cache, any lengths): the linear layers — the cost of a step — run once over
    /// all rows as a `[b, 1, hidden]` input, attention per row against its own cache, RoPE at each
    /// row's own position. Returns the next-token logits `[b, vocab]`; each cache grows by one.
    /// This is what a continuous-batching server needs: sequences of different lengths that
    /// joined at different times advance together.
    pub fn decode_step(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = ids.len();
        if b == 0 || caches.len() != b {
            candle_core::bail!("decode_step: {b} ids for {} caches", caches.len())
        }
        if self.differentiable {
            candle_core::bail!("decode_step is inference only (the model is in differentiable mode)")
        }
        let mut positions = Vec::with_capacity(b);
        for c in caches.iter() {
            if c.left_pad.len() > 1 {
                candle_core::bail!(
                    "decode_step: a cache holds a batch of {} sequences; it takes one per cache",
                    c.left_pad.len()
                )
            }
            let offset = c.len();
            if offset + 1 > self.rope.max_positions() {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the model's {} positions",
                    offset + 1,
                    self.rope.max_positions()
                )
            }
            positions.push(offset.saturating_sub(c.left_pad.first().copied().unwrap_or(0)) as u32);
        }
        let (cos, sin) = self.rope.tables(&rope::positions_tensor(&positions, b, 1, self.device())?)?;
        let step = StepCtx {
            cos: cos.to_dtype(self.dtype())?,
            sin: sin.to_dtype(self.dtype())?,
            window: self.cfg.sliding_window,
            backend: self.attention,
        };
        let ids = Tensor::from_slice(ids, b, self.device())?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?.reshape((b, 1, self.cfg.hidden_size))?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.decode(&x, &step, caches, i)?;
        }
        let x = self.norm.forward(&x, false)?;
        self.lm_head.forward(&x)?.squeeze(1)
    }

    /// The head's weight when it is a plain frozen matrix (no bias, no adapter, not trained):
    /// training can then fuse it into the loss (`ops::loss::frozen_head_cross_entropy_sum`).
    pub fn frozen_head_weight(&self) -> Option<&Tensor> {
        match self.lm_head.weight() {
            BaseWeight::Dense(w)
                if !w.track_op() && self.lm_head.bias().is_none() && self.lm_head.adapter().is_none() =>
            {
                Some(w)
            }
            _ => None,
        }
    }

    /// The LM head on final-normed hidden states `[.., hidden]` → `[.., vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

/// Additive attention mask `[b, 1, 1, t, offset + t]`: causal, hides each row's left padding,
/// and applies a sliding window when the config has one. `None` when nothing is hidden (one new
/// token, no padding, inside the window).
fn build_mask(
    b: usize,
    t: usize,
    offset: usize,
    pads: &[usize],
    window: Option<usize>,
    device: &Device,
    dtype: DType,
) -> Result<Option<Tensor>> {
    let total = offset + t;
    let padded = pads.iter().any(|&p| p > 0);
    let windowed = window.is_some_and(|w| total > w);
    if t == 1 && !padded && !windowed {
        return Ok(None);
    }
    let rows = if padded { b } else { 1 };
    let mut m = vec![0f32; rows * t * total];
    for r in 0..rows {
        let pad = pads.get(r).copied().unwrap_or(0);
        for s in 0..t {
            let q = offset + s;
            for k in 0..total {
                let visible = if q < pad {
                    // A padding query sees only itself, so its softmax row is not all -inf (NaN);
                    // its output is never used.
                    k == q
                } else {
                    k <= q && k >= pad && window.is_none_or(|w| q - k < w)
                };
                if !visible {
                    m[(r * t + s) * total + k] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let m = Tensor::from_vec(m, (rows, 1, 1, t, total), device)?.to_dtype(dtype)?;
    Ok(Some(m))
}
