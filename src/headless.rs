//! The headless consumer of engine events, for `blobway copy` and `blobway resume`: a progress
//! bar with bytes, rate and ETA on a terminal, periodic lines otherwise, or one JSON object per
//! line with `--json`; then a per-object summary of what failed and why, and the exit status.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::io::Write as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::engine::plan::Plan;
use crate::engine::{Command, Engine, Event};
use crate::size::human;
use crate::state::{JobId, JobProgress, JobState};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// One JSON object per line on stdout.
    Json,
    /// A live progress bar on stderr.
    Terminal,
    /// A progress line every few seconds on stderr.
    Plain,
}

/// One object that did not make it.
#[derive(Clone, Debug, Serialize)]
pub struct FailedObject {
    /// The job.
    pub job: JobId,
    /// Source key.
    pub key: String,
    /// Why.
    pub error: String,
}

/// How a job ended.
#[derive(Clone, Debug, Serialize)]
pub struct JobOutcome {
    /// The job.
    pub job: JobId,
    /// Source location.
    pub source: String,
    /// Destination location.
    pub destination: String,
    /// Final state.
    pub state: JobState,
    /// Final counts.
    pub progress: JobProgress,
    /// Why the whole job stopped, if it did.
    pub error: Option<String>,
    /// How its bytes travelled.
    pub carried: crate::engine::snapshot::Carried,
}

/// Everything a run ended with.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Finished jobs.
    pub jobs: Vec<JobOutcome>,
    /// Objects that failed.
    pub failed: Vec<FailedObject>,
    /// Routes that could not be planned or loaded.
    pub plan_failures: Vec<String>,
    /// Bytes acknowledged by the destination in this run.
    pub bytes_moved: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// True when the operator interrupted the run.
    pub interrupted: bool,
    /// The engine stopped on an error it could not go on from.
    pub fatal: Option<String>,
}

impl Report {
    /// True when every object of every job is committed (or was already identical).
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty()
            && self.plan_failures.is_empty()
            && !self.interrupted
            && self.fatal.is_none()
            && self.jobs.iter().all(|j| j.state == JobState::Done)
    }
}

#[derive(Serialize)]
struct ProgressLine {
    event: &'static str,
    bytes_done: u64,
    bytes_total: u64,
    bytes_per_sec: u64,
    /// Seconds left at the rate so far.
    eta_secs: Option<u64>,
}

/// Now, as RFC 3339 UTC to the second.
fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// Seconds left for `left` bytes at `rate` bytes per second.
fn eta(left: u64, rate: u64) -> Option<u64> {
    (rate > 0).then(|| left / rate)
}

/// Follows the engine until it stops, showing progress; Ctrl-C asks it to stop gracefully.
pub async fn follow(engine: Engine, output: Output) -> anyhow::Result<Report> {
    follow_saying(
        engine,
        output,
        "interrupted: letting chunks in flight finish (the rest returns to pending)…",
    )
    .await
}

