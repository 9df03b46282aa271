//! Dynamic batching: one worker thread per model owns its forward passes. Callers submit single
//! jobs into a bounded queue; the worker takes the first waiting job, collects more for up to a
//! short window (or until the batch is full), runs ONE call on the whole batch and answers every
//! job on its own reply callback.
//!
//! Three parts: this module is the queue and its worker thread; `policy` decides how each pass is
//! formed (pure functions, tested without threads or clocks); `jobs` adapts a served model to the
//! queue (stack the images, one `ServedModel::classify`).
//!
//! The queue is std threads and channels, and replies are plain callbacks, so core stays free of
//! any async runtime: the server wraps a callback around a tokio oneshot, a CLI can block on
//! [`Batcher::submit_wait`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::CoreError;

mod jobs;
mod policy;

pub use jobs::{model_batcher, ModelBatcher, ModelJob};
pub use policy::{next_step, plan_pass, Collect, PassPlan, PassTimes, QueueState, ANNOUNCE_POLL};

/// Why a submitted job got no answer. `Clone`, because one failed forward pass fails every job of
/// its batch (they share the cause).
#[derive(Debug, Clone, Error)]
pub enum BatchError {
    /// The queue is full: shed the call (the server answers 503 with `Retry-After`).
    #[error("the inference queue is full")]
    Overloaded,
    /// The worker is gone (shut down, or it died).
    #[error("the inference worker has stopped")]
    Closed,
    /// The model failed on this job's batch, or on this job alone.
    #[error(transparent)]
    Model(Arc<CoreError>),
}

impl BatchError {
    /// A model failure described by the batcher itself (no lower cause).
    pub fn model(message: impl Into<String>) -> Self {
        BatchError::Model(Arc::new(CoreError::internal(message)))
    }
}

impl From<CoreError> for BatchError {
    fn from(e: CoreError) -> Self {
        BatchError::Model(Arc::new(e))
    }
}

/// Equal kinds; model failures compare by message (their causes are not comparable).
impl PartialEq for BatchError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BatchError::Overloaded, BatchError::Overloaded) => true,
            (BatchError::Closed, BatchError::Closed) => true,
            (BatchError::Model(a), BatchError::Model(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// Sizes of the batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most jobs in one forward pass (1 turns batching off).
    pub max_batch: usize,
    /// How long the worker waits for more jobs after the first one arrives.
    pub window: Duration,
    /// Jobs that may wait in the queue; one more is [`BatchError::Overloaded`].
    pub queue_capacity: usize,
    /// Wait (up to `window`) only while some job is announced ([`Batcher::announce`]) and not
    /// yet queued: a lone call then runs at once instead of paying the window, and a burst waits
    /// for the calls still being decoded for it. Off: always wait the window.
    pub wait_for_announced: bool,
    /// Balance back-to-back passes: when callers were already waiting as the last pass ended
    /// and more are queued than it held, take only the mean of the two sizes (rounded up), so
    /// two alternating groups of callers settle at equal halves (5 + 3 becomes 4 + 4) instead
    /// of keeping a small, less efficient pass forever. Off: take everything queued, up to
    /// `max_batch`.
    pub balance: bool,
    /// Regroup split callers: when callers were already waiting as the last pass ended, fewer
    /// than a full batch of them, and that pass's callers fit next to them, hold the next pass
    /// for the callers just answered to come back — but only where one pass of both groups has
    /// been timed to beat two passes (each pass has a fixed cost), and never longer than what
    /// merging saves ([`PassTimes::regroup_wait`]). Off: the pass takes what is queued.
    pub regroup: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 8,
            window: Duration::from_millis(2),
            queue_capacity: 64,
            wait_for_announced: false,
            balance: false,
            regroup: false,
        }
    }
}

/// Counters of what the worker did, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes run.
    pub batches: usize,
    /// Jobs answered (successfully or not) by those passes.
    pub jobs: usize,
    /// The largest batch so far.
    pub max_batch_seen: usize,
}

