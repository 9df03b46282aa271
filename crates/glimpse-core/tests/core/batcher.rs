//! The batcher with fake models: fewer forward passes than calls, answers equal to single calls,
//! the batch cap, shedding when the queue is full, and errors reaching every waiting caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glimpse_core::backend::{PixelBatch, ZeroShotModel};
use glimpse_core::batcher::{model_batcher, BatchError, BatchOptions, Batcher, ModelJob, PassGate};
use glimpse_core::model::{Answer, Ask, ServedModel};
use glimpse_core::preprocess::PreprocessConfig;
use glimpse_core::Result;

const WAIT: Duration = Duration::from_secs(10);

fn opts(max_batch: usize, window_ms: u64, queue: usize) -> BatchOptions {
    BatchOptions {
        max_batch,
        window: Duration::from_millis(window_ms),
        queue_capacity: queue,
        wait_for_announced: false,
        balance: false,
        regroup: false,
    }
}

/// Submit every job from its own thread at once; answers in job order.
fn submit_all<R: Send + Clone + 'static, S: Send + 'static>(
    b: &Arc<Batcher<R, S>>,
    jobs: &[R],
) -> Vec<std::result::Result<S, BatchError>> {
    let (tx, rx) = mpsc::channel();
    for (i, j) in jobs.iter().enumerate() {
        let tx = tx.clone();
        b.submit(j.clone(), move |r| {
            let _ = tx.send((i, r));
        });
    }
    let mut out: Vec<_> = (0..jobs.len())
        .map(|_| rx.recv_timeout(WAIT).expect("an answer, not a hang"))
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn concurrent_jobs_share_forward_passes_and_keep_their_answers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let b = Arc::new(
        Batcher::new("square", opts(16, 200, 64), move |xs: &[i64]| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(xs.iter().map(|x| Ok(x * x + 1)).collect())
        })
        .unwrap(),
    );
    let jobs: Vec<i64> = (0..10).collect();
    let answers = submit_all(&b, &jobs);
    for (x, a) in jobs.iter().zip(&answers) {
        assert_eq!(a.as_ref().unwrap(), &(x * x + 1));
    }
    let n = calls.load(Ordering::SeqCst);
    assert!(n < jobs.len(), "{n} forward passes for {} jobs", jobs.len());
    let s = b.stats();
    assert_eq!(s.jobs, 10);
    assert_eq!(s.batches, n);
    assert!(s.max_batch_seen > 1, "{s:?}");
    assert_eq!(b.queue_depth(), 0);
}

/// Pass sizes when 5 jobs queue up behind a running pass of 1: all 5 at once, or, balanced,
/// the mean of 5 and 1 (3) and then the other 2.
fn pass_sizes_behind_a_pass_of_one(balance: bool) -> Vec<usize> {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
    let s = Arc::clone(&sizes);
    let options = BatchOptions {
        balance,
        ..opts(8, 0, 64)
    };
    let b = Arc::new(
        Batcher::new("balance", options, move |xs: &[i64]| {
            s.lock().unwrap().push(xs.len());
            if xs == [0] {
                started_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            }
            Ok(xs.iter().map(|x| Ok(x + 1)).collect())
        })
        .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let t = tx.clone();
    b.submit(0, move |r| t.send(r).unwrap());
    started_rx.recv_timeout(WAIT).unwrap();
    for x in 1..=5 {
        let t = tx.clone();
        b.submit(x, move |r| t.send(r).unwrap());
    }
    release_tx.send(()).unwrap();
    let mut answers: Vec<i64> = (0..6)
        .map(|_| rx.recv_timeout(WAIT).unwrap().unwrap())
        .collect();
    answers.sort();
    assert_eq!(answers, vec![1, 2, 3, 4, 5, 6]);
    let sizes = sizes.lock().unwrap().clone();
    sizes
}

#[test]
fn balanced_passes_split_a_queue_behind_a_smaller_pass() {
    assert_eq!(pass_sizes_behind_a_pass_of_one(false), vec![1, 5]);
    assert_eq!(pass_sizes_behind_a_pass_of_one(true), vec![1, 3, 2]);
}

/// Pass sizes of 8 closed-loop callers (announce, "decode" 2 ms, submit, wait for the answer,
/// read it for 5 ms, again) on a model whose pass costs 40 ms + 5 ms per job, the second four
/// starting while the first four's pass runs: the last `tail` passes once they have settled.
fn closed_loop_pass_sizes(regroup: bool, tail: usize) -> Vec<usize> {
    let options = BatchOptions {
        wait_for_announced: true,
        balance: true,
        regroup,
        ..opts(8, 20, 64)
    };
    let b = Arc::new(
        Batcher::new("loop", options, |xs: &[u32]| {
            std::thread::sleep(Duration::from_millis(40 + 5 * xs.len() as u64));
            Ok(xs.iter().map(|x| Ok(*x)).collect())
        })
        .unwrap(),
    );
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&sizes);
    b.on_batch(move |r| s.lock().unwrap().push(r.size));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = |id: u32| {
        let (b, stop) = (Arc::clone(&b), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let incoming = b.announce();
                std::thread::sleep(Duration::from_millis(2));
                let (tx, rx) = mpsc::channel();
                b.submit(id, move |r| {
                    let _ = tx.send(r);
                });
                drop(incoming);
                assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), id);
                // Long enough that a caller never beats the worker's check of who is on the
                // way (which would merge the halves without regrouping, on a busy machine).
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut clients: Vec<_> = (0..4).map(client).collect();
    // The first four are in their pass (60 ms) by now.
    std::thread::sleep(Duration::from_millis(20));
    clients.extend((4..8).map(client));
    let deadline = std::time::Instant::now() + WAIT;
    while sizes.lock().unwrap().len() < 20 + tail && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.len() >= 20 + tail, "{sizes:?}");
    sizes[20..20 + tail].to_vec()
}

