//! Throughput and latency accumulated over the interleaved runs of one side.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub ops: u64,
    pub elapsed: Duration,
    /// Rate of each run, ops/s.
    pub runs: Vec<f64>,
    latencies_ns: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
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
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }

    pub fn percentiles(&self) -> Percentiles {
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        let at = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted[index] as f64 / 1e6
        };
        Percentiles {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rate": self.rate(),
            "ops": self.ops,
            "seconds": self.elapsed.as_secs_f64(),
            "per_run_rates": self.runs,
            "latency": self.percentiles(),
        })
    }
}