/// A counting semaphore shared by several batchers: at most `permits` of their forward passes run
/// at once (each pass already uses every core, so two models at once only fight over them).
pub struct PassGate {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl PassGate {
    pub fn new(permits: usize) -> Self {
        PassGate {
            free: Mutex::new(permits.max(1)),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Run `f` (a forward pass outside any batcher, such as a request's texts through a text
    /// tower) holding one permit.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let _permit = self.acquire();
        f()
    }

    fn acquire(&self) -> PassPermit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        PassPermit(self)
    }
}

/// Gives its permit back when dropped, also when the model panics.
struct PassPermit<'a>(&'a PassGate);

impl Drop for PassPermit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

type Reply<S> = Box<dyn FnOnce(Result<S, BatchError>) + Send>;
/// A queued job, its reply and when it was submitted.
type Queued<R, S> = (R, Reply<S>, Instant);
type Hook = Arc<dyn Fn(&PassReport) + Send + Sync>;

/// One forward pass, as the [`Batcher::on_batch`] hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs in the pass.
    pub size: usize,
    /// Each job's wait from its submit to the pass starting (the window, the pass before it, a
    /// busy [`PassGate`]), in the pass's order.
    pub waits: Vec<Duration>,
    /// The pass itself, from start to the model's answer.
    pub ran: Duration,
}

struct Shared {
    depth: AtomicUsize,
    /// Announced jobs not yet queued.
    incoming: AtomicUsize,
    stats: Mutex<BatchStats>,
    on_batch: Mutex<Option<Hook>>,
}

/// A queue in front of one worker thread running `run` on batches of `R`, answering `S` each.
/// Dropping it closes the queue; the worker answers what is still queued and then exits.
pub struct Batcher<R, S> {
    tx: SyncSender<Queued<R, S>>,
    shared: Arc<Shared>,
    options: BatchOptions,
}

impl<R: Send + 'static, S: Send + 'static> Batcher<R, S> {
    /// Start the worker thread. `run` gets the jobs of one batch and must return one result per
    /// job, in order; an `Err` from it (or a panic) reaches every job of the batch.
    pub fn new<F>(name: &str, options: BatchOptions, run: F) -> std::io::Result<Self>
    where
        F: FnMut(&[R]) -> Result<Vec<Result<S, BatchError>>, BatchError> + Send + 'static,
    {
        Self::gated(name, options, None, run)
    }

    /// As `new`, each forward pass holding a permit of `gate` while it runs.
    pub fn gated<F>(
        name: &str,
        options: BatchOptions,
        gate: Option<Arc<PassGate>>,
        run: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut(&[R]) -> Result<Vec<Result<S, BatchError>>, BatchError> + Send + 'static,
    {
        let options = BatchOptions {
            max_batch: options.max_batch.max(1),
            queue_capacity: options.queue_capacity.max(1),
            ..options
        };
        let (tx, rx) = mpsc::sync_channel::<Queued<R, S>>(options.queue_capacity);
        let shared = Arc::new(Shared {
            depth: AtomicUsize::new(0),
            incoming: AtomicUsize::new(0),
            stats: Mutex::new(BatchStats::default()),
            on_batch: Mutex::new(None),
        });
        let worker_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || worker(rx, worker_shared, options, gate, run))?;
        Ok(Batcher {
            tx,
            shared,
            options,
        })
    }