/// Eight closed-loop callers split into two groups of four taking turns; where one pass of eight
/// is faster than two of four (a fixed cost per pass), regrouping merges them, and they stay
/// merged.
#[test]
fn regrouping_merges_alternating_halves_when_one_pass_is_cheaper() {
    let split = closed_loop_pass_sizes(false, 10);
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
    assert!(mean(&split) <= 5.0, "balanced halves expected: {split:?}");
    let merged = closed_loop_pass_sizes(true, 10);
    assert!(mean(&merged) >= 7.0, "merged passes expected: {merged:?}");
}

/// With `wait_for_announced`, a lone job does not sit out the window; a job announced while the
/// first is queued is waited for and shares its pass.
#[test]
fn the_window_waits_only_for_announced_jobs() {
    let long = BatchOptions {
        wait_for_announced: true,
        ..opts(8, 20_000, 64)
    };
    let b = Arc::new(
        Batcher::new("announced", long, |xs: &[i64]| {
            Ok(xs.iter().map(|x| Ok(x + 1)).collect())
        })
        .unwrap(),
    );
    // Nothing announced: answered long before the 20 s window would end.
    let (tx, rx) = mpsc::channel();
    b.submit(1, move |r| {
        let _ = tx.send(r);
    });
    assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), 2);
    assert_eq!(b.stats().batches, 1);

    // One job queued while a second is announced: the worker holds the first for the second.
    let incoming = b.announce();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    b.submit(10, move |r| {
        let _ = tx.send(r);
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "the first job ran without waiting");
    b.submit(20, move |r| {
        let _ = tx2.send(r);
    });
    drop(incoming);
    let mut got = vec![
        rx.recv_timeout(WAIT).unwrap().unwrap(),
        rx.recv_timeout(WAIT).unwrap().unwrap(),
    ];
    got.sort();
    assert_eq!(got, vec![11, 21]);
    let s = b.stats();
    assert_eq!((s.batches, s.jobs, s.max_batch_seen), (2, 3, 2), "{s:?}");

    // An announced job that never comes (its decode failed) stops the wait when dropped.
    let incoming = b.announce();
    let (tx, rx) = mpsc::channel();
    b.submit(5, move |r| {
        let _ = tx.send(r);
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(incoming);
    assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), 6);
}

#[test]
fn batches_never_exceed_the_cap() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::new(
        Batcher::new("cap", opts(3, 100, 64), |xs: &[u32]| {
            Ok(xs.iter().map(|x| Ok(*x)).collect())
        })
        .unwrap(),
    );
    let s = Arc::clone(&sizes);
    b.on_batch(move |r| s.lock().unwrap().push(r.size));
    let answers = submit_all(&b, &(0..10).collect::<Vec<u32>>());
    assert!(answers.iter().all(|a| a.is_ok()));
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 10, "{sizes:?}");
    assert!(sizes.iter().all(|n| (1..=3).contains(n)), "{sizes:?}");
    assert!(
        sizes.contains(&3),
        "the window should have filled a batch: {sizes:?}"
    );
}

