//! The result rows, the Markdown table and the JSON file.

use serde::Serialize;
use serde_json::{Value, json};

use crate::env::Env;

/// What a row must reach.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// framework / reference must be at least this.
    RatioAtLeast(f64),
    /// framework / reference must be at most this.
    RatioAtMost(f64),
    /// The framework's figure (in the row's unit) must be at most this.
    ValueAtMost(f64),
    /// Reported for comparison; the issue sets no target.
    None,
}

impl Target {
    fn text(&self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!(">= {r}x"),
            Target::RatioAtMost(r) => format!("<= {r}x"),
            Target::ValueAtMost(v) => format!("<= {v} {unit}"),
            Target::None => "—".into(),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub unit: String,
    pub framework: f64,
    pub reference: f64,
    /// Extra text shown next to the figures (latency percentiles, counts).
    pub framework_note: String,
    pub reference_note: String,
    pub target: Target,
    /// Free-form details for the JSON (sizes, rounds, spread).
    pub details: Value,
}

impl Row {
    pub fn new(workload: impl Into<String>, unit: &str, framework: f64, reference: f64) -> Row {
        Row {
            workload: workload.into(),
            unit: unit.into(),
            framework,
            reference,
            framework_note: String::new(),
            reference_note: String::new(),
            target: Target::None,
            details: Value::Null,
        }
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }

    pub fn notes(mut self, framework: impl Into<String>, reference: impl Into<String>) -> Row {
        self.framework_note = framework.into();
        self.reference_note = reference.into();
        self
    }

    pub fn details(mut self, details: Value) -> Row {
        self.details = details;
        self
    }

    pub fn ratio(&self) -> f64 {
        if self.reference == 0.0 {
            f64::NAN
        } else {
            self.framework / self.reference
        }
    }

    pub fn met(&self) -> Option<bool> {
        let ratio = self.ratio();
        match self.target {
            Target::RatioAtLeast(r) => Some(ratio >= r),
            Target::RatioAtMost(r) => Some(ratio <= r),
            Target::ValueAtMost(v) => Some(self.framework <= v),
            Target::None => None,
        }
    }
}

/// The run's context: when, where, on what server, in which mode.
#[derive(Debug)]
pub struct Context<'a> {
    pub env: &'a Env,
    pub quick: bool,
    pub pool_size: u32,
    pub started: std::time::SystemTime,
    pub measuring_secs: f64,
    pub notes: Vec<String>,
}

fn figure(value: f64, unit: &str) -> String {
    let number = if value.abs() >= 100.0 {
        group_thousands(value.round() as i64)
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    format!("{number} {unit}")
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn cell(value: f64, unit: &str, note: &str) -> String {
    if note.is_empty() {
        figure(value, unit)
    } else {
        format!("{} ({note})", figure(value, unit))
    }
}

pub fn markdown(ctx: &Context<'_>, rows: &[Row]) -> String {
    let env = ctx.env;
    let mut out = String::new();
    out.push_str("## eventuate-rs benchmark\n\n");
    out.push_str(&format!(
        "- date: {} UTC; mode: {}; measuring time: {:.0} s\n",
        utc_date_time(ctx.started),
        if ctx.quick { "quick" } else { "full" },
        ctx.measuring_secs
    ));
    out.push_str(&format!("- machine: {}\n", machine()));
    out.push_str(&format!(
        "- server: {} ({}); data directory on {}\n",
        env.server_version, env.source, env.data_dir_fs
    ));
    let settings: Vec<String> = env
        .settings
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    out.push_str(&format!(
        "- durability: {} ({})\n",
        if env.durable() {
            "durable commits"
        } else {
            "NOT durable"
        },
        settings.join(", ")
    ));
    out.push_str(&format!(
        "- pool size: {} connections for the framework's store and for the raw floor alike\n",
        ctx.pool_size
    ));
    for note in &ctx.notes {
        out.push_str(&format!("- {note}\n"));
    }
    out.push('\n');
    out.push_str("| workload | framework | reference | ratio | target | met? |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let met = match row.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2}x | {} | {} |\n",
            row.workload,
            cell(row.framework, &row.unit, &row.framework_note),
            cell(row.reference, &row.unit, &row.reference_note),
            row.ratio(),
            row.target.text(&row.unit),
            met
        ));
    }
    out
}

pub fn json(ctx: &Context<'_>, rows: &[Row], diagnosis: Option<&crate::diag::Report>) -> Value {
    let env = ctx.env;
    let settings: serde_json::Map<String, Value> = env
        .settings
        .iter()
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "date": utc_date_time(ctx.started),
        "mode": if ctx.quick { "quick" } else { "full" },
        "measuring_secs": ctx.measuring_secs,
        "machine": {
            "cores": cores(),
            "cpu": cpu_model(),
            "load_average_at_start": load_average(),
        },
        "server": {
            "version": env.server_version,
            "source": env.source,
            "data_directory_filesystem": env.data_dir_fs,
            "durable": env.durable(),
            "settings": settings,
        },
        "pool_size": ctx.pool_size,
        "diagnosis": diagnosis,
        "notes": ctx.notes,
        "rows": rows.iter().map(|r| json!({
            "workload": r.workload,
            "unit": r.unit,
            "framework": r.framework,
            "reference": r.reference,
            "framework_note": r.framework_note,
            "reference_note": r.reference_note,
            "ratio": r.ratio(),
            "target": r.target,
            "met": r.met(),
            "details": r.details,
        })).collect::<Vec<_>>(),
    })
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    format!(
        "{} cores (nproc), {}; load average at start {} (shared machine)",
        cores(),
        cpu_model(),
        load_average()
    )
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (civil-from-days, Howard Hinnant's algorithm).
pub fn utc_date_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
