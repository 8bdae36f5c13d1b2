//! Measuring one path: an unmeasured warm-up round, then measured rounds of the whole
//! workload until the minimum measured time has passed, with a progress line.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    Collector, Workload,
    report::{PathResult, Totals},
};
use crate::failure::Failure;

/// Events of the unmeasured warm-up round of each path (fewer if `--events` is smaller).
pub(crate) const WARMUP_EVENTS: u64 = 1000;

/// Runs one path: a warm-up round of at most [`WARMUP_EVENTS`] events, then measured
/// rounds of the workload until its `min_time` is reached (or a round loses events),
/// with a progress line, and sums the rounds into a [`PathResult`]. Each call of `path`
/// sets up its subscribers, publishes a whole round, waits on the collector and returns
/// the elapsed time from the first publish (or an error).
pub(crate) async fn measure<F, Fut>(
    label: &str,
    w: &Workload,
    hidden: bool,
    mut path: F,
) -> Result<PathResult, Failure>
where
    F: FnMut(Workload, Arc<Collector>) -> Fut,
    Fut: std::future::Future<Output = Result<(Duration, String), Failure>>,
{
    let warmup = Workload {
        events: w.events.min(WARMUP_EVENTS),
        ..w.clone()
    };
    let collector = Arc::new(Collector::new(warmup.subscribers, warmup.events));
    path(warmup, collector).await?;
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(label, hidden);
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.delivered());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let outcome = measured_rounds(w, &progress, &mut path).await;
    ticker.abort();
    bar.finish_and_clear();
    let (totals, transport) = outcome?;
    Ok(PathResult::new(transport, w, totals))
}

async fn measured_rounds<F, Fut>(
    w: &Workload,
    progress: &Progress,
    path: &mut F,
) -> Result<(Totals, String), Failure>
where
    F: FnMut(Workload, Arc<Collector>) -> Fut,
    Fut: std::future::Future<Output = Result<(Duration, String), Failure>>,
{
    let mut totals = Totals::default();
    loop {
        let collector = Arc::new(Collector::new(w.subscribers, w.events));
        progress.start_round(&collector);
        let (elapsed, transport) = path(w.clone(), collector.clone()).await?;
        totals.add(&collector, elapsed);
        let lossy = collector.delivered() < collector.expected();
        if lossy || totals.elapsed >= w.min_time {
            return Ok((totals, transport));
        }
    }
}

/// Deliveries of the finished rounds and the collector of the current one, for the
/// progress line.
#[derive(Default)]
struct Progress {
    finished: AtomicU64,
    current: Mutex<Option<Arc<Collector>>>,
}

impl Progress {
    fn start_round(&self, collector: &Arc<Collector>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = current.replace(collector.clone()) {
            self.finished.fetch_add(done.delivered(), Ordering::Relaxed);
        }
    }

    fn delivered(&self) -> u64 {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        self.finished.load(Ordering::Relaxed) + current.as_ref().map_or(0, |c| c.delivered())
    }
}

fn progress_bar(label: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>4} {spinner} {pos} deliveries {per_sec}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_owned());
    bar
}