#[test]
fn a_full_queue_sheds_with_overloaded() {
    // The model blocks until the test opens the gate, so queued jobs stay queued.
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Mutex::new(gate_rx);
    let b = Arc::new(
        Batcher::new("gate", opts(1, 0, 2), move |xs: &[u8]| {
            let _ = started_tx.send(());
            let _ = gate_rx.lock().unwrap().recv_timeout(WAIT);
            Ok(xs.iter().map(|x| Ok(*x)).collect())
        })
        .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let send = |x: u8| {
        let tx = tx.clone();
        b.submit(x, move |r| {
            let _ = tx.send((x, r));
        })
    };
    send(0);
    started_rx.recv_timeout(WAIT).unwrap(); // job 0 is running, the queue is empty
    send(1);
    send(2);
    assert_eq!(b.queue_depth(), 2);
    send(3); // over capacity: answered at once
    let (x, r) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((x, r), (3, Err(BatchError::Overloaded)));
    assert_eq!(b.queue_depth(), 2);
    for _ in 0..3 {
        gate_tx.send(()).unwrap();
    }
    let mut done: Vec<(u8, _)> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    done.sort_by_key(|(x, _)| *x);
    assert_eq!(done, vec![(0, Ok(0)), (1, Ok(1)), (2, Ok(2))]);
}

#[test]
fn a_model_error_or_panic_reaches_every_waiting_job() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let b = Arc::new(
        Batcher::new("fail", opts(8, 100, 64), move |xs: &[i32]| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(BatchError::model("boom"));
            }
            if xs.contains(&-1) {
                panic!("the model panicked on purpose");
            }
            Ok(xs.iter().map(|x| Ok(*x)).collect())
        })
        .unwrap(),
    );
    let answers = submit_all(&b, &[1, 2, 3, 4]);
    assert!(
        answers.iter().all(|a| *a == Err(BatchError::model("boom"))),
        "{answers:?}"
    );
    let answers = submit_all(&b, &[5, -1, 6]);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(BatchError::Model(_)))),
        "{answers:?}"
    );
    // The worker survived both.
    assert_eq!(b.submit_wait(7), Ok(7));
}

#[test]
fn dropping_the_batcher_still_answers_queued_jobs() {
    let b = Batcher::new("drop", opts(2, 50, 64), |xs: &[u8]| {
        std::thread::sleep(Duration::from_millis(20));
        Ok(xs.iter().map(|x| Ok(*x)).collect())
    })
    .unwrap();
    let (tx, rx) = mpsc::channel();
    for x in 0..5u8 {
        let tx = tx.clone();
        b.submit(x, move |r| {
            let _ = tx.send(r);
        });
    }
    drop(b);
    let got: Vec<_> = (0..5).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
}

#[test]
fn a_shared_gate_keeps_passes_of_two_batchers_apart() {
    let gate = Arc::new(PassGate::new(1));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let make = |name: &str| {
        let (running, most) = (Arc::clone(&running), Arc::clone(&most));
        Arc::new(
            Batcher::gated(
                name,
                opts(1, 0, 64),
                Some(Arc::clone(&gate)),
                move |xs: &[u8]| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(xs.iter().map(|x| Ok(*x)).collect())
                },
            )
            .unwrap(),
        )
    };
    let (a, b) = (make("a"), make("b"));
    let jobs: Vec<u8> = (0..6).collect();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| submit_all(&a, &jobs));
        let tb = s.spawn(|| submit_all(&b, &jobs));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(ra.iter().chain(&rb).all(|r| r.is_ok()));
    assert_eq!(most.load(Ordering::SeqCst), 1, "two passes ran at once");
}

/// A CLIP stand-in: the image embedding is the normalised mean of each channel, so different
/// images score differently; text embeddings depend on the prompt; encoder calls are counted.
struct FakeClip {
    cfg: PreprocessConfig,
    image_calls: AtomicUsize,
    text_calls: AtomicUsize,
}

impl FakeClip {
    fn new() -> Self {
        FakeClip {
            cfg: PreprocessConfig::plain(2),
            image_calls: AtomicUsize::new(0),
            text_calls: AtomicUsize::new(0),
        }
    }
}

fn normalise(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / n).collect()
}

impl ZeroShotModel for FakeClip {
    fn preprocess_config(&self) -> &PreprocessConfig {
        &self.cfg
    }
    fn embed_images(&self, px: &PixelBatch) -> Result<Vec<Vec<f32>>> {
        self.image_calls.fetch_add(1, Ordering::SeqCst);
        let plane = px.height * px.width;
        Ok(px
            .data
            .chunks(3 * plane)
            .map(|im| normalise(im.chunks(plane).map(|c| c.iter().sum::<f32>()).collect()))
            .collect())
    }
    fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.text_calls.fetch_add(1, Ordering::SeqCst);
        Ok(texts
            .iter()
            .map(|t| {
                let b = t.as_bytes();
                normalise(vec![b.len() as f32, b[0] as f32, b[b.len() - 1] as f32])
            })
            .collect())
    }
    fn logit_scale(&self) -> f32 {
        100.0
    }
}

