//! How the worker forms a batch, as pure functions of the queue's state and of past pass times:
//! no threads, no clocks (the worker passes `now`-derived durations in), so every rule is
//! unit-tested with plain numbers below.

use std::time::Duration;

use super::BatchOptions;

/// What the worker knows as a pass is about to be formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Jobs queued now, the one the worker just took included.
    pub queued: usize,
    /// The size of the last pass, when callers were already queued as it ended (back-to-back
    /// passes); `None` after an idle queue.
    pub back_to_back: Option<usize>,
}

/// How to collect the next pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassPlan {
    /// Most jobs to take.
    pub limit: usize,
    /// Longest wait for more jobs after the first.
    pub wait: Duration,
    /// Wait only while some job is announced and not yet queued.
    pub only_while_announced: bool,
}

/// The plan for the next pass.
///
/// - Regroup: when back-to-back passes split callers into two groups and one pass of both has
///   been timed faster than two ([`PassTimes::regroup_wait`]), wait for the last pass's callers
///   to come back (even before they announce themselves: they are still reading their answer).
/// - Balance: else, when more are queued than the last pass held, take the mean of the two, so
///   alternating groups settle at equal halves (5 + 3 becomes 4 + 4).
/// - Else take up to `max_batch`, waiting up to `window` (only for announced jobs if
///   `wait_for_announced`).
pub fn plan_pass(options: &BatchOptions, times: &mut PassTimes, state: QueueState) -> PassPlan {
    let regroup = match state.back_to_back {
        Some(last) if options.regroup => times.regroup_wait(state.queued, last, options.window),
        _ => None,
    };
    let (limit, wait, only_while_announced) = match (state.back_to_back, regroup) {
        (Some(last), Some(wait)) => (state.queued + last, wait, false),
        (Some(last), None) if options.balance && state.queued > last => (
            (state.queued + last).div_ceil(2),
            options.window,
            options.wait_for_announced,
        ),
        _ => (
            options.max_batch,
            options.window,
            options.wait_for_announced,
        ),
    };
    PassPlan {
        limit: limit.min(options.max_batch).max(1),
        wait,
        only_while_announced,
    }
}

/// The next step while collecting a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// Run the pass with what was collected.
    Run,
    /// Wait up to this long for another job, then ask again.
    Wait(Duration),
}

/// How often a worker waiting for announced jobs re-checks that some are still on their way.
pub const ANNOUNCE_POLL: Duration = Duration::from_micros(500);

/// While collecting `plan`'s pass (`collected` jobs so far, none more queued right now, `announced`
/// jobs on their way, `left` of the plan's wait remaining): run now, or wait for another job.
pub fn next_step(plan: &PassPlan, collected: usize, announced: usize, left: Duration) -> Collect {
    if collected >= plan.limit || left.is_zero() || (plan.only_while_announced && announced == 0) {
        return Collect::Run;
    }
    Collect::Wait(if plan.only_while_announced {
        left.min(ANNOUNCE_POLL)
    } else {
        left
    })
}

/// Recent forward-pass times by batch size (an exponential average of each size's passes), to tell
/// whether one pass of two groups of callers beats a pass for each.
#[derive(Debug, Clone)]
pub struct PassTimes {
    /// Seconds, indexed by batch size.
    by_size: Vec<Option<f64>>,
    /// The pass count when a regroup into each size was last tried without its time known.
    tried: Vec<Option<u64>>,
    passes: u64,
}

impl PassTimes {
    /// Weight of the newest pass in a size's average.
    const NEW: f64 = 0.25;
    /// Passes between two tries of a regroup into a size never timed (the try may idle up to the
    /// window if the callers do not come back).
    pub const RETRY_AFTER: u64 = 64;

    pub fn new(max_batch: usize) -> Self {
        PassTimes {
            by_size: vec![None; max_batch + 1],
            tried: vec![None; max_batch + 1],
            passes: 0,
        }
    }

    /// A pass of `size` jobs took `ran`.
    pub fn record(&mut self, size: usize, ran: Duration) {
        self.passes += 1;
        if let Some(t) = self.by_size.get_mut(size) {
            let s = ran.as_secs_f64();
            *t = Some(t.map_or(s, |old| old + Self::NEW * (s - old)));
        }
    }