/// [`follow`], saying `on_interrupt` when Ctrl-C is pressed (a copy followed through a daemon
/// only stops following).
pub async fn follow_saying(
    engine: Engine,
    output: Output,
    on_interrupt: &str,
) -> anyhow::Result<Report> {
    let Engine {
        handle,
        mut events,
        snapshots,
        task,
    } = engine;
    drop(snapshots); // nothing here draws them; the engine then skips building them
    let started = Instant::now();
    let mut report = Report::default();
    let mut routes: BTreeMap<JobId, (String, String)> = BTreeMap::new();
    let (mut total, mut done) = (0u64, 0u64);
    let bar = match output {
        Output::Terminal => {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        }
        _ => None,
    };
    let say = |line: String| match &bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(match output {
        Output::Plain => 5,
        _ => 1,
    }));
    tick.tick().await;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if output == Output::Json {
                    print_json(&event);
                }
                match &event {
                    Event::JobPlanned { job, source, destination, summary } => {
                        routes.insert(*job, (source.clone(), destination.clone()));
                        total += summary.to_copy_bytes;
                        if output != Output::Json {
                            let mut line = format!(
                                "job {job}: {source} → {destination}: {} objects ({}), {} to copy ({})",
                                summary.files, human(summary.bytes), summary.to_copy, human(summary.to_copy_bytes)
                            );
                            if summary.already_done + summary.identical > 0 {
                                line.push_str(&format!(
                                    ", {} already done, {} identical at the destination",
                                    summary.already_done, summary.identical
                                ));
                            }
                            line.push_str(&existing_words(summary));
                            say(line);
                            if summary.files == 0 && summary.filtered > 0 {
                                say(format!(
                                    "job {job}: nothing to copy: all {} objects at the source were left out by --include/--exclude",
                                    summary.filtered
                                ));
                            } else if summary.files == 0 {
                                say(format!("job {job}: nothing to copy: the source has no objects there"));
                            }
                        }
                    }
                    Event::JobLoaded { job, source, destination, progress, .. } => {
                        total += progress.bytes_total.saturating_sub(progress.bytes_done);
                        routes.insert(*job, (source.clone(), destination.clone()));
                        if output != Output::Json {
                            say(format!(
                                "job {job}: resuming, {} of {} copied",
                                human(progress.bytes_done), human(progress.bytes_total)
                            ));
                        }
                    }
                    Event::PlanFailed { source, destination, error } => {
                        let route = if source.is_empty() { String::new() } else { format!("{source} → {destination}: ") };
                        report.plan_failures.push(format!("{route}{error}"));
                        if output != Output::Json {
                            say(format!("error: {route}{error}"));
                        }
                    }
                    Event::ChunkCompleted { bytes, .. } => {
                        done += bytes;
                        report.bytes_moved += bytes;
                    }
                    Event::ChunkRetry { file, chunk, attempt, error, .. } => {
                        tracing::warn!(file, chunk, attempt, class = error.class.name(), "retrying: {}", error.message);
                    }
                    Event::JobStateChanged { job, state: JobState::Cancelled } if output != Output::Json => {
                        say(format!("job {job}: cancelled; its unfinished uploads were given up"));
                    }
                    Event::UploadRestarted { job, file, error } if output != Output::Json => {
                        say(format!("job {job}: object {file}: {}", error.message));
                    }
                    Event::ObjectFailed { job, key, error, .. } => {
                        report.failed.push(FailedObject { job: *job, key: key.clone(), error: error.message.clone() });
                        if output != Output::Json {
                            say(format!("failed: {key}: {}", error.message));
                        }
                    }
                    Event::JobFinished { job, state, progress, error, carried } => {
                        let (source, destination) = routes.get(job).cloned().unwrap_or_default();
                        report.jobs.push(JobOutcome {
                            job: *job, source, destination, state: *state, progress: *progress, error: error.clone(),
                            carried: *carried,
                        });
                    }
                    Event::Fatal { error } => report.fatal = Some(error.clone()),
                    Event::Notice { message } if output != Output::Json => say(message.clone()),
                    Event::BwLimitChanged { reason, .. } if output != Output::Json => {
                        say(reason.clone())
                    }
                    _ => {}
                }
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done.min(total));
                }
            }
            _ = tick.tick() => {
                let rate = (report.bytes_moved as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
                match output {
                    Output::Json => print_json(&ProgressLine { event: "progress", bytes_done: done, bytes_total: total, bytes_per_sec: rate, eta_secs: eta(total.saturating_sub(done), rate) }),
                    Output::Plain if total > 0 => {
                        // Not a terminal (a log, a pipe): each line says when, and how long is left.
                        let left = match eta(total.saturating_sub(done), rate) {
                            Some(secs) => format!("ETA {}", humantime(secs)),
                            None => "ETA unknown".into(),
                        };
                        eprintln!("{} {} of {} ({}/s), {left}", now_rfc3339(), human(done), human(total), human(rate))
                    }
                    _ => {}
                }
            }
            _ = &mut interrupt, if !report.interrupted => {
                report.interrupted = true;
                say(on_interrupt.into());
                let _ = handle.send(Command::Shutdown).await;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.fatal = report.fatal.take().or(Some(format!("{e:#}"))),
        Err(e) => report.fatal = Some(format!("the engine task failed: {e}")),
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Prints what a dry run planned: each object with what would happen to it, then the totals.
pub fn print_dry_run(source: &str, destination: &str, plan: &Plan, json: bool) {
    let s = &plan.summary;
    if json {
        print_json(&serde_json::json!({
            "event": "dry_run",
            "source": source,
            "destination": destination,
            "summary": s,
            "objects": plan.objects,
        }));
        return;
    }
    println!("plan {source} → {destination} (dry run: nothing is copied, created or recorded)");
    if !plan.objects.is_empty() {
        println!("  {:<6} {:>11} {:>7}  OBJECT", "ACTION", "SIZE", "CHUNKS");
    }
    for o in &plan.objects {
        let (verb, why) = o.action.split_once(": ").unwrap_or((o.action.as_str(), ""));
        let target = if o.dest_key == o.key {
            o.key.clone()
        } else {
            format!("{} → {}", o.key, o.dest_key)
        };
        let why = if why.is_empty() {
            String::new()
        } else {
            format!("  ({why})")
        };
        println!(
            "  {:<6} {:>11} {:>7}  {target}{why}",
            verb,
            human(o.size),
            o.chunks
        );
    }
    println!(
        "  {} objects ({}): {} to copy ({}) in {} chunks, about {} requests; {} already done, \
         {} identical at the destination, {} cannot be copied, {} left out by filters",
        s.files,
        human(s.bytes),
        s.to_copy,
        human(s.to_copy_bytes),
        s.chunks,
        s.requests,
        s.already_done,
        s.identical,
        s.rejected,
        s.filtered
    );
    let existing = existing_words(s);
    if !existing.is_empty() {
        println!("  {}", existing.trim_start_matches(", "));
    }
    if s.tags_refused > 0 {
        println!(
            "  tags: {} object(s) with tags the destination cannot hold (--copy-tags)",
            s.tags_refused
        );
    }
    if s.metadata_changed + s.metadata_refused > 0 {
        println!(
            "  metadata: {} object(s) with pairs renamed or left out, {} refused \
             (--invalid-metadata)",
            s.metadata_changed, s.metadata_refused
        );
    }
}

/// What a plan does to objects already at the destination and to names it cannot hold, in
/// words (empty when nothing).
fn existing_words(s: &crate::engine::PlanSummary) -> String {
    let mut out = String::new();
    if s.replaced > 0 {
        out.push_str(&format!(", {} existing object(s) replaced", s.replaced));
    }
    if s.existing_skipped > 0 {
        out.push_str(&format!(
            ", {} existing object(s) left as they are (--if-exists skip)",
            s.existing_skipped
        ));
    }
    if s.folder_markers > 0 {
        out.push_str(&format!(", {} folder marker(s) skipped", s.folder_markers));
    }
    out
}

/// One JSON line, stamped with the time (`ts`, RFC 3339 UTC) for logs and audits.
fn print_json<T: Serialize>(value: &T) {
    let Ok(mut value) = serde_json::to_value(value) else {
        return;
    };
    if let Some(object) = value.as_object_mut() {
        object
            .entry("ts")
            .or_insert_with(|| serde_json::Value::String(now_rfc3339()));
    }
    if let Ok(line) = serde_json::to_string(&value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Prints the end-of-run summary: one line per job, then every failed object with its reason.
pub fn print_summary(report: &Report, output: Output) {
    if output == Output::Json {
        #[derive(Serialize)]
        struct Summary<'a> {
            event: &'static str,
            ok: bool,
            #[serde(flatten)]
            report: &'a Report,
        }
        print_json(&Summary {
            event: "summary",
            ok: report.succeeded(),
            report,
        });
        return;
    }
    for job in &report.jobs {
        let p = &job.progress;
        println!(
            "job {} {} → {}: {}",
            job.job,
            job.source,
            job.destination,
            job.state.name()
        );
        println!(
            "  {} object(s): {} done (copied now or in an earlier run), {} skipped (already identical), {} failed",
            p.files_total, p.files_done, p.files_skipped, p.files_failed
        );
        match job.carried {
            crate::engine::snapshot::Carried::Server => {
                println!("  copied server-side: the bytes went store to store")
            }
            crate::engine::snapshot::Carried::FellBack => println!(
                "  the stores refused server-side copy (the log says why): the rest went \
                 through blobway"
            ),
            crate::engine::snapshot::Carried::Mixed => println!(
                "  copied server-side, but some objects went through blobway (their signed \
                 URLs were too long; the log says which)"
            ),
            _ => {}
        }
        if let Some(error) = &job.error {
            println!("  stopped: {error}");
        }
    }
    let rate = report.bytes_moved as f64 / report.seconds.max(0.001);
    println!(
        "moved {} in {:.1} s ({}/s)",
        human(report.bytes_moved),
        report.seconds,
        human(rate as u64)
    );
    if !report.failed.is_empty() {
        println!("failed objects:");
        for failed in &report.failed {
            println!("  job {} {}: {}", failed.job, failed.key, failed.error);
        }
    }
    // Said on stderr as they came; on a terminal where stdout is the same screen, not twice.
    let one_screen = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    for failure in report.plan_failures.iter().filter(|_| !one_screen) {
        println!("error: {failure}");
    }
    if let Some(fatal) = &report.fatal {
        println!("error: {fatal}");
    }
    if report.interrupted {
        println!("interrupted: run `blobway resume` (or the same copy again) to continue");
    }
}

/// A duration in seconds as `1h02m`, `3m05s` or `12s`.
fn humantime(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_as_an_operator_says_it() {
        assert_eq!(eta(1000, 0), None);
        assert_eq!(eta(1000, 10), Some(100));
        assert_eq!(humantime(12), "12s");
        assert_eq!(humantime(185), "3m05s");
        assert_eq!(humantime(3720), "1h02m");
    }

    #[test]
    fn stamps_are_rfc3339_utc() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