#[test]
fn clip_batch_answers_equal_single_calls_and_reuse_label_embeddings() {
    let model = Arc::new(FakeClip::new());
    let templates = vec!["a photo of a {label}.".to_string()];
    let label_sets: Vec<Vec<String>> = vec![
        vec!["cat".into(), "dog".into()],
        vec!["car".into(), "person".into(), "tree".into()],
    ];
    let jobs: Vec<ModelJob> = (0..8)
        .map(|i| ModelJob::classify(fake_image(i), label_sets[i % 2].clone()))
        .collect();
    // The answers the unbatched pipeline gives, one call per image.
    let single = ServedModel::zero_shot("m", model.clone());
    let singles: Vec<_> = jobs
        .iter()
        .map(|j| {
            let px = PixelBatch::stack(std::slice::from_ref(&j.pixels), 2, 2);
            let Ask::Classify(labels) = &j.ask else {
                unreachable!()
            };
            single
                .classify_all(&px, labels, &templates)
                .unwrap()
                .remove(0)
        })
        .collect();
    model.image_calls.store(0, Ordering::SeqCst);
    model.text_calls.store(0, Ordering::SeqCst);

    let b = Arc::new(
        model_batcher(
            Arc::new(ServedModel::zero_shot("m", model.clone())),
            Arc::new(templates.clone()),
            opts(8, 200, 64),
            None,
        )
        .unwrap(),
    );
    let batched = submit_all(&b, &jobs);
    for (s, r) in singles.iter().zip(batched) {
        let r = Answer::classified(r).unwrap();
        assert_eq!(r.result, s.result);
        assert_eq!(r.predictions.len(), s.predictions.len());
        for (a, e) in r.predictions.iter().zip(&s.predictions) {
            assert_eq!(a.label, e.label);
            assert!(
                (a.score - e.score).abs() <= 1e-6,
                "{} vs {}",
                a.score,
                e.score
            );
        }
    }
    let image_calls = model.image_calls.load(Ordering::SeqCst);
    assert!(image_calls < jobs.len(), "{image_calls} image passes");
    // Two label sets: at most one text-encoder call each, and none on a repeat.
    let text_calls = model.text_calls.load(Ordering::SeqCst);
    assert!(text_calls <= 2, "{text_calls} text passes");
    b.submit_wait(jobs[0].clone()).unwrap();
    assert_eq!(model.text_calls.load(Ordering::SeqCst), text_calls);
}

#[test]
fn pass_reports_carry_queue_waits_and_pass_time() {
    // One job per pass, each pass sleeping: the second job waits out the first pass.
    let pass = Duration::from_millis(40);
    let b = Arc::new(
        Batcher::new("report", opts(1, 0, 8), move |xs: &[u32]| {
            std::thread::sleep(pass);
            Ok(xs.iter().map(|x| Ok(*x)).collect())
        })
        .unwrap(),
    );
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&reports);
    b.on_batch(move |p| r.lock().unwrap().push(p.clone()));
    let answers = submit_all(&b, &[1, 2]);
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for p in &reports {
        assert_eq!((p.size, p.waits.len()), (1, 1), "{p:?}");
        assert!(p.ran >= pass, "the pass slept {pass:?}: {p:?}");
    }
    // Both were submitted before the first pass ended; the second started after it.
    assert!(
        reports[1].waits[0] >= pass / 2,
        "the second job waited behind a {pass:?} pass: {reports:?}"
    );
}

fn fake_image(i: usize) -> PixelBatch {
    let px = (0..12)
        .map(|k| ((i * 7 + k * 3) % 11) as f32 / 10.0)
        .collect();
    PixelBatch::single(px, 2, 2)
}

#[test]
fn embeddings_and_classifications_share_one_pass() {
    let model = Arc::new(FakeClip::new());
    let templates = Arc::new(vec!["a photo of a {label}.".to_string()]);
    let served = Arc::new(ServedModel::zero_shot("m", model.clone()));
    let expected: Vec<Vec<f32>> = (0..6)
        .map(|i| served.embed_images(&fake_image(i)).unwrap().remove(0))
        .collect();
    model.image_calls.store(0, Ordering::SeqCst);
    let b = Arc::new(model_batcher(served, templates, opts(8, 300, 64), None).unwrap());
    // Even jobs ask for embeddings, odd ones for scores: all six ride one pass.
    let jobs: Vec<ModelJob> = (0..6)
        .map(|i| match i % 2 {
            0 => ModelJob::embed(fake_image(i)),
            _ => ModelJob::classify(fake_image(i), vec!["cat".into(), "dog".into()]),
        })
        .collect();
    let answers = submit_all(&b, &jobs);
    for (i, a) in answers.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(Answer::embedding(a).unwrap(), expected[i], "job {i}");
        } else {
            assert_eq!(Answer::classified(a).unwrap().predictions.len(), 2);
        }
    }
    let passes = model.image_calls.load(Ordering::SeqCst);
    assert!(passes < 6, "{passes} image passes for 6 jobs");
}