    /// How long to hold the next pass for the `last` callers of the pass that just ended to come
    /// back next to the `queued` ones, or `None` to run the queued ones now.
    ///
    /// Merging saves `t(queued) + t(last) − t(queued + last)` (a pass's fixed cost: weights read,
    /// per-pass set-up, threads woken), and the wait is capped at that, so it can lose at most
    /// what it would have won. A merged size never timed is tried (up to `window`) once every
    /// [`Self::RETRY_AFTER`] passes. No wait when the two groups do not fit in one pass, or when
    /// one pass of both is timed no faster than two (a CPU whose small passes are as efficient).
    pub fn regroup_wait(
        &mut self,
        queued: usize,
        last: usize,
        window: Duration,
    ) -> Option<Duration> {
        let merged = queued + last;
        if queued == 0 || last == 0 || merged >= self.by_size.len() {
            return None;
        }
        let (a, b) = (self.by_size[queued], self.by_size[last]);
        match (a, b, self.by_size[merged]) {
            (Some(a), Some(b), Some(m)) => {
                let saved = a + b - m;
                (saved > 0.0).then(|| Duration::from_secs_f64(saved))
            }
            _ => {
                let recent =
                    self.tried[merged].is_some_and(|at| self.passes < at + Self::RETRY_AFTER);
                if recent || window.is_zero() {
                    return None;
                }
                self.tried[merged] = Some(self.passes);
                Some(window)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn options(balance: bool, regroup: bool) -> BatchOptions {
        BatchOptions {
            max_batch: 8,
            window: ms(10),
            queue_capacity: 64,
            wait_for_announced: true,
            balance,
            regroup,
        }
    }

    #[test]
    fn an_idle_queue_takes_up_to_max_batch_waiting_for_announced_jobs() {
        let mut t = PassTimes::new(8);
        let p = plan_pass(
            &options(true, true),
            &mut t,
            QueueState {
                queued: 3,
                back_to_back: None,
            },
        );
        assert_eq!(
            p,
            PassPlan {
                limit: 8,
                wait: ms(10),
                only_while_announced: true
            }
        );
    }

    #[test]
    fn back_to_back_passes_are_balanced_into_equal_halves() {
        let mut t = PassTimes::new(8);
        let state = QueueState {
            queued: 5,
            back_to_back: Some(3),
        };
        assert_eq!(plan_pass(&options(true, false), &mut t, state).limit, 4);
        // Off: everything queued.
        assert_eq!(plan_pass(&options(false, false), &mut t, state).limit, 8);
        // Fewer queued than the last pass held: nothing to balance.
        let fewer = QueueState {
            queued: 2,
            back_to_back: Some(3),
        };
        assert_eq!(plan_pass(&options(true, false), &mut t, fewer).limit, 8);
    }

    #[test]
    fn a_regroup_waits_for_the_last_pass_callers_only_where_one_pass_is_cheaper() {
        let state = QueueState {
            queued: 4,
            back_to_back: Some(4),
        };
        let mut cheap = PassTimes::new(8);
        cheap.record(4, ms(60));
        cheap.record(8, ms(80));
        let p = plan_pass(&options(true, true), &mut cheap, state);
        assert_eq!(p.limit, 8);
        assert!(
            !p.only_while_announced,
            "the callers are still reading answers"
        );
        assert!((p.wait.as_secs_f64() - 0.040).abs() < 1e-9, "{:?}", p.wait);
        // A pass of 8 as dear as two of 4: balance instead (4 queued, last 4: take all 4 now).
        let mut flat = PassTimes::new(8);
        flat.record(4, ms(60));
        flat.record(8, ms(120));
        let p = plan_pass(&options(true, true), &mut flat, state);
        assert_eq!((p.limit, p.wait), (8, ms(10)));
        assert!(p.only_while_announced);
    }

    #[test]
    fn collecting_stops_at_the_limit_the_deadline_or_when_nobody_is_announced() {
        let plan = PassPlan {
            limit: 4,
            wait: ms(10),
            only_while_announced: true,
        };
        assert_eq!(next_step(&plan, 4, 3, ms(5)), Collect::Run);
        assert_eq!(next_step(&plan, 2, 3, Duration::ZERO), Collect::Run);
        assert_eq!(next_step(&plan, 2, 0, ms(5)), Collect::Run);
        assert_eq!(next_step(&plan, 2, 1, ms(5)), Collect::Wait(ANNOUNCE_POLL));
        let always = PassPlan {
            only_while_announced: false,
            ..plan
        };
        assert_eq!(next_step(&always, 2, 0, ms(5)), Collect::Wait(ms(5)));
    }

    #[test]
    fn regroup_waits_at_most_what_one_pass_saves_and_tries_untimed_sizes_sparingly() {
        let mut t = PassTimes::new(8);
        let window = ms(10);
        t.record(4, ms(60));
        // A pass of 8 never timed: tried once, up to the window, then not again for a while.
        assert_eq!(t.regroup_wait(4, 4, window), Some(window));
        assert_eq!(t.regroup_wait(4, 4, window), None);
        for _ in 0..PassTimes::RETRY_AFTER {
            t.record(4, ms(60));
        }
        assert_eq!(t.regroup_wait(4, 4, window), Some(window));
        // Timed: the wait is what one pass of 8 saves over two of 4 (60 + 60 − 80 ms).
        t.record(8, ms(80));
        let w = t.regroup_wait(4, 4, window).unwrap();
        assert!((w.as_secs_f64() - 0.040).abs() < 1e-9, "{w:?}");
        // No fixed cost (a pass of 8 takes as long as two of 4): no wait.
        let mut flat = PassTimes::new(8);
        flat.record(4, ms(60));
        flat.record(8, ms(120));
        assert_eq!(flat.regroup_wait(4, 4, window), None);
        // The two groups do not fit in one pass, or nothing to regroup.
        assert_eq!(t.regroup_wait(5, 4, window), None);
        assert_eq!(t.regroup_wait(0, 4, window), None);
        // The average follows newer passes.
        t.record(8, ms(120));
        let w2 = t.regroup_wait(4, 4, window).unwrap();
        assert!(w2 < w, "{w2:?} after a slower pass of 8, {w:?} before");
    }
}
