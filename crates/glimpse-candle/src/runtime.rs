//! Where forward passes run: rayon's global pool, or a pool of the model's own when
//! `LoadOptions::threads` is set. candle's matmuls (gemm) split work on the current rayon pool, so
//! `install` bounds them without touching the process-wide setting, which may be set only once.

use std::sync::Arc;

use crate::Error;

#[derive(Clone, Default)]
pub(crate) struct Runtime {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pool {
            Some(p) => write!(f, "Runtime({} threads)", p.current_num_threads()),
            None => write!(f, "Runtime(global pool)"),
        }
    }
}

impl Runtime {
    pub(crate) fn new(threads: Option<usize>) -> Result<Self, Error> {
        let pool = match threads {
            None => None,
            Some(0) => return Err(Error::Model("threads must be at least 1".into())),
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("glimpse-model-{i}"))
                    .build()
                    .map_err(|source| Error::Threads {
                        context: format!("cannot start {n} threads"),
                        source,
                    })?,
            )),
        };
        Ok(Runtime { pool })
    }

    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(p) => p.install(f),
            // The global pool's `install`: from a thread outside the pool, every parallel loop of
            // the pass would be a cross-thread hand-off and wait of its own (a few hundred per
            // pass); run inside a worker, they are cheap joins. Inside a worker this runs inline.
            None => rayon::join(f, || ()).0,
        }
    }
}
