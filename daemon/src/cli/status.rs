//! `primiad status`: asks the running daemon over its control socket what
//! it is doing, and prints a summary or (`--json`) the status document.
//!
//! Exit codes: 0 the daemon answered; 1 an error (bad config, bad answer);
//! 2 bad usage; 3 no daemon is running on that storage directory.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::control::{self, ControlError, StatusSnapshot};
use crate::store::now_unix_ms;

/// Exit code when no daemon answers on the control socket.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Config read when neither `--config` nor `--storage-dir` is given.
pub const DEFAULT_CONFIG: &str = "primiad.toml";

/// Arguments of `primiad status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the daemon answered, 1 error, 2 bad usage, \
3 no daemon is running on that storage directory."
)]
pub struct Args {
    /// The daemon's config; its storage directory holds the control socket.
    /// Default: primiad.toml in the current directory.
    #[arg(long, value_name = "FILE", conflicts_with = "storage_dir")]
    pub config: Option<PathBuf>,
    /// The daemon's storage directory (where control.sock is), instead of
    /// reading a config.
    #[arg(long, value_name = "DIR", visible_alias = "data-dir")]
    pub storage_dir: Option<PathBuf>,
    /// Print the status as a JSON document (fields: see
    /// `primiad::control::StatusSnapshot`).
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the daemon's answer.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
}

/// Queries the daemon and prints its status.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let storage_dir = match (args.storage_dir, args.config) {
        (Some(dir), _) => dir,
        (None, config) => {
            let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            Config::load(&path)
                .with_context(|| {
                    format!(
                        "cannot find the daemon's storage directory from config {}",
                        path.display()
                    )
                })?
                .storage_dir
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let value = match control::query_status_json(&storage_dir, timeout) {
        Ok(v) => v,
        Err(e @ ControlError::NotRunning { .. }) => {
            eprintln!("primiad status: {e}");
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let snapshot: StatusSnapshot = serde_json::from_value(value)
            .context("the daemon's status is not a document this primiad understands")?;
        print!("{}", render(&snapshot, now_unix_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `bytes` in the largest binary unit that keeps a whole number in front.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The human-readable summary of `s`, with ages relative to `now_ms`.
pub fn render(s: &StatusSnapshot, now_ms: u64) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "member      {} ({})", s.name, s.peer_id);
    let _ = writeln!(
        w,
        "consortium  {} ({} members, threshold {})",
        s.consortium, s.members, s.threshold
    );
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let _ = writeln!(
        w,
        "connected   {} of {}: {}",
        s.connected.len(),
        s.connected.len() + s.missing.len(),
        list(&s.connected)
    );
    let _ = writeln!(w, "missing     {}", list(&s.missing));
    match &s.round {
        Some(r) => {
            let _ = writeln!(
                w,
                "round       {} attempt {}, phase {}, leader {} (started {})",
                r.round,
                r.attempt,
                r.phase,
                r.leader,
                ago(r.started_unix_ms, now_ms)
            );
        }
        None => {
            let _ = writeln!(w, "round       none in progress");
        }
    }
    match &s.latest_model {
        Some(m) => {
            let _ = writeln!(
                w,
                "model       {} from round {}, {} parameters, made {} ({})",
                m.hash,
                m.round,
                m.parameter_count,
                utc(m.created_unix_ms),
                ago(m.created_unix_ms, now_ms)
            );
        }
        None => {
            let _ = writeln!(w, "model       none yet");
        }
    }
    let _ = writeln!(
        w,
        "privacy     epsilon {} (delta {})",
        s.privacy_spent.epsilon, s.privacy_spent.delta
    );
    match s.metrics.first() {
        Some(m) => {
            let values: Vec<String> = m
                .values
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            let _ = writeln!(
                w,
                "metrics     model of round {} on local validation data: {}",
                m.round,
                values.join(", ")
            );
        }
        None => {
            let _ = writeln!(w, "metrics     none yet");
        }
    }
    let _ = writeln!(
        w,
        "storage     {} ({} model{}, {}; database {})",
        s.storage_dir,
        s.stored.models,
        if s.stored.models == 1 { "" } else { "s" },
        size(s.stored.model_bytes),
        size(s.stored.database_bytes)
    );
    let _ = writeln!(
        w,
        "up since    {} ({})",
        utc(s.started_unix_ms),
        ago(s.started_unix_ms, now_ms)
    );
    if s.recent_attempts.is_empty() {
        let _ = writeln!(w, "recent      no rounds yet");
    } else {
        let _ = writeln!(w, "recent attempts (newest first):");
        for a in &s.recent_attempts {
            let outcome = match &a.outcome {
                crate::store::AttemptOutcome::Completed => "completed".to_owned(),
                crate::store::AttemptOutcome::Failed { reason } => format!("failed: {reason}"),
            };
            let phases: Vec<String> = a
                .phases
                .iter()
                .map(|p| format!("{} {}", p.phase, ms(p.ms)))
                .collect();
            let _ = writeln!(
                w,
                "  round {} attempt {}: {}, leader {}, {} participants, {} dropouts, {}{}",
                a.round,
                a.attempt,
                outcome,
                a.leader,
                a.participants.len(),
                a.dropouts.len(),
                ms(a.duration_ms),
                if phases.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", phases.join(", "))
                }
            );
            if !a.dropouts.is_empty() {
                let _ = writeln!(w, "    dropped: {}", a.dropouts.join(", "));
            }
        }
    }
    out
}

fn ms(v: u64) -> String {
    if v < 1000 {
        format!("{v} ms")
    } else {
        format!("{:.1} s", v as f64 / 1000.0)
    }
}

fn ago(then_ms: u64, now_ms: u64) -> String {
    let Some(d) = now_ms.checked_sub(then_ms) else {
        return "in the future".into();
    };
    let s = d / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h {} min ago", s / 3600, s % 3600 / 60),
        _ => format!("{} days ago", s / 86400),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` without a date library (days to civil date
/// after Howard Hinnant's algorithm).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(1000, 6000), "5 s ago");
        assert_eq!(ago(0, 125_000), "2 min ago");
        assert_eq!(ago(0, 3_660_000), "1 h 1 min ago");
        assert_eq!(ago(10, 5), "in the future");
        assert_eq!(ms(999), "999 ms");
        assert_eq!(ms(1500), "1.5 s");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(45 << 20), "45.0 MiB");
        assert_eq!(size(3 << 40), "3.0 TiB");
        assert_eq!(size(u64::MAX), "16777216.0 TiB");
    }
}
