//! The report: one markdown table per workload with absolute figures and eventuate's ratio to
//! every other side, the targets checked against them, the run's context (date,
//! machine, server, settings), and the same as JSON.

use serde_json::json;

use crate::env::{Env, Machine, load_avg};
use crate::stats::Throughput;
use crate::{Mode, POOL_SIZE};

/// One workload's figures.
#[derive(Debug, Clone)]
pub struct Table {
    /// Key in the JSON output.
    pub key: String,
    pub title: String,
    /// Sizes, rounds.
    pub setup: String,
    pub unit: &'static str,
    /// Whether per-operation latencies were recorded.
    pub latency: bool,
    /// Every side, by name (the eventuate ones first).
    pub sides: Vec<(&'static str, Throughput)>,
    pub details: serde_json::Value,
    /// Printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    pub fn rate(&self, name: &str) -> Option<f64> {
        self.sides
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.rate())
    }
}

/// An issue target: `side` must reach `at_least` times `peer`'s figure.
#[derive(Debug, Clone)]
struct Check {
    table: String,
    side: &'static str,
    peer: &'static str,
    at_least: f64,
    ratio: f64,
    /// The hand-written floor of the same work against the same peer, in the same run: how
    /// far any library could get (`floor`, its ratio).
    ceiling: Option<(&'static str, f64)>,
}

impl Check {
    fn met(&self) -> bool {
        self.ratio >= self.at_least
    }
}

#[derive(Debug)]
pub struct Report {
    date: String,
    mode: Mode,
    machine_start: Machine,
    load_avg_end: String,
    server: String,
    source: String,
    settings: String,
    pub commands: Vec<Table>,
    pub loads: Vec<Table>,
    pub catchup: Vec<Table>,
    checks: Vec<Check>,
}

impl Report {
    pub fn new(env: &Env, mode: Mode) -> Report {
        Report {
            date: utc_now(),
            mode,
            machine_start: Machine::now(),
            load_avg_end: String::new(),
            server: env.server_version.clone(),
            source: env.source.clone(),
            settings: env.settings_line(),
            commands: Vec::new(),
            loads: Vec::new(),
            catchup: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn tables(&self) -> impl Iterator<Item = &Table> {
        self.commands.iter().chain(&self.catchup).chain(&self.loads)
    }

    /// Records the load average at the end and checks the targets.
    pub fn finish(&mut self) {
        self.load_avg_end = load_avg();
        let mut checks = Vec::new();
        for table in &self.commands {
            for peer in ["cqrs-es", "esrs"] {
                for (side, at_least, floor) in [
                    ("eventuate", 1.3, "raw sqlx"),
                    ("eventuate + cache", 2.0, "raw sqlx, INSERT only"),
                ] {
                    if let (Some(a), Some(b)) = (table.rate(side), table.rate(peer)) {
                        checks.push(Check {
                            table: table.title.clone(),
                            side,
                            peer,
                            at_least,
                            ratio: a / b,
                            ceiling: table.rate(floor).map(|f| (floor, f / b)),
                        });
                    }
                }
            }
        }
        for table in &self.catchup {
            if let (Some(a), Some(b)) = (table.rate("eventuate"), table.rate("disintegrate")) {
                checks.push(Check {
                    table: table.title.clone(),
                    side: "eventuate",
                    peer: "disintegrate",
                    at_least: 1.0,
                    ratio: a / b,
                    // The ceiling of a reader of eventuate's row shape.
                    ceiling: table
                        .rate(crate::catchup::RAW_ENVELOPE)
                        .map(|f| (crate::catchup::RAW_ENVELOPE, f / b)),
                });
            }
        }
        self.checks = checks;
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine_start;
        out.push_str(&format!(
            "Run {} ({} mode). Machine: {} CPUs ({}), load average {} at the start, {} at the \
             end. Server: {} ({}), {}; every library's pool {} connections.\n\n",
            self.date,
            if self.mode.quick { "quick" } else { "full" },
            m.cpus,
            m.cpu_model,
            m.load_avg,
            self.load_avg_end,
            self.server,
            self.source,
            self.settings,
            POOL_SIZE,
        ));
        for table in self.tables() {
            out.push_str(&format!("**{}**: {}.\n\n", table.title, table.setup));
            let ours: Vec<&str> = table
                .sides
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| n.starts_with("eventuate"))
                .collect();
            out.push_str(&format!("| library | {} |", table.unit));
            if table.latency {
                out.push_str(" p50 ms | p99 ms |");
            }
            for ours in &ours {
                out.push_str(&format!(" {ours} ÷ it |"));
            }
            out.push('\n');
            out.push_str("|---|---:|");
            if table.latency {
                out.push_str("---:|---:|");
            }
            out.push_str(&"---:|".repeat(ours.len()));
            out.push('\n');
            for (name, t) in &table.sides {
                out.push_str(&format!("| {name} | {} |", figure(t.rate())));
                if table.latency {
                    let p = t.percentiles();
                    out.push_str(&format!(" {:.2} | {:.2} |", p.p50_ms, p.p99_ms));
                }
                for ours in &ours {
                    if ours == name {
                        out.push_str(" – |");
                    } else {
                        let ratio = table.rate(ours).unwrap_or(0.0) / t.rate().max(1e-9);
                        out.push_str(&format!(" {ratio:.2}x |"));
                    }
                }
                out.push('\n');
            }
            out.push('\n');
            for note in &table.notes {
                out.push_str(&format!("{note}\n\n"));
            }
        }
        out.push_str(
            "Targets of issue #10, with the hand-written floor of the same work against the same \
             peer in the same run (how far any library on this schema shape could get):\n\n\
             | workload | ratio | target | met | floor ÷ peer |\n|---|---:|---:|---|---|\n",
        );
        for c in &self.checks {
            let ceiling = match c.ceiling {
                Some((floor, ratio)) => format!("{ratio:.2}x ({floor})"),
                None => "–".to_owned(),
            };
            out.push_str(&format!(
                "| {}: {} ÷ {} | {:.2}x | ≥ {:.1}x | {} | {} |\n",
                c.table,
                c.side,
                c.peer,
                c.ratio,
                c.at_least,
                if c.met() { "yes" } else { "**no**" },
                ceiling,
            ));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let tables: serde_json::Map<String, serde_json::Value> = self
            .tables()
            .map(|t| {
                let sides: serde_json::Map<String, serde_json::Value> = t
                    .sides
                    .iter()
                    .map(|(n, th)| ((*n).to_owned(), th.json()))
                    .collect();
                (
                    t.key.clone(),
                    json!({
                        "title": t.title,
                        "setup": t.setup,
                        "unit": t.unit,
                        "sides": sides,
                        "details": t.details,
                        "notes": t.notes,
                    }),
                )
            })
            .collect();
        json!({
            "date": self.date,
            "mode": if self.mode.quick { "quick" } else { "full" },
            "machine": self.machine_start,
            "load_avg_end": self.load_avg_end,
            "server": self.server,
            "server_source": self.source,
            "settings": self.settings,
            "pool_size": POOL_SIZE,
            "workloads": tables,
            "targets": self.checks.iter().map(|c| json!({
                "workload": c.table,
                "side": c.side,
                "peer": c.peer,
                "ratio": c.ratio,
                "at_least": c.at_least,
                "met": c.met(),
                "floor": c.ceiling.map(|(floor, _)| floor),
                "floor_ratio": c.ceiling.map(|(_, ratio)| ratio),
            })).collect::<Vec<_>>(),
        })
    }
}

fn figure(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// The current UTC time, `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60
    )
}
