//! Percentiles by sorting, and throughput sums over interleaved rounds.

use std::time::Duration;

/// Latency percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From latencies in nanoseconds (sorted here).
    pub fn of_ns(mut samples: Vec<u64>) -> Percentiles {
        samples.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        Percentiles {
            samples: samples.len(),
            p50_ms: ms(nearest_rank(&samples, 50.0)),
            p90_ms: ms(nearest_rank(&samples, 90.0)),
            p99_ms: ms(nearest_rank(&samples, 99.0)),
            max_ms: ms(samples.last().copied().unwrap_or(0)),
        }
    }
}

/// The nearest-rank percentile of a sorted sample (0 when empty).
pub fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of durations (sorted here).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    if values.is_empty() {
        Duration::ZERO
    } else {
        values[(values.len() - 1) / 2]
    }
}

/// Operations done and time spent over several timed runs of one variant.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub ops: u64,
    pub elapsed: Duration,
    /// Per-run rates, to show the spread.
    pub runs: Vec<f64>,
    /// Per-operation latencies in nanoseconds.
    pub latencies_ns: Vec<u64>,
}

impl Throughput {
    pub fn add(&mut self, ops: u64, elapsed: Duration, latencies_ns: Vec<u64>) {
        self.ops += ops;
        self.elapsed += elapsed;
        self.runs.push(ops as f64 / elapsed.as_secs_f64().max(1e-9));
        self.latencies_ns.extend(latencies_ns);
    }

    /// Operations per second over all runs (total ops / total time).
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of_ns(self.latencies_ns.clone())
    }
}