    /// Queue `job`; `reply` is called exactly once, on the worker thread (or here, with
    /// `Overloaded`/`Closed`, when the job could not be queued).
    pub fn submit(&self, job: R, reply: impl FnOnce(Result<S, BatchError>) + Send + 'static) {
        // Counted before sending so the worker's decrement can never run first and underflow.
        self.shared.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send((job, Box::new(reply), Instant::now())) {
            Ok(()) => {}
            Err(TrySendError::Full((_, reply, _))) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                reply(Err(BatchError::Overloaded));
            }
            Err(TrySendError::Disconnected((_, reply, _))) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                reply(Err(BatchError::Closed));
            }
        }
    }

    /// Say a job is on its way (its image is being decoded). Drop the guard once the job is
    /// submitted (or abandoned); see [`BatchOptions::wait_for_announced`].
    pub fn announce(&self) -> Incoming {
        self.shared.incoming.fetch_add(1, Ordering::SeqCst);
        Incoming {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Queue `job` and block this thread until it is answered.
    pub fn submit_wait(&self, job: R) -> Result<S, BatchError> {
        let (tx, rx) = mpsc::channel();
        self.submit(job, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(BatchError::Closed))
    }

    /// Jobs queued and not yet taken into a batch.
    pub fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> BatchStats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> BatchOptions {
        self.options
    }

    /// Called on the worker thread after every forward pass, before its jobs are answered (for
    /// metrics).
    pub fn on_batch(&self, hook: impl Fn(&PassReport) + Send + Sync + 'static) {
        *self
            .shared
            .on_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }
}

/// An announced job: counted as on its way to the batcher until dropped.
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.shared.incoming.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker<R, S, F>(
    rx: mpsc::Receiver<Queued<R, S>>,
    shared: Arc<Shared>,
    options: BatchOptions,
    gate: Option<Arc<PassGate>>,
    mut run: F,
) where
    F: FnMut(&[R]) -> Result<Vec<Result<S, BatchError>>, BatchError>,
{
    // The size of the last pass, when callers were already queued as it ended.
    let mut back_to_back: Option<usize> = None;
    let mut times = PassTimes::new(options.max_batch);
    // `recv` fails only once every sender is dropped and the queue is empty.
    while let Ok(first) = rx.recv() {
        let plan = plan_pass(
            &options,
            &mut times,
            QueueState {
                // Queued now, `first` included (the depth drops once the batch is taken).
                queued: shared.depth.load(Ordering::SeqCst),
                back_to_back,
            },
        );
        let mut batch = vec![first];
        let deadline = Instant::now() + plan.wait;
        loop {
            if batch.len() < plan.limit {
                if let Ok(job) = rx.try_recv() {
                    batch.push(job);
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let announced = shared.incoming.load(Ordering::SeqCst);
            match next_step(&plan, batch.len(), announced, left) {
                Collect::Run => break,
                Collect::Wait(slice) => match rx.recv_timeout(slice) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            }
        }
        shared.depth.fetch_sub(batch.len(), Ordering::SeqCst);
        let n = batch.len();
        {
            let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.batches += 1;
            s.jobs += n;
            s.max_batch_seen = s.max_batch_seen.max(n);
        }
        let mut jobs = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(n);
        let mut submitted = Vec::with_capacity(n);
        for (job, reply, at) in batch {
            jobs.push(job);
            replies.push(reply);
            submitted.push(at);
        }
        let permit = gate.as_deref().map(PassGate::acquire);
        let started = Instant::now();
        // A panicking model must not take the worker (and every later caller) down with it.
        let outcome = match catch_unwind(AssertUnwindSafe(|| run(&jobs))) {
            Ok(Ok(results)) if results.len() == n => Ok(results),
            Ok(Ok(results)) => Err(BatchError::model(format!(
                "the model answered {} of {n} jobs",
                results.len()
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BatchError::model("the model panicked")),
        };
        drop(permit);
        let ran = started.elapsed();
        if outcome.is_ok() {
            times.record(n, ran);
        }
        let hook = shared
            .on_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h(&PassReport {
                size: n,
                waits: submitted
                    .iter()
                    .map(|at| started.saturating_duration_since(*at))
                    .collect(),
                ran,
            });
        }
        match outcome {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    reply(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    reply(Err(e.clone()));
                }
            }
        }
        back_to_back = (shared.depth.load(Ordering::SeqCst) > 0).then_some(n);
    }
}
