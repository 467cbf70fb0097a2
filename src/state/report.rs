//! The failure report of a job: every object that is not done (or, asked for, every object) —
//! with its key, size, state, error class, HTTP status, message, attempts, last attempt time
//! and how a done object was verified — and the job's totals, with how many objects each kind
//! of verification covers.
//! Built from the records alone (a pure function of a [`JobSnapshot`]), so the CLI reading the
//! state file and the daemon's API give the same answer; written as JSON or CSV.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ChunkState, FileState, JobProgress, JobSnapshot, JobState, progress_of};

/// How a done object whose verification was not recorded (copied before blobway kept it) is
/// counted.
pub const NOT_RECORDED: &str = "not recorded";

/// A job's failure report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub job: u64,
    pub source: String,
    pub destination: String,
    pub state: JobState,
    /// Why the job stopped, if it did.
    pub error: Option<String>,
    pub totals: JobProgress,
    /// How many done objects each kind of verification covers (`source checksum`, `blobway
    /// crc`, `size+version id`, `size+etag`, `not recorded`).
    pub verified: BTreeMap<&'static str, u64>,
    /// Every object not done (failed, unfinished), in the job's order; every object when the
    /// report was asked for all.
    pub objects: Vec<ReportRow>,
}

/// One object that is not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub key: String,
    pub dest_key: String,
    pub size: u64,
    pub state: &'static str,
    /// Chunks acknowledged, of all.
    pub chunks_done: u32,
    pub chunks: u32,
    /// The error class (`TRANSIENT`, `SOURCE_CHANGED`, …) of the object's failure, or of its
    /// most recent failed attempt while it is unfinished.
    pub error_class: Option<&'static str>,
    pub http_status: Option<u16>,
    pub message: Option<String>,
    /// Attempts at its chunks and commits, over every run.
    pub attempts: u64,
    /// When its last attempt started or failed, milliseconds since the Unix epoch.
    pub last_attempt_ms: Option<i64>,
    /// How a done object was shown to equal its source.
    pub verified: Option<&'static str>,
}

impl Report {
    /// The report of `snapshot`: the objects not done, or every object when `all`.
    pub fn of(snapshot: &JobSnapshot, all: bool) -> Self {
        let job = &snapshot.job;
        let mut verified = BTreeMap::new();
        for (_, file, _) in &snapshot.files {
            if file.state == FileState::Done {
                let label = file.verified.map_or(NOT_RECORDED, |v| v.label());
                *verified.entry(label).or_default() += 1;
            }
        }
        let objects = snapshot
            .files
            .iter()
            .filter(|(_, f, _)| all || !matches!(f.state, FileState::Done | FileState::Skipped))
            .map(|(_, file, chunks)| {
                let history = chunks.iter().flat_map(|c| &c.history);
                let last_error = history
                    .clone()
                    .filter_map(|a| a.error.as_ref())
                    .max_by_key(|e| e.at_ms);
                let error = file.error.as_ref().or(last_error);
                let last_attempt_ms = history
                    .map(|a| a.started_ms)
                    .chain(error.map(|e| e.at_ms))
                    .max();
                ReportRow {
                    key: file.key.clone(),
                    dest_key: file.dest_key.clone(),
                    size: file.size,
                    state: file.state.name(),
                    chunks_done: chunks
                        .iter()
                        .filter(|c| c.state == ChunkState::Completed)
                        .count() as u32,
                    chunks: file.chunk_count,
                    error_class: error.map(|e| e.class.name()),
                    http_status: error.and_then(|e| e.status),
                    message: error.map(|e| e.message.clone()),
                    attempts: chunks.iter().map(|c| u64::from(c.attempts)).sum::<u64>()
                        + u64::from(file.commit_attempts),
                    last_attempt_ms,
                    verified: file.verified.map(|v| v.label()),
                }
            })
            .collect();
        Report {
            job: job.id,
            source: job.source.clone(),
            destination: job.destination.clone(),
            state: job.state,
            error: job.error.clone(),
            totals: progress_of(snapshot.files.iter().map(|(_, f, c)| (f, c.as_slice()))),
            verified,
            objects,
        }
    }

    /// The objects as CSV, one row each under a header; the totals are left to the JSON
    /// form (a spreadsheet wants one table).
    pub fn to_csv(&self) -> anyhow::Result<String> {
        let mut out = csv::Writer::from_writer(Vec::new());
        for row in &self.objects {
            out.serialize(row)?;
        }
        if self.objects.is_empty() {
            // The header alone, so an empty report still parses as the same table.
            out.write_record(HEADER)?;
        }
        Ok(String::from_utf8(out.into_inner()?)?)
    }
}

