//! Engine tests on the tiny random model: outputs equal `ferrotune_model::generate` alone (one
//! request, five in a continuous batch, with an adapter), limits, cancellation, runtime
//! adapters, logprobs, shutdown.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use ferrotune_model::{
    Adapter, GenerateParams, LoadedModel, Logits, LoraSpec, SamplingParams, WeightMode, generate,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;

const WAIT: Duration = Duration::from_secs(60);

fn tiny() -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().expect("temp dir");
    ferrotune_model::testing::write_tiny_model(dir.path()).expect("tiny model");
    let m = ferrotune_model::load_path(dir.path(), WeightMode::F32, &Device::Cpu).expect("load tiny model");
    (dir, m)
}

fn request(prompt: &[u32], max_tokens: usize) -> (GenRequest, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let req = GenRequest {
        adapter: None,
        prompt: prompt.to_vec(),
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        logprobs: None,
        prompt_logprobs: false,
        ignore_eos: false,
        constraint: None,
        received: Instant::now(),
        events: tx,
    };
    (req, rx)
}

#[derive(Debug, Default)]
struct Outcome {
    started: bool,
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    finish: Option<FinishReason>,
    completion_tokens: usize,
    error: Option<String>,
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> Outcome {
    let mut out = Outcome::default();
    let run = async {
        while let Some(e) = rx.recv().await {
            match e {
                Event::Started { .. } => out.started = true,
                Event::PromptLogprobs(l) => out.prompt_logprobs = Some(l),
                Event::Token { id, text, logprob } => {
                    out.tokens.push(id);
                    out.text.push_str(&text);
                    out.logprobs.extend(logprob);
                }
                Event::Done { finish, completion_tokens, .. } => {
                    out.finish = Some(finish);
                    out.completion_tokens = completion_tokens;
                    break;
                }
                Event::Error(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
    };
    tokio::time::timeout(WAIT, run).await.expect("the sequence finished in time");
    out
}

fn alone(
    m: &LoadedModel,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
    sampling: SamplingParams,
) -> ferrotune_model::Generation {
    let params = GenerateParams { max_tokens, sampling, stop: stop.to_vec(), eos_ids: m.eos_ids.clone() };
    generate(&m.model, &m.tokenizer, prompt, &params, |_| {}).expect("generate")
}

/// The tiny model's EOS id.
const TINY_EOS: u32 = 2;

fn assert_same(got: &Outcome, want: &ferrotune_model::Generation, what: &str) {
    assert_eq!(got.error, None, "{what}");
    // The engine returns EOS as a last token (vLLM's behaviour); `generate` leaves it out.
    let eos = want.finish == ferrotune_model::FinishReason::Stop
        && got.tokens.len() == want.tokens.len() + 1
        && got.tokens.last() == Some(&TINY_EOS);
    let tokens = if eos { &got.tokens[..want.tokens.len()] } else { &got.tokens[..] };
    assert_eq!(tokens, &want.tokens[..], "{what}: tokens");
    assert_eq!(got.text, want.text, "{what}: text");
    assert_eq!(got.finish, Some(FinishReason::from(want.finish)), "{what}: finish");
    assert_eq!(got.completion_tokens, want.tokens.len() + usize::from(eos), "{what}: usage");
}

fn prompt(m: &LoadedModel, text: &str) -> Vec<u32> {
    m.tokenizer.encode(text, true).expect("encode")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn greedy_output_through_the_engine_equals_generate_alone() {
    let (_dir, m) = tiny();
    let engine = start(m.clone(), "tiny".into(), EngineConfig::default());
    let p = prompt(&m, "Hello there, engine");
    let want = alone(&m, &p, 40, &[], SamplingParams::default());
    let (req, rx) = request(&p, 40);
    engine.submit(req).expect("submit");
    let got = collect(rx).await;
    assert!(got.started);
    assert_same(&got, &want, "greedy");

    // A stop string taken from the middle of that text: cut there, as generate does.
    if want.text.chars().count() > 8 {
        let stop: String = want.text.chars().skip(5).take(3).collect();
        let want = alone(&m, &p, 40, std::slice::from_ref(&stop), SamplingParams::default());
        let (mut req, rx) = request(&p, 40);
        req.stop = vec![stop];
        engine.submit(req).expect("submit");
        assert_same(&collect(rx).await, &want, "stop string");
    }

    // Seeded sampling follows the same random stream.
    let sampling = SamplingParams { temperature: 0.9, top_p: 0.95, seed: 11, ..Default::default() };
    let want = alone(&m, &p, 30, &[], sampling.clone());
    let (mut req, rx) = request(&p, 30);
    req.sampling = sampling;
    engine.submit(req).expect("submit");
    assert_same(&collect(rx).await, &want, "seeded sampling");
}

#[tokio::test]
async fn five_concurrent_requests_in_a_continuous_batch_each_equal_generate_alone() {
    let (_dir, m) = tiny();
    // Batch of 3 for 5 requests: two wait and join the running batch as others finish.
    let cfg = EngineConfig { max_batch: 3, ..Default::default() };
    let engine = start(m.clone(), "tiny".into(), cfg);
    let cases: Vec<(Vec<u32>, usize)> = vec![
        (prompt(&m, "a"), 7),
        (prompt(&m, "The quick brown fox jumps"), 33),
        (prompt(&m, "Lorem ipsum dolor sit amet, consectetur"), 12),
        (prompt(&m, "xyz"), 50),
        (prompt(&m, "Serving with continuous batching"), 21),
    ];
    let mut rxs = Vec::new();
    for (p, n) in &cases {
        let (mut req, rx) = request(p, *n);
        req.ignore_eos = true;
        engine.submit(req).expect("submit");
        rxs.push(rx);
    }
    let outs = futures_join(rxs).await;
    for ((p, n), got) in cases.iter().zip(&outs) {
        let params = GenerateParams {
            max_tokens: *n,
            sampling: SamplingParams::default(),
            stop: vec![],
            eos_ids: vec![],
        };
        let want = generate(&m.model, &m.tokenizer, p, &params, |_| {}).expect("generate");
        assert_same(got, &want, &format!("prompt of {} tokens, max_tokens {n}", p.len()));
        assert_eq!(got.tokens.len(), *n);
    }
    wait_until("the engine is idle", || engine.stats().running == 0).await;
    assert_eq!(engine.stats().kv_used, 0);
}

async fn futures_join(rxs: Vec<UnboundedReceiver<Event>>) -> Vec<Outcome> {
    let handles: Vec<_> = rxs.into_iter().map(|rx| tokio::spawn(collect(rx))).collect();
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.await.expect("collector task"));
    }
    outs
}

#[tokio::test]
async fn full_queue_too_large_unknown_adapter_and_shutdown_are_refused() {
    let (_dir, m) = tiny();
    let cfg = EngineConfig { max_batch: 1, kv_token_budget: 300, queue_capacity: 2, ..Default::default() };
    let engine = start(m.clone(), "tiny".into(), cfg);
    let p = prompt(&m, "hi");
    let (req, _rx) = request(&p, 299);
    assert_eq!(
        engine.submit(req).err(),
        Some(SubmitError::TooLarge { prompt: p.len(), max_tokens: 299, budget: 300 })
    );
    let (mut req, _rx) = request(&p, 5);
    req.adapter = Some("nope".into());
    assert_eq!(engine.submit(req).err(), Some(SubmitError::UnknownAdapter("nope".into())));
    // One runs (batch of 1), two wait, the rest find the queue full.
    let mut results = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..6 {
        let (mut req, rx) = request(&p, 250);
        req.ignore_eos = true;
        results.push(engine.submit(req));
        keep.push(rx);
    }
    assert!(results.iter().any(|r| r == &Err(SubmitError::QueueFull)), "{results:?}");
    // Two fit in the queue; a third only if the loop took the first one out in between.
    assert!((2..=3).contains(&results.iter().filter(|r| r.is_ok()).count()), "{results:?}");
    engine.begin_shutdown();
    let (req, _rx) = request(&p, 5);
    assert_eq!(engine.submit(req).err(), Some(SubmitError::ShuttingDown));
    drop(keep);
    tokio::time::timeout(WAIT, engine.drained()).await.expect("drained");
}

#[tokio::test]
async fn closing_the_receiver_cancels_and_frees_the_kv_reservation() {
    let (_dir, m) = tiny();
    let cfg = EngineConfig { max_batch: 1, ..Default::default() };
    let engine = start(m.clone(), "tiny".into(), cfg);
    let p = prompt(&m, "cancel me");
    // The tiny model can generate all 500 tokens before this task looks at the stats (an
    // unloaded machine did): try until the reservation is seen while the sequence runs.
    let mut caught = false;
    for _ in 0..20 {
        let (mut req, mut rx) = request(&p, 500 - p.len());
        req.ignore_eos = true;
        engine.submit(req).expect("submit");
        // A second one waits behind it (batch of 1); its client leaves while it is queued.
        let (mut req2, rx2) = request(&p, 100);
        req2.ignore_eos = true;
        engine.submit(req2).expect("submit");
        let first = tokio::time::timeout(WAIT, rx.recv()).await.expect("event");
        assert!(matches!(first, Some(Event::Started { .. })), "{first:?}");
        let kv = engine.stats().kv_used;
        drop(rx2);
        drop(rx);
        if kv == 500 {
            caught = true;
            break;
        }
        // Finished (or the second one started) before the look: let both go and try again.
        wait_until("the engine is idle", || {
            let s = engine.stats();
            s.running == 0 && s.waiting == 0 && s.kv_used == 0
        })
        .await;
    }
    assert!(caught, "never saw the first sequence's 500-token reservation while it ran");
    wait_until("the cancelled sequences are gone", || {
        let s = engine.stats();
        s.running == 0 && s.waiting == 0 && s.kv_used == 0
    })
    .await;
    // The engine still serves.
    let (req, rx) = request(&p, 3);
    engine.submit(req).expect("submit");
    assert_eq!(collect(rx).await.error, None);
}

/// A LoRA adapter with random (nonzero) B, saved in PEFT format.
fn make_adapter(m: &mut LoadedModel, dir: &std::path::Path) -> Adapter {
    let a =
        Adapter::init(&mut m.model, &LoraSpec { dropout: 0.0, r: 4, alpha: 8.0, ..Default::default() }, 9)
            .expect("init");
    for (name, v) in &a.vars {
        if name.ends_with("lora_B.weight") {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &Device::Cpu).expect("randn")).expect("set");
        }
    }
    a.save(dir, "tiny").expect("save adapter");
    a
}

#[tokio::test]
async fn runtime_adapter_matches_the_attached_model_and_leaves_base_requests_alone() {
    let (dir, mut m) = tiny();
    let adir = dir.path().join("adapter");
    let adapter = make_adapter(&mut m, &adir);
    let mut with = m.clone();
    adapter.attach(&mut with.model);
    let engine = start(m.clone(), "tiny".into(), EngineConfig::default());
    engine.adapter(AdapterCommand::Load { name: "support".into(), dir: adir.clone() }).await.expect("load");
    assert_eq!(engine.adapters(), vec!["support".to_string()]);
    assert!(
        engine.adapter(AdapterCommand::Load { name: "support".into(), dir: adir.clone() }).await.is_err()
    );

    let p = prompt(&m, "Where is my order?");
    let n = 40;
    let no_eos = |m: &LoadedModel| {
        let params = GenerateParams {
            max_tokens: n,
            sampling: SamplingParams::default(),
            stop: vec![],
            eos_ids: vec![],
        };
        generate(&m.model, &m.tokenizer, &p, &params, |_| {}).expect("generate")
    };
    let want_base = no_eos(&m);
    let want_adapter = no_eos(&with);
    assert_ne!(want_base.tokens, want_adapter.tokens, "the adapter must change the output");

    // Base and adapter requests in flight together (grouped steps in the same iterations).
    let (mut ra, rxa) = request(&p, n);
    ra.adapter = Some("support".into());
    ra.ignore_eos = true;
    let (mut rb, rxb) = request(&p, n);
    rb.ignore_eos = true;
    engine.submit(ra).expect("submit adapter request");
    engine.submit(rb).expect("submit base request");
    let outs = futures_join(vec![rxa, rxb]).await;
    assert_same(&outs[0], &want_adapter, "adapter request");
    assert_same(&outs[1], &want_base, "base request in the same batch");

    // Unload while a request with the adapter is in flight: it finishes, unchanged.
    let (mut ra, mut rxa) = request(&p, n);
    ra.adapter = Some("support".into());
    ra.ignore_eos = true;
    engine.submit(ra).expect("submit");
    let first = tokio::time::timeout(WAIT, rxa.recv()).await.expect("event");
    assert!(matches!(first, Some(Event::Started { .. })), "{first:?}");
    engine.adapter(AdapterCommand::Unload { name: "support".into() }).await.expect("unload");
    assert!(engine.adapters().is_empty());
    let mut got = collect(rxa).await;
    got.started = true;
    assert_same(&got, &want_adapter, "request in flight during unload");
    let (mut late, _rx) = request(&p, 5);
    late.adapter = Some("support".into());
    assert_eq!(engine.submit(late).err(), Some(SubmitError::UnknownAdapter("support".into())));
    assert!(engine.adapter(AdapterCommand::Unload { name: "support".into() }).await.is_err());
    // Loading it again (new id) works.
    engine.adapter(AdapterCommand::Load { name: "support".into(), dir: adir }).await.expect("reload");
    let bad =
        engine.adapter(AdapterCommand::Load { name: "x".into(), dir: dir.path().join("missing") }).await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn disabling_an_adapter_ends_its_running_and_queued_sequences_and_leaves_the_base_alone() {
    let (dir, mut m) = tiny();
    let adir = dir.path().join("adapter");
    make_adapter(&mut m, &adir);
    let engine = start(m.clone(), "tiny".into(), EngineConfig { max_batch: 2, ..Default::default() });
    engine.adapter(AdapterCommand::Load { name: "support@2".into(), dir: adir }).await.expect("load");
    let p = prompt(&m, "Where is my order?");
    let n = 480 - p.len();
    let long = |adapter: Option<&str>| {
        let (mut r, rx) = request(&p, n);
        r.adapter = adapter.map(str::to_string);
        r.ignore_eos = true;
        (r, rx)
    };
    // Running: one on the adapter, one on the base; queued (the batch holds 2): one more on the adapter.
    let (ra, mut rxa) = long(Some("support@2"));
    let (rb, rxb) = long(None);
    let (rq, rxq) = long(Some("support@2"));
    engine.submit(ra).expect("submit");
    engine.submit(rb).expect("submit");
    engine.submit(rq).expect("submit");
    let first = tokio::time::timeout(WAIT, rxa.recv()).await.expect("event");
    assert!(matches!(first, Some(Event::Started { .. })), "{first:?}");
    assert!(engine.disable_adapter("support@2"));
    assert!(!engine.disable_adapter("support@2"), "unloaded by the first call");
    assert!(engine.adapters().is_empty());
    let outs = futures_join(vec![rxa, rxb, rxq]).await;
    assert_eq!(outs[0].finish, Some(FinishReason::Disabled), "{:?}", outs[0]);
    assert!(outs[0].completion_tokens < n, "ended early: {:?}", outs[0]);
    assert_eq!(
        (outs[1].finish, outs[1].completion_tokens),
        (Some(FinishReason::Length), n),
        "the base request runs on"
    );
    assert_eq!(
        (outs[2].finish, outs[2].completion_tokens),
        (Some(FinishReason::Disabled), 0),
        "{:?}",
        outs[2]
    );
    let (mut late, _rx) = request(&p, 5);
    late.adapter = Some("support@2".into());
    assert_eq!(engine.submit(late).err(), Some(SubmitError::UnknownAdapter("support@2".into())));
}

/// Prompt logprobs are taken chunk by chunk during chunked prefill; they must equal one full
/// pass's log-softmax (within 1e-4 absolute, f32) for any chunk size, including chunks that
/// split the prompt unevenly.
#[tokio::test]
async fn logprobs_are_the_model_log_softmax_and_prompt_logprobs_come_from_a_full_prefill() {
    let (_dir, m) = tiny();
    let engine = start(m.clone(), "tiny".into(), EngineConfig::default());
    let p = prompt(&m, "score this, a prompt long enough for several prefill chunks");
    let ids = Tensor::new(p.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("ids");
    let logits = m.model.forward(&ids, None, None, Logits::All).expect("forward");
    let lsm = log_softmax_rows(&logits.squeeze(0).expect("squeeze"));
    for chunk in [512, 7, 1] {
        let cfg = EngineConfig {
            prefill_chunk_tokens: chunk,
            long_prefill_chunk_tokens: chunk,
            ..Default::default()
        };
        let engine = start(m.clone(), "tiny".into(), cfg);
        let (mut req, rx) = request(&p, 0);
        req.prompt_logprobs = true;
        req.logprobs = Some(2);
        engine.submit(req).expect("submit");
        let got = collect(rx).await;
        assert_eq!((got.finish, got.completion_tokens), (Some(FinishReason::Length), 0));
        let lps = got.prompt_logprobs.expect("prompt logprobs");
        assert_eq!(lps.len(), p.len() - 1);
        for (i, lp) in lps.iter().enumerate() {
            assert_eq!(lp.id, p[i + 1]);
            let want = lsm[i][p[i + 1] as usize];
            assert!(
                (lp.logprob - want).abs() < 1e-4,
                "chunk {chunk}, position {i}: {} vs {want}",
                lp.logprob
            );
            assert_eq!(lp.top.len(), 2);
            assert!(lp.top[0].1 >= lp.top[1].1);
        }
    }

    let (mut req, rx) = request(&p, 5);
    req.logprobs = Some(3);
    req.ignore_eos = true;
    engine.submit(req).expect("submit");
    let got = collect(rx).await;
    assert_eq!(got.logprobs.len(), 5);
    for (lp, &id) in got.logprobs.iter().zip(&got.tokens) {
        // Greedy: the chosen token is the most likely one.
        assert_eq!((lp.id, lp.top[0].0), (id, id));
        assert!((lp.logprob - lp.top[0].1).abs() < 1e-6 && lp.logprob <= 0.0);
    }
}

fn log_softmax_rows(logits: &Tensor) -> Vec<Vec<f32>> {
    let rows: Vec<Vec<f32>> = logits.to_vec2().expect("rows");
    rows.into_iter()
        .map(|r| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + r.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
            r.into_iter().map(|l| l - lse).collect()
        })
        .collect()
}

#[tokio::test]
async fn bad_requests_fail_alone_and_the_loop_goes_on() {
    let (_dir, m) = tiny();
    let engine = start(m.clone(), "tiny".into(), EngineConfig::default());
    let (req, rx_empty) = request(&[], 5);
    engine.submit(req).expect("submit");
    let (req, rx_oov) = request(&[1, 100_000], 5);
    engine.submit(req).expect("submit");
    let (mut req, rx_bad_sampling) = request(&[1, 2], 5);
    req.sampling.top_p = 0.0;
    engine.submit(req).expect("submit");
    let p = prompt(&m, "fine");
    let (req, rx_ok) = request(&p, 5);
    engine.submit(req).expect("submit");
    let outs = futures_join(vec![rx_empty, rx_oov, rx_bad_sampling, rx_ok]).await;
    assert!(outs[0].error.as_deref().is_some_and(|e| e.contains("empty")), "{:?}", outs[0]);
    assert!(outs[1].error.as_deref().is_some_and(|e| e.contains("100000")), "{:?}", outs[1]);
    assert!(outs[2].error.as_deref().is_some_and(|e| e.contains("top_p")), "{:?}", outs[2]);
    assert_eq!(outs[3].error, None);
}

#[tokio::test]
async fn shutdown_finishes_running_and_queued_requests() {
    let (_dir, m) = tiny();
    let cfg = EngineConfig { max_batch: 2, ..Default::default() };
    let engine = start(m.clone(), "tiny".into(), cfg);
    let p = prompt(&m, "drain");
    let mut rxs = Vec::new();
    for n in [30, 40, 50, 60] {
        let (mut req, rx) = request(&p, n);
        req.ignore_eos = true;
        engine.submit(req).expect("submit");
        rxs.push(rx);
    }
    engine.begin_shutdown();
    let (req, _rx) = request(&p, 5);
    assert_eq!(engine.submit(req).err(), Some(SubmitError::ShuttingDown));
    let collectors: Vec<_> = rxs.into_iter().map(|rx| tokio::spawn(collect(rx))).collect();
    tokio::time::timeout(WAIT, engine.drained()).await.expect("drained in time");
    for (c, n) in collectors.into_iter().zip([30, 40, 50, 60]) {
        let out = c.await.expect("collector");
        assert_eq!((out.finish, out.completion_tokens), (Some(FinishReason::Length), n));
    }
    let s = engine.stats();
    assert_eq!((s.running, s.waiting, s.kv_used), (0, 0, 0));
}

/// Put requests in the queue together, under its lock, so the loop admits them in one
/// iteration (a test of scheduling must not depend on how fast this thread runs).
fn submit_together(engine: &EngineHandle, reqs: Vec<GenRequest>) {
    let s = &engine.shared;
    let mut q = lock(&s.queue);
    for req in reqs {
        q.waiting.push_back(Queued { req, adapter: None });
    }
    s.idle.send_replace(false);
    drop(q);
    s.wake.notify_one();
}

/// Regression: the whole prompt was prefilled in one pass at admission, so a short request
/// admitted beside a long prompt got nothing until that pass ended (and the pass held
/// `[heads, t, t]` scores). Now a step prefills about one chunk, so the short one runs through
/// to its last token while the long prompt is still being prefilled chunk by chunk. Both send
/// into one channel, so the order of their events is the order of the engine's steps.
#[tokio::test]
async fn a_short_request_finishes_while_a_long_prompt_is_still_prefilling() {
    let (_dir, m) = tiny();
    let chunk = 4;
    let cfg =
        EngineConfig { prefill_chunk_tokens: 64, long_prefill_chunk_tokens: chunk, ..Default::default() };
    let engine = start(m.clone(), "tiny".into(), cfg);
    let long: Vec<u32> = (0..480).map(|i| 3 + (i * 7 % 250) as u32).collect();
    let short = prompt(&m, "hi");
    let (mut long_req, mut rx) = request(&long, 2);
    long_req.ignore_eos = true;
    let (mut short_req, _unused) = request(&short, 3);
    short_req.ignore_eos = true;
    short_req.events = long_req.events.clone();
    submit_together(&engine, vec![long_req, short_req]);
    let mut order = Vec::new();
    let mut done = 0;
    while done < 2 {
        let e = tokio::time::timeout(WAIT, rx.recv()).await.expect("event in time").expect("open channel");
        match e {
            Event::Started { prompt_tokens, .. } => order.push(("started", prompt_tokens)),
            Event::Done { prompt_tokens, completion_tokens, .. } => {
                order.push(("done", prompt_tokens));
                assert_eq!(completion_tokens, if prompt_tokens == long.len() { 2 } else { 3 });
                done += 1;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    let want =
        vec![("started", short.len()), ("done", short.len()), ("started", long.len()), ("done", long.len())];
    assert_eq!(order, want, "the short request must finish before the long prompt's prefill ends");
    // One chunk of the long prompt per step: at least 120 steps (the counter moves at the end
    // of the step whose events we just read).
    let chunks = long.len().div_ceil(chunk) as u64;
    wait_until("the engine counted 120 steps", || engine.steps() >= chunks).await;
}

#[test]
fn each_step_prefills_short_prompts_first_then_one_chunk_of_a_long_one() {
    let cfg = EngineConfig::default();
    assert_eq!((cfg.prefill_chunk(512), cfg.prefill_chunk(513), cfg.prefill_chunk(8000)), (512, 16, 16));
    let st = |left: usize, skips: u32| worker::PrefillState { left, chunk: cfg.prefill_chunk(left), skips };
    let plan = |w: &[worker::PrefillState]| worker::plan_prefill(w, 512);
    assert_eq!(plan(&[st(5000, 0)]), vec![0]);
    assert_eq!(plan(&[st(5000, 0), st(20, 0), st(30, 0)]), vec![1, 2, 0]);
    // Short prompts that fill the step leave the long one for the next.
    assert_eq!(plan(&[st(5000, 0), st(300, 0), st(300, 0)]), vec![1, 2]);
    // ... unless it was passed over too often.
    assert_eq!(plan(&[st(5000, 4), st(300, 0), st(300, 0)]), vec![0, 1, 2]);
    // One always goes, even with a zero budget.
    assert_eq!(worker::plan_prefill(&[st(7, 0), st(9, 0)], 0), vec![0]);
    assert!(plan(&[]).is_empty());
}

/// lm-evaluation-harness scores with `max_tokens: 1, echo, logprobs` and drops the last logprob
/// as the generated token. Regression: when the next token was EOS nothing was generated, so it
/// dropped a prompt token's logprob. EOS now comes back as the generated token (empty text,
/// its logprob listed, counted in usage), as vLLM returns it.
#[tokio::test]
async fn eos_as_the_next_token_is_returned_as_the_generated_token_with_its_logprob() {
    let (_dir, mut m) = tiny();
    ferrotune_model::testing::make_token_dominant(&mut m.model, TINY_EOS).expect("bias");
    let engine = start(m.clone(), "tiny".into(), EngineConfig::default());
    let p = prompt(&m, "the end");
    let (mut req, rx) = request(&p, 1);
    req.prompt_logprobs = true;
    req.logprobs = Some(1);
    engine.submit(req).expect("submit");
    let got = collect(rx).await;
    assert_eq!(got.error, None);
    assert_eq!(got.tokens, vec![TINY_EOS]);
    assert_eq!(got.text, "");
    assert_eq!((got.finish, got.completion_tokens), (Some(FinishReason::Stop), 1));
    assert_eq!(got.logprobs.len(), 1);
    assert_eq!(got.logprobs[0].id, TINY_EOS);
    assert!(got.logprobs[0].logprob > -1e-3 && got.logprobs[0].logprob <= 0.0, "{:?}", got.logprobs[0]);
    assert_eq!(got.prompt_logprobs.map(|l| l.len()), Some(p.len() - 1));

    // Stop strings do not change it.
    let (mut req, rx) = request(&p, 5);
    req.stop = vec!["zz".into()];
    engine.submit(req).expect("submit");
    let got = collect(rx).await;
    assert_eq!((got.tokens, got.finish), (vec![TINY_EOS], Some(FinishReason::Stop)));
    // ignore_eos still generates past it.
    let (mut req, rx) = request(&p, 3);
    req.ignore_eos = true;
    engine.submit(req).expect("submit");
    let got = collect(rx).await;
    assert_eq!((got.tokens, got.finish), (vec![TINY_EOS; 3], Some(FinishReason::Length)));
}

#[tokio::test]
async fn prompts_over_max_prompt_tokens_are_refused_and_max_model_len_caps_the_context() {
    let (_dir, m) = tiny();
    let cfg = EngineConfig { max_model_len: Some(100), max_prompt_tokens: Some(40), ..Default::default() };
    assert_eq!(cfg.limits(512), Ok(SequenceLimits { max_model_len: 100, max_prompt_tokens: 40 }));
    let engine = start(m.clone(), "tiny".into(), cfg);
    assert_eq!((engine.info().context_len, engine.info().max_prompt_tokens), (100, 40));
    let (req, _rx) = request(&[5; 41], 1);
    assert_eq!(engine.submit(req).err(), Some(SubmitError::PromptTooLong { prompt: 41, limit: 40 }));
    let (req, _rx) = request(&[5; 40], 61);
    assert_eq!(
        engine.submit(req).err(),
        Some(SubmitError::TooLarge { prompt: 40, max_tokens: 61, budget: 100 })
    );
    let (mut req, rx) = request(&[5; 40], 60);
    req.ignore_eos = true;
    engine.submit(req).expect("submit");
    assert_eq!(collect(rx).await.completion_tokens, 60);

    // Defaults follow the model; settings past it are refused, naming the key.
    assert_eq!(
        EngineConfig::default().limits(512),
        Ok(SequenceLimits { max_model_len: 512, max_prompt_tokens: 512 })
    );
    for (cfg, key) in [
        (EngineConfig { max_model_len: Some(513), ..Default::default() }, "max_model_len"),
        (
            EngineConfig { max_prompt_tokens: Some(101), max_model_len: Some(100), ..Default::default() },
            "max_prompt_tokens",
        ),
        (EngineConfig { prefill_chunk_tokens: 0, ..Default::default() }, "prefill_chunk_tokens"),
        (EngineConfig { long_prefill_chunk_tokens: 0, ..Default::default() }, "long_prefill_chunk_tokens"),
    ] {
        let e = cfg.limits(512).expect_err("refused");
        assert!(e.contains(key), "{e}");
    }
}

/// Not a test: aggregate generated tokens/s on the real default model for 1, 8 and 32 concurrent
/// greedy requests of 64 tokens, both weight modes. Run with
/// `cargo test --release -p ferrotune-serve --lib engine::tests::throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement on the real model; minutes"]
async fn throughput() {
    let Ok(m0) = ferrotune_model::load("smollm2-135m-instruct", WeightMode::F32, &Device::Cpu) else {
        eprintln!("skipped: smollm2-135m-instruct is not installed (set FERROTUNE_HOME)");
        return;
    };
    let modes: Vec<(&str, LoadedModel)> = vec![
        ("f32", m0),
        (
            "q4_1",
            ferrotune_model::load("smollm2-135m-instruct", WeightMode::Quantized, &Device::Cpu)
                .expect("load"),
        ),
    ];
    let topics = ["the sea", "bread", "a robot", "winter", "trains", "music", "a cat", "gardens"];
    for (mode, m) in modes {
        // Reference: `generate` alone on the first prompt, same process and moment.
        let msg = ferrotune_model::Message::new("user", "Write a short story about the sea number 0.");
        let p = m.tokenizer.encode(&m.render_chat(&[msg], true).expect("template"), false).expect("encode");
        let params = GenerateParams {
            max_tokens: 64,
            sampling: SamplingParams::default(),
            stop: vec![],
            eos_ids: vec![],
        };
        let t0 = Instant::now();
        let g = generate(&m.model, &m.tokenizer, &p, &params, |_| {}).expect("generate");
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "{mode}: generate() alone: {} tokens in {secs:.2}s = {:.1} tokens/s",
            g.tokens.len(),
            g.tokens.len() as f64 / secs
        );
        let engine = start(m.clone(), "smollm2".into(), EngineConfig::default());
        for n in [1usize, 8, 32] {
            let mut rxs = Vec::new();
            let t0 = Instant::now();
            for i in 0..n {
                let msg = ferrotune_model::Message::new(
                    "user",
                    format!("Write a short story about {} number {i}.", topics[i % topics.len()]),
                );
                let text = engine.info().render_chat(&[msg], true).expect("template");
                let p = engine.info().encode(&text, false).expect("encode");
                let (mut req, rx) = request(&p, 64);
                req.ignore_eos = true;
                engine.submit(req).expect("submit");
                rxs.push(rx);
            }
            let outs = futures_join(rxs).await;
            let secs = t0.elapsed().as_secs_f64();
            let tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
            eprintln!(
                "{mode}: {n:>2} concurrent x 64 tokens: {tokens} tokens in {secs:.2}s = {:.1} tokens/s aggregate",
                tokens as f64 / secs
            );
        }
    }
}
