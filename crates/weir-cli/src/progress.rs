//! The live view on a terminal: one line per stage with items, rate, queue
//! fill and workers, redrawn a few times a second from the engine's live
//! metrics. Off when stderr is not a terminal (no escape codes in logs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Lines shown under the stages, kept current by someone else (the
/// distributed coordinator: the remote stages, from the workers' reports).
pub type Extra = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Redraws until `done` fires, then clears itself.
pub async fn live(metrics: weir::Metrics, done: tokio_util_like::Done, extra: Option<Extra>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
    let style =
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut extra_bars: Vec<ProgressBar> = Vec::new();
    let header = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
    header.set_message(format!(
        "{:<18} {:>10} {:>10} {:>9} {:>7} {:>7}",
        "stage", "in", "rate/s", "dead", "queue", "workers"
    ));
    loop {
        for s in metrics.snapshot() {
            if s.name == weir::DEAD_LETTER_STAGE && s.received == 0 {
                continue;
            }
            let bar = bars
                .entry(s.name.clone())
                .or_insert_with(|| multi.add(ProgressBar::new_spinner().with_style(style.clone())));
            let now = Instant::now();
            let (prev, at) = last.get(&s.name).copied().unwrap_or((0, now));
            let dt = now.duration_since(at).as_secs_f64();
            let rate = if dt > 0.0 {
                (s.received.saturating_sub(prev)) as f64 / dt
            } else {
                0.0
            };
            last.insert(s.name.clone(), (s.received, now));
            let queue = match s.queue_capacity {
                Some(c) if s.runs_in.is_none() => format!("{}/{c}", s.queue_len),
                _ => "-".into(),
            };
            let workers = if s.runs_in.is_some() {
                "fused".to_string()
            } else {
                format!("{}", s.workers_active)
            };
            bar.set_message(format!(
                "{:<18} {:>10} {:>10.0} {:>9} {:>7} {:>7}",
                s.name, s.received, rate, s.dead_lettered, queue, workers
            ));
        }
        if let Some(extra) = &extra {
            let lines = extra.lock().unwrap_or_else(|p| p.into_inner()).clone();
            while extra_bars.len() < lines.len() {
                extra_bars.push(multi.add(ProgressBar::new_spinner().with_style(style.clone())));
            }
            for (bar, line) in extra_bars.iter().zip(lines) {
                bar.set_message(line);
            }
        }
        if done.wait(Duration::from_millis(200)).await {
            break;
        }
    }
    let _ = multi.clear();
}

/// A one-shot "the run is over" signal.
pub mod tokio_util_like {
    use std::time::Duration;

    #[derive(Clone)]
    pub struct Done(pub weir::CancellationToken);

    impl Done {
        /// Waits up to `d`; true once done.
        pub async fn wait(&self, d: Duration) -> bool {
            tokio::select! {
                _ = self.0.cancelled() => true,
                _ = tokio::time::sleep(d) => false,
            }
        }
    }
}