/// The CSV columns, as [`ReportRow`] names them.
const HEADER: [&str; 12] = [
    "key",
    "dest_key",
    "size",
    "state",
    "chunks_done",
    "chunks",
    "error_class",
    "http_status",
    "message",
    "attempts",
    "last_attempt_ms",
    "verified",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        AttemptRecord, ChunkRecord, ErrorRecord, FileRecord, JobOptions, JobRecord, Verification,
    };
    use crate::store::ErrorClass;

    fn file(key: &str, state: FileState, chunks: u32) -> FileRecord {
        let size = u64::from(chunks) * 10;
        FileRecord {
            state,
            ..FileRecord::new(key, format!("d/{key}"), size, "e", 10, chunks)
        }
    }

    fn snapshot() -> JobSnapshot {
        let failure = ErrorRecord {
            class: ErrorClass::SourceChanged,
            status: Some(412),
            message: "the source changed, \"quoted\", since planning".into(),
            at_ms: 2_000,
        };
        let mut failed = file("a,b.bin", FileState::Failed, 2);
        failed.error = Some(failure.clone());
        let mut tried = ChunkRecord::pending();
        tried.attempts = 3;
        tried.history.push(AttemptRecord {
            started_ms: 1_500,
            latency_ms: 7,
            bytes: 0,
            error: Some(ErrorRecord {
                class: ErrorClass::Throttled,
                status: Some(503),
                message: "slow down".into(),
                at_ms: 1_507,
            }),
        });
        let mut done_chunk = ChunkRecord::pending();
        done_chunk.state = ChunkState::Completed;
        done_chunk.attempts = 1;
        JobSnapshot {
            job: JobRecord {
                id: 7,
                source: "s3://b/".into(),
                destination: "az://c/".into(),
                options: JobOptions::with_chunk_size(10),
                state: JobState::Failed,
                created_ms: 0,
                updated_ms: 0,
                error: None,
                planned: true,
            },
            files: vec![
                (
                    0,
                    FileRecord {
                        verified: Some(Verification::SourceChecksum),
                        ..file("done", FileState::Done, 1)
                    },
                    vec![done_chunk.clone()],
                ),
                (4, file("done before", FileState::Done, 1), vec![]),
                (1, failed, vec![done_chunk.clone(), tried.clone()]),
                (
                    2,
                    file("ünïcode/./x", FileState::Transferring, 2),
                    vec![done_chunk, tried],
                ),
                (3, file("skipped", FileState::Skipped, 1), vec![]),
            ],
        }
    }

    #[test]
    fn the_report_lists_every_object_not_done_with_why_and_when() {
        let report = Report::of(&snapshot(), false);
        let keys: Vec<&str> = report.objects.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["a,b.bin", "ünïcode/./x"]);
        let failed = &report.objects[0];
        assert_eq!(failed.state, "FAILED");
        assert_eq!(failed.error_class, Some("SOURCE_CHANGED"));
        assert_eq!(failed.http_status, Some(412));
        assert_eq!(
            (failed.chunks_done, failed.chunks, failed.attempts),
            (1, 2, 4)
        );
        assert_eq!(failed.last_attempt_ms, Some(2_000));
        // An unfinished object reports its most recent failed attempt.
        let unfinished = &report.objects[1];
        assert_eq!(unfinished.error_class, Some("THROTTLED"));
        assert_eq!(unfinished.http_status, Some(503));
        assert_eq!(unfinished.last_attempt_ms, Some(1_507));
        assert_eq!(report.totals.files_total, 5);
        assert_eq!(report.totals.files_failed, 1);
        assert_eq!(
            report.verified,
            BTreeMap::from([("not recorded", 1), ("source checksum", 1)])
        );
    }

    #[test]
    fn the_whole_report_says_how_each_done_object_was_verified() {
        let report = Report::of(&snapshot(), true);
        let rows: Vec<(&str, Option<&str>)> = report
            .objects
            .iter()
            .map(|r| (r.key.as_str(), r.verified))
            .collect();
        assert_eq!(
            rows,
            [
                ("done", Some("source checksum")),
                ("done before", None),
                ("a,b.bin", None),
                ("ünïcode/./x", None),
                ("skipped", None),
            ]
        );
        let text = report.to_csv().expect("csv");
        assert!(
            text.lines()
                .nth(1)
                .expect("row")
                .ends_with(",source checksum"),
            "{text}"
        );
    }

    #[test]
    fn the_csv_report_quotes_what_needs_it_and_reads_back_as_the_same_rows() {
        let report = Report::of(&snapshot(), false);
        let text = report.to_csv().expect("csv");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            reader.headers().expect("header").iter().collect::<Vec<_>>(),
            HEADER
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][0], "a,b.bin");
        assert_eq!(
            &rows[0][8],
            "the source changed, \"quoted\", since planning"
        );
        assert_eq!(&rows[1][0], "ünïcode/./x");
        assert_eq!(&rows[1][7], "503");
    }

    #[test]
    fn an_empty_report_is_still_a_table() {
        let mut snapshot = snapshot();
        snapshot
            .files
            .retain(|(_, f, _)| f.state == FileState::Done);
        let text = Report::of(&snapshot, false).to_csv().expect("csv");
        assert_eq!(text.trim_end(), HEADER.join(","));
    }
}
