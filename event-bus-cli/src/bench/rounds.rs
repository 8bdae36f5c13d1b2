//! Measuring the paths of a run: each gets an unmeasured warm-up round, then the paths
//! take turns running measured rounds of the whole workload until each has its minimum
//! measured time; a progress line counts the deliveries.

use std::{
    future::Future,
    pin::Pin,
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

/// One round of a path: sets up its subscribers, publishes the workload, waits on the
/// collector and returns the elapsed time from the first publish, and the transport's
/// name.
pub(crate) type Round = Pin<Box<dyn Future<Output = Result<(Duration, String), Failure>>>>;

/// A path (the bus, or a raw transport): runs a round of a workload into a collector.
pub(crate) type Path = Box<dyn FnMut(Workload, Arc<Collector>) -> Round>;

/// Measures `paths`, each with its own workload: a warm-up round each, then rounds in
/// turn until every path has its workload's `min_time` of measured time (a path that
/// loses events stops there). Returns one result per path, in order.
pub(crate) async fn measure(
    paths: &mut [(Workload, Path)],
    hidden: bool,
) -> Result<Vec<PathResult>, Failure> {
    for (w, path) in paths.iter_mut() {
        let warmup = Workload {
            events: w.events.min(WARMUP_EVENTS),
            ..w.clone()
        };
        let collector = Arc::new(Collector::new(warmup.subscribers, warmup.events));
        path(warmup, collector).await?;
    }
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(hidden);
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(progress.delivered());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let outcome = measured_rounds(paths, &progress).await;
    ticker.abort();
    bar.finish_and_clear();
    Ok(outcome?
        .into_iter()
        .zip(paths.iter())
        .map(|((totals, transport), (w, _))| PathResult::new(transport, w, &totals))
        .collect())
}

async fn measured_rounds(
    paths: &mut [(Workload, Path)],
    progress: &Progress,
) -> Result<Vec<(Totals, String)>, Failure> {
    let mut results: Vec<(Totals, String, bool)> = paths
        .iter()
        .map(|_| (Totals::default(), String::new(), false))
        .collect();
    while results.iter().any(|(_, _, done)| !done) {
        for ((w, path), (totals, transport, done)) in paths.iter_mut().zip(&mut results) {
            if *done {
                continue;
            }
            let collector = Arc::new(Collector::new(w.subscribers, w.events));
            progress.start_round(&collector);
            let (elapsed, name) = path(w.clone(), collector.clone()).await?;
            totals.add(&collector, elapsed);
            *transport = name;
            let lossy = collector.delivered() < collector.expected();
            *done = lossy || totals.elapsed >= w.min_time;
        }
    }
    Ok(results
        .into_iter()
        .map(|(totals, transport, _)| (totals, transport))
        .collect())
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

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} deliveries {per_sec}") {
        bar.set_style(style);
    }
    bar
}
