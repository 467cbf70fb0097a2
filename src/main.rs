//! The `blobway` command line: parses arguments, opens the state file, starts the engine and
//! hands its events to the headless consumer. Exit statuses are documented in `--help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use blobway::daemon::api;
use blobway::daemon::client::Client;
use blobway::demo::DemoStores;
use blobway::engine::bwlimit::BwLimit;
use blobway::engine::snapshot::JobView;
use blobway::engine::{
    Command, ControllerConfig, DefaultStores, Engine, EngineConfig, RetryPolicy, StoreFactory,
};
use blobway::headless::{self, Output};
use blobway::size::{human, parse_size};
use blobway::state::{JobId, JobOptions, JobState, StateDb, StateLocation};
use blobway::store::simulated::LinkSettings;
use blobway::store::{Access, ChecksumKind, StoreSettings};
use blobway::tui::app::AppOptions;
use hyper::Method;

const AFTER_HELP: &str = "\
Locations:
  s3://bucket/key        one S3 object          s3://bucket/prefix/   every object under it
  az://container/path    one Azure blob         az://container/dir/   a blob prefix
  gs://bucket/path       one GCS object (destination only)
  /local/path, file:///abs/path                 a local file or directory

Credentials come from the environment, as the AWS and Azure tools expect them:
  AWS:   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION,
         AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 (custom endpoints use path-style addressing)
  Azure: AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or
         AZURE_STORAGE_SAS_TOKEN, or an Entra ID login; AZURE_STORAGE_BLOB_ENDPOINT overrides
         the endpoint
  GCS:   STORAGE_EMULATOR_HOST (an emulator, no credentials), or GOOGLE_OAUTH_ACCESS_TOKEN
         (e.g. from `gcloud auth print-access-token`); new buckets go to GOOGLE_CLOUD_PROJECT
  Two S3 accounts or servers in one route: --source-profile/--source-endpoint and
         --dest-profile/--dest-endpoint name an AWS profile and endpoint per side

Exit status:
  0  every object is committed and verified (or was already identical at the destination)
  1  the run finished but some objects failed (see the summary), or was interrupted
  2  bad input: arguments, locations, credentials, unreachable or missing buckets
  3  the state file cannot be used (in use by another blobway, damaged, unwritable)";

/// Moves very large objects between object stores — S3 to Azure Blob first — chunk by chunk,
/// exactly once and resumably. Without a command, opens the operator's terminal UI on the
/// state file: unfinished jobs resume (paused ones stay paused), buckets can be browsed and
/// copies queued.
#[derive(Parser, Debug)]
#[command(name = "blobway", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Where every job, object and chunk is kept: a state file, or a PostgreSQL database
    /// (`postgres://user:password@host:port/database`; the password is never shown).
    #[arg(
        long,
        global = true,
        env = "BLOBWAY_STATE",
        hide_env_values = true,
        value_name = "FILE|URL"
    )]
    state: Option<PathBuf>,

    /// Run the engine in this process, as a script may want, instead of in the daemon of the
    /// state file (which the TUI, copy and resume otherwise use, starting one in the
    /// background when none runs, so the work outlives the terminal).
    #[arg(long, global = true, env = "BLOBWAY_NO_DAEMON", value_parser = clap::builder::BoolishValueParser::new())]
    no_daemon: bool,

    #[command(flatten)]
    tuning: Tuning,

    #[command(subcommand)]
    command: Option<Commands>,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Copy SRC to DST (headless). Running the same copy again resumes it; objects already
    /// copied are skipped.
    Copy {
        /// Source: s3://bucket/key, s3://bucket/prefix/, az://…, or a local path.
        source: String,
        /// Destination: az://container/path, s3://bucket/prefix/, gs://bucket/path, or a
        /// local path. More destinations with --to.
        destination: Option<String>,
        /// One more destination (repeatable): the source is copied to each, as one job per
        /// destination, so a destination that fails is retried by `blobway resume` without
        /// copying again to those that succeeded. The source is read once per destination.
        #[arg(long = "to", value_name = "DST")]
        to: Vec<String>,
        /// Copy only objects matching this glob (repeatable). Without `/` it matches base
        /// names at any depth (`*.parquet`); with `/`, the path under the source prefix
        /// (`logs/**/*.gz`; `*` stops at `/`, `**` crosses it).
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Leave out objects matching this glob (repeatable; wins over --include).
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Print the plan (objects, bytes, chunks, requests) and stop: nothing is copied,
        /// nothing is created at the destination, nothing is recorded.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        access: AccessFlags,
        #[command(flatten)]
        tuning: Tuning,
        /// Print one JSON object per line (events, progress, a final summary) instead of a
        /// progress bar.
        #[arg(long)]
        json: bool,
        /// Hand the copy to the daemon (started in the background if none runs, with this
        /// command's tuning flags) and print its job ID at once; `blobway jobs` and the TUI
        /// follow it.
        #[arg(long, conflicts_with = "dry_run")]
        detach: bool,
        /// Chunk size; raised automatically per object to stay within the destination's
        /// block-count limit.
        #[arg(long, default_value = "16MiB", value_parser = parse_size_arg, value_name = "SIZE")]
        chunk_size: u64,
        /// Metadata the destination cannot hold (Azure names must be letters, digits and `_`;
        /// S3 and Azure values ASCII): `rename` keeps each such pair as `rename_<name>` (value
        /// percent-encoded) with `rename_key_<name>` holding the original name; `exclude`
        /// leaves it out; `fail` fails the object. Decided before any byte of the object moves.
        #[arg(long, value_enum, default_value_t, value_name = "WHAT")]
        invalid_metadata: blobway::store::rules::InvalidMetadata,
        /// An object the destination already holds (not copied by blobway from this very
        /// version): `overwrite` replaces it (counted in the summary); `skip` leaves it;
        /// `fail` fails that object. With skip/fail the commit itself is conditional, so a
        /// writer that appears meanwhile is not clobbered either.
        #[arg(long, value_enum, default_value_t, value_name = "WHAT")]
        if_exists: blobway::store::rules::IfExists,
        /// How the bytes travel: `server` has the stores copy them themselves, so they never
        /// pass through this machine — S3 or Azure → Azure: Put Block From URL from a GET
        /// signed for each attempt (S3: with the source's credentials; Azure: a read-only SAS
        /// for the one blob, so the source needs an account key or SAS; Azure must reach the
        /// source over the internet; its version is checked before each commit); S3 → S3 on
        /// one endpoint:
        /// UploadPartCopy/CopyObject pinned to the planned ETag (the destination's
        /// credentials must be allowed to read the source). `client` reads and writes them
        /// here. `auto` copies store to store where the route allows and falls back to
        /// `client` for the rest of the job when the stores refuse (a bucket policy, a
        /// service without the call, a source Azure cannot reach). `server` on a route that
        /// cannot is refused before anything starts. Recorded with the job.
        #[arg(long, value_enum, default_value_t, value_name = "HOW")]
        transfer: blobway::store::copy::TransferMode,
        /// The access tier objects are written to at an Azure destination (the account's
        /// default when not given). `archive` objects cannot be read until rehydrated, so a
        /// later `check --download` of them fails. Other destinations refuse it at planning.
        #[arg(long, value_enum, value_name = "TIER")]
        access_tier: Option<blobway::store::rules::AccessTier>,
        /// The storage class objects are written to at an S3 destination (the bucket's
        /// default, Standard, when not given). `glacier` and `deep-archive` objects cannot be
        /// read until restored. Other destinations refuse it at planning.
        #[arg(long, value_enum, value_name = "CLASS")]
        storage_class: Option<blobway::store::rules::StorageClass>,
        /// Copy each object's tags (S3 object tags, Azure blob index tags: one request per
        /// object, counted in --dry-run) to the destination's S3 tags or Azure blob index tags. A tag the destination cannot hold
        /// (Azure takes ASCII letters, digits, space and + - . / : = _ only; at most 10 tags)
        /// fails that object before any of its bytes are written; --dry-run lists such objects.
        #[arg(long)]
        copy_tags: bool,
    },
    /// List the jobs in the state file with their state and progress.
    Jobs {
        /// Print one JSON object per job.
        #[arg(long)]
        json: bool,
    },
    /// List the workers sharing a PostgreSQL state (--state postgres://…).
    ///
    /// Each `blobway serve` on it is one, named by BLOBWAY_WORKER_NAME (else host:pid). Shows
    /// each one's state
    /// (running; expired: it stopped renewing its lease, and its claims went back; left), its
    /// last heartbeat by the database's clock, chunks in flight, chunks and bytes moved since
    /// it joined, and the objects it holds claimed.
    Workers {
        /// Print one JSON object per worker.
        #[arg(long)]
        json: bool,
    },
    /// Continue unfinished jobs (all but those paused, which it names; or JOB, paused or not).
    /// Failed objects get another chance.
    Resume {
        /// The job to continue.
        job: Option<JobId>,
        #[command(flatten)]
        tuning: Tuning,
        /// Print one JSON object per line instead of a progress bar.
        #[arg(long)]
        json: bool,
    },
    /// Compare a source and a destination object by object: missing, extra, size, the source
    /// version blobway recorded with each copy, and with --download every byte. Prints one
    /// line per object in the manner of `rclone check --combined` (`=` identical, `-` missing
    /// at the destination, `+` extra there, `*` different, `!` not compared) with how it was
    /// verified, then a summary. Exits 0 only when everything matches (1: differences;
    /// 2: could not check). Writes nothing anywhere.
    Check {
        /// The source location.
        source: String,
        /// The destination location.
        destination: String,
        /// Also read both sides and compare the bytes of every object of the same size.
        #[arg(long)]
        download: bool,
        /// Objects compared at once with --download.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
        checkers: u32,
        /// Compare only names matching this glob (repeatable; as in `copy`).
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Leave out names matching this glob (repeatable).
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        #[command(flatten)]
        access: AccessFlags,
        /// Print one JSON object per object, then one with the summary.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job for good: its unfinished uploads are given up at the destination (S3
    /// multipart uploads aborted, GCS sessions cancelled) and `resume` leaves it alone. Objects
    /// already copied stay where they are.
    Cancel {
        /// The job to cancel (`blobway jobs` lists them).
        job: JobId,
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the engine as a service in the foreground, owning the state file: unfinished jobs
    /// resume, and every other command (the TUI, copy, jobs, pause, …) talks to it through a
    /// private Unix socket derived from the state file. SIGTERM or SIGINT stop it (work in
    /// flight gets a moment; the rest resumes on the next start). See assets/blobway.service.
    ///
    /// With a PostgreSQL state (--state postgres://…), each `serve` is one worker of the
    /// migration: run one per machine on the same database, and all of them move every job
    /// (`blobway workers` lists them). BLOBWAY_WORKER_NAME names a worker (default host:pid);
    /// BLOBWAY_WORKER_LEASE sets its lease in seconds (default 15): a worker that stops
    /// renewing it for that long loses its claims to the others, and records nothing more.
    /// The chunks of one big object move on every worker. A worker whose own credentials,
    /// disk or network fail steps aside from the job (quarantined) for
    /// BLOBWAY_WORKER_QUARANTINE seconds (default 30) and lets its claims go.
    /// BLOBWAY_FLEET_MAX_IN_FLIGHT=N caps the chunks in flight of the whole fleet (0 lifts it);
    /// concurrency and bandwidth caps set on any worker are followed by all. Workers hear
    /// each other's changes through LISTEN/NOTIFY and poll a count of changes besides;
    /// BLOBWAY_STATE_LISTEN=off stops listening (behind PgBouncer in transaction mode).
    /// See assets/kubernetes-workers.yaml.
    Serve {
        /// Also serve the HTTP API on this address, e.g. 127.0.0.1:7878 (beyond loopback only
        /// with --tls-cert and --tls-key). Every request needs `Authorization: Bearer <token>`:
        /// BLOBWAY_TOKEN, or a token generated into a file next to the state file (its path is
        /// printed).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Serve --listen over TLS with this certificate chain (PEM, leaf first).
        #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Started in the background by another command: leave its session, and stop once
        /// idle for a minute.
        #[arg(long, hide = true)]
        detached: bool,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Pause a job (or every job with --all) in the running daemon: no new chunk starts;
    /// chunks in flight finish. `blobway resume JOB` continues it.
    Pause {
        /// The job.
        job: Option<JobId>,
        /// Every job.
        #[arg(long, conflicts_with = "job")]
        all: bool,
    },
    /// Set the running daemon's concurrency: a fixed number of chunks in flight, or `auto`
    /// for the adaptive controller.
    SetConcurrency {
        /// A number from 1 to 4096, or `auto`.
        #[arg(value_name = "N|auto")]
        value: String,
    },
    /// Set the bandwidth cap: in the running daemon at once (within a second), or, when none
    /// runs, recorded in the state file for the next run. It is kept until set again. A
    /// --bwlimit flag overrides it for the run it starts; given to a command that hands its
    /// work to a running daemon, it sets that daemon's cap as this command does.
    SetBwlimit {
        /// A rate (`200MiB/s`), `off`, or a weekly timetable in local time, quoted:
        /// `"Mon-Fri 08:00,50MiB/s 19:00,off"`.
        #[arg(value_name = "RATE|off|TIMETABLE")]
        value: BwLimit,
    },
    /// Stop the daemon serving the state file (work in flight gets a moment; the rest
    /// resumes when it starts again).
    Stop,
    /// Report every object of JOB that is not done — key, size, state, error class, HTTP
    /// status, message, attempts, last attempt — as CSV (a table for a spreadsheet) or JSON
    /// (with the job's totals, and how many done objects each kind of verification covers:
    /// `source checksum` = the copied chunks' combined CRC-64 equals the source's own
    /// full-object checksum; `blobway crc` = blobway read and checksummed every byte and the
    /// destination checked each chunk; `size+version id` / `size+etag` = the stores copied the
    /// bytes and only the size and the source's version ID, or only its ETag, were checked).
    Report {
        /// The job (`blobway jobs` lists them).
        job: JobId,
        /// csv or json.
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
        /// Every object, done ones too, each with how it was verified.
        #[arg(long)]
        all: bool,
    },
    /// Copy generated sample files between two local folders through the same engine, over a
    /// simulated link, and watch it in the terminal UI.
    Demo {
        /// Where the demo keeps its files and its own state file.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Continue the previous demo run instead of starting over.
        #[arg(long)]
        keep: bool,
        /// Bandwidth of the simulated link, per second.
        #[arg(long, default_value = "32MiB", value_parser = parse_size_arg, value_name = "SIZE")]
        bandwidth: u64,
        /// Share (0 to 1) of uploads the simulated link fails; with chaos it also throttles
        /// (503) above 24 uploads in flight. Shows retries and the controller at work.
        #[arg(long, default_value_t = 0.0, value_parser = parse_ratio, value_name = "RATIO")]
        chaos: f64,
        /// Show headless progress instead of the terminal UI.
        #[arg(long)]
        headless: bool,
        /// With --headless: one JSON object per line.
        #[arg(long, requires = "headless")]
        json: bool,
        #[command(flatten)]
        tuning: Tuning,
    },
}

/// How `blobway report` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    Csv,
    Json,
}

/// Per-side AWS settings, for routes across two S3 accounts or servers.
#[derive(Args, Debug, Clone, Default)]
struct AccessFlags {
    /// AWS profile for an s3:// source: its credentials and region (from ~/.aws/config and
    /// ~/.aws/credentials) instead of the environment's.
    #[arg(long, value_name = "NAME")]
    source_profile: Option<String>,
    /// S3 endpoint URL for an s3:// source, instead of AWS_ENDPOINT_URL(_S3) or the profile's
    /// endpoint_url.
    #[arg(long, value_name = "URL")]
    source_endpoint: Option<String>,
    /// AWS profile for s3:// destinations.
    #[arg(long, value_name = "NAME")]
    dest_profile: Option<String>,
    /// Endpoint URL for s3:// and gs:// destinations (for GCS: a private or restricted
    /// Google endpoint; credentials still apply).
    #[arg(long, value_name = "URL")]
    dest_endpoint: Option<String>,
}

impl AccessFlags {
    /// The source side's profile and endpoint.
    fn source(&self) -> Access {
        Access {
            profile: self.source_profile.clone(),
            endpoint: self.source_endpoint.clone(),
        }
    }

    /// The destination side's profile and endpoint.
    fn destination(&self) -> Access {
        Access {
            profile: self.dest_profile.clone(),
            endpoint: self.dest_endpoint.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct Tuning {
    /// Fix the number of chunks (and small objects, and commits) in flight. Without it an
    /// adaptive controller decides, starting at 16: it halves on throttling or errors, and
    /// otherwise tracks the knee — raised while the stores keep up, eased when latency grows
    /// without throughput.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: Option<u32>,
    /// Lowest limit the adaptive controller may choose.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4096))]
    min_concurrency: u32,
    /// Highest limit the adaptive controller may choose.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_concurrency: u32,
    /// Most bytes of chunk buffers in memory at once.
    #[arg(long, default_value = "1GiB", value_parser = parse_size_arg, value_name = "SIZE")]
    max_memory: u64,
    /// Attempts per chunk before it is given up [default: 10]. A job keeps the value it was
    /// copied with.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_attempts: Option<u32>,
    /// Seconds a request may go without moving a byte before it is abandoned and retried
    /// (uploads also get the time their bytes need at 1 MiB/s).
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds, value_name = "SECONDS")]
    stall_timeout: f64,
    /// The checksum every upload carries for the store to verify on arrival: crc64
    /// (x-ms-content-crc64, cheap) or md5 (Content-MD5; Azurite verifies only this one)
    /// [default: crc64]. A job keeps the value it was copied with.
    #[arg(long, value_enum)]
    checksum: Option<ChecksumKind>,
    /// Cap the bytes per second chunks move (through blobway or store to store): a rate
    /// (`200MiB/s`), `off`, or a weekly timetable in local time, quoted:
    /// `"Mon-Fri 08:00,50MiB/s 19:00,off"` caps weekdays from 08:00 and lifts the cap from
    /// 19:00 (through the weekend, until Monday 08:00). Entries in an hour a clock change
    /// skips apply from the first minute after it. The cap starts fewer chunks rather than
    /// slowing them. Without it, the cap last set (`set-bwlimit`, the TUI's `B`) stands; a
    /// daemon already running takes it as its cap (and keeps it).
    #[arg(long, value_name = "RATE|off|TIMETABLE")]
    bwlimit: Option<BwLimit>,
}

impl Tuning {
    /// The flags that ask for these settings, for a daemon a command starts.
    fn as_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--min-concurrency={}", self.min_concurrency),
            format!("--max-concurrency={}", self.max_concurrency),
            format!("--max-memory={}", self.max_memory),
            format!("--stall-timeout={}", self.stall_timeout),
        ];
        if let Some(attempts) = self.max_attempts {
            args.push(format!("--max-attempts={attempts}"));
        }
        if let Some(name) = self
            .checksum
            .and_then(|c| clap::ValueEnum::to_possible_value(&c))
        {
            args.push(format!("--checksum={}", name.get_name()));
        }
        if let Some(fixed) = self.concurrency {
            args.push(format!("--concurrency={fixed}"));
        }
        if let Some(bwlimit) = &self.bwlimit {
            args.push(format!("--bwlimit={bwlimit}"));
        }
        args
    }

    /// Retry rules with the asked attempt limit.
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self
                .max_attempts
                .unwrap_or(RetryPolicy::default().max_attempts),
            ..RetryPolicy::default()
        }
    }

    fn stores(&self) -> Arc<DefaultStores> {
        Arc::new(DefaultStores {
            settings: StoreSettings {
                stall_timeout: Duration::from_secs_f64(self.stall_timeout),
            },
        })
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim_end_matches('s').parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!(
            "`{text}` is not a number of seconds above 0 (e.g. 30)"
        )),
    }
}

impl Tuning {
    /// The defaults, for commands that move nothing.
    fn parse_defaults() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            tuning: Tuning,
        }
        <Defaults as clap::Parser>::parse_from(["blobway"]).tuning
    }
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text)
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "`{text}` is not a ratio between 0 and 1 (e.g. 0.1)"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(failure) => {
            eprintln!(
                "error: {}",
                blobway::redact::redact(&format!("{:#}", failure.error))
            );
            ExitCode::from(failure.code)
        }
    }
}

struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn bad_input(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn state_failure(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 3,
        error: error.into(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let location = StateLocation::parse(&cli.state.clone().unwrap_or_else(StateDb::default_path));
    // Where this state's daemon socket, token and log are found (the file itself, or a path
    // standing for a database).
    let state_path = location.anchor();
    location.prepare_anchor().map_err(|e| {
        state_failure(anyhow::anyhow!(
            "cannot create {}: {e}",
            state_path.parent().unwrap_or(&state_path).display()
        ))
    })?;
    match cli.command {
        None => {
            let client = daemon_for_work(&location, cli.no_daemon, &cli.tuning).await?;
            if let Some(client) = client {
                // Attached: `q` detaches; the daemon keeps the jobs running.
                let engine = blobway::daemon::attach::attach(client.clone());
                let options = AppOptions {
                    browse_root: "s3://".into(),
                    local_destination: None,
                    chunk_size: 16 << 20,
                    attached: true,
                };
                let exit = blobway::tui::run(engine, options, Vec::new())
                    .await
                    .map_err(state_failure)?;
                if exit == blobway::tui::Exit::Stop {
                    stop_daemon(&client).await?;
                    eprintln!("the daemon stopped; `blobway resume` (or any command) goes on");
                } else {
                    eprintln!(
                        "detached; the daemon keeps running (`Q` or `blobway stop` stops it)"
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let db = open_unserved(&location).await?;
            let options = AppOptions {
                browse_root: "s3://".into(),
                local_destination: None,
                chunk_size: 16 << 20,
                attached: false,
            };
            let start = vec![Command::Load {
                job: None,
                include_paused: true,
            }];
            run_tui(db, &cli.tuning, cli.tuning.stores(), options, start).await
        }
        Some(Commands::Jobs { json }) => {
            if let Some(client) = daemon(&state_path).await? {
                let views = daemon_jobs(&client).await?;
                print_jobs(&location, views, json, false);
                return Ok(ExitCode::SUCCESS);
            }
            let db = location.open_to_read().map_err(state_failure)?;
            // Jobs of a database another blobway may serve are as it recorded them; of a file
            // nobody serves, they are stopped.
            list_jobs(&db, json, !location.is_shared()).map_err(state_failure)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::Workers { json }) => {
            let db = location.open_to_read().map_err(state_failure)?;
            let Some(workers) = db.workers().map_err(state_failure)? else {
                eprintln!(
                    "{location} is a state file of one machine: workers share a PostgreSQL state \
                     (--state postgres://user@host/db, or BLOBWAY_STATE)"
                );
                return Ok(ExitCode::from(2));
            };
            print_workers(&location, &workers, json);
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::Serve {
            listen,
            tls_cert,
            tls_key,
            detached,
            tuning,
        }) => {
            let _log = init_logging_at(&state_path);
            blobway::daemon::serve(blobway::daemon::ServeOptions {
                state: location,
                listen,
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| blobway::daemon::tls::TlsFiles { cert, key }),
                config: engine_config(&tuning)?,
                stores: tuning.stores(),
                detached,
            })
            .await
            .map_err(state_failure)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::Pause { job, all }) => {
            let client = require_daemon(&state_path).await?;
            let ids = match (job, all) {
                (Some(id), _) => vec![id],
                (None, true) => client_job_ids(&client).await?,
                (None, false) => {
                    return Err(bad_input(anyhow::anyhow!(
                        "name the job to pause (`blobway jobs` lists them), or --all"
                    )));
                }
            };
            for id in ids {
                client
                    .request(Method::POST, &format!("/v1/jobs/{id}/pause"), None::<&()>)
                    .await
                    .and_then(|a| a.ok())
                    .map_err(bad_input)?;
                println!("job {id}: paused");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::SetConcurrency { value }) => {
            let asked = match value.as_str() {
                "auto" => api::Concurrency::Auto { auto: true },
                n => match n.parse::<u32>() {
                    Ok(limit) if (1..=4096).contains(&limit) => api::Concurrency::Fixed { limit },
                    _ => {
                        return Err(bad_input(anyhow::anyhow!(
                            "`{value}` is neither a number from 1 to 4096 nor `auto`"
                        )));
                    }
                },
            };
            let client = require_daemon(&state_path).await?;
            client
                .request(Method::PUT, "/v1/concurrency", Some(&asked))
                .await
                .and_then(|a| a.ok())
                .map_err(bad_input)?;
            println!("concurrency: {value}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::SetBwlimit { value }) => {
            match daemon(&state_path).await? {
                Some(client) => {
                    client
                        .request(
                            Method::PUT,
                            "/v1/bwlimit",
                            Some(&api::BwLimitAsked {
                                bwlimit: value.clone(),
                            }),
                        )
                        .await
                        .and_then(|a| a.ok())
                        .map_err(bad_input)?;
                    println!("bandwidth cap: {value}");
                }
                None => {
                    if !location.may_exist() {
                        return Err(bad_input(anyhow::anyhow!(
                            "no state file at {}: nothing runs there yet; give the cap to the \
                             first run with --bwlimit (or name the state file with --state)",
                            location
                        )));
                    }
                    let db = location.open().map_err(|e| {
                        state_failure(anyhow::anyhow!(
                            "{e:#}; if a copy runs in the foreground on it, set the cap in its \
                             terminal (B) or run it with --bwlimit"
                        ))
                    })?;
                    db.apply(&[blobway::state::Write::Setting(
                        BwLimit::SETTING,
                        value.text().to_string(),
                    )])
                    .map_err(state_failure)?;
                    println!(
                        "bandwidth cap: {value} (recorded in {}; no daemon runs, the next run \
                         uses it)",
                        location
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::Stop) => {
            let Some(client) = daemon(&state_path).await? else {
                println!("no daemon serves {}", location);
                return Ok(ExitCode::SUCCESS);
            };
            stop_daemon(&client).await?;
            println!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::Report { job, format, all }) => {
            if let Some(client) = daemon(&state_path).await? {
                let format = match format {
                    ReportFormat::Csv => "csv",
                    ReportFormat::Json => "json",
                };
                let answer = client
                    .request(
                        Method::GET,
                        &format!("/v1/jobs/{job}/report?format={format}&all={all}"),
                        None::<&()>,
                    )
                    .await
                    .map_err(state_failure)?;
                answer.ok().map_err(bad_input)?;
                print!("{}", String::from_utf8_lossy(&answer.body));
                if format == "json" {
                    println!();
                }
                return Ok(ExitCode::SUCCESS);
            }
            let db = location.open_to_read().map_err(state_failure)?;
            let Some(snapshot) = db.load_job(job).map_err(state_failure)? else {
                return Err(bad_input(anyhow::anyhow!(
                    "there is no job {job} in {}; `blobway jobs` lists them",
                    location
                )));
            };
            let report = blobway::state::report::Report::of(&snapshot, all);
            match format {
                ReportFormat::Csv => print!("{}", report.to_csv().map_err(state_failure)?),
                ReportFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(state_failure)?
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Commands::Copy {
            source,
            destination,
            to,
            tuning,
            json,
            chunk_size,
            include,
            exclude,
            dry_run,
            access,
            invalid_metadata,
            if_exists,
            transfer,
            access_tier,
            storage_class,
            copy_tags,
            detach,
        }) => {
            check_tuning(&tuning, chunk_size)?;
            let destinations: Vec<String> = destination.into_iter().chain(to).collect();
            if destinations.is_empty() {
                return Err(bad_input(anyhow::anyhow!(
                    "name a destination: `blobway copy SRC DST` (more with --to DST)"
                )));
            }
            for destination in &destinations {
                blobway::location::parse_route(&source, destination).map_err(bad_input)?;
            }
            blobway::engine::filter::Filter::new(&include, &exclude).map_err(bad_input)?;
            let options = JobOptions {
                chunk_size,
                include,
                exclude,
                source_access: access.source(),
                dest_access: access.destination(),
                invalid_metadata,
                if_exists,
                checksum: tuning.checksum,
                max_attempts: tuning.max_attempts,
                transfer,
                access_tier,
                storage_class,
                copy_tags,
            };
            if dry_run {
                return dry_run_plans(&location, &tuning, json, &source, &destinations, options)
                    .await;
            }
            if detach {
                let client = daemon_for_work(&location, false, &tuning)
                    .await?
                    .ok_or_else(|| state_failure(anyhow::anyhow!("no daemon could be started")))?;
                let accepted = submit(&client, &source, &destinations, options).await?;
                for job in accepted {
                    if json {
                        println!("{}", serde_json::to_string(&job).unwrap_or_default());
                    } else {
                        println!("job {}: {} → {}", job.job, job.source, job.destination);
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let client = daemon_for_work(&location, cli.no_daemon, &tuning).await?;
            if let Some(client) = client {
                return follow_in_daemon(client, &source, &destinations, options, json).await;
            }
            let db = open_unserved(&location).await?;
            let commands = destinations
                .into_iter()
                .map(|destination| Command::Enqueue {
                    source: source.clone(),
                    destination,
                    options: options.clone(),
                })
                .collect();
            run_headless(db, &tuning, json, tuning.stores(), commands).await
        }
        Some(Commands::Resume { job, tuning, json }) => {
            let client = daemon_for_work(&location, cli.no_daemon, &tuning).await?;
            if let Some(client) = client {
                return resume_in_daemon(client, job, json).await;
            }
            let db = open_unserved(&location).await?;
            if let Some(id) = job
                && db.job(id).map_err(state_failure)?.is_none()
            {
                return Err(bad_input(anyhow::anyhow!(
                    "there is no job {id} in {}; `blobway jobs` lists them",
                    location
                )));
            }
            if job.is_none() {
                let paused: Vec<(JobId, String, String)> = db
                    .jobs()
                    .map_err(state_failure)?
                    .into_iter()
                    .filter(|j| j.state == JobState::Paused)
                    .map(|j| (j.id, j.source, j.destination))
                    .collect();
                say_left_paused(&paused);
            }
            let command = Command::Load {
                job,
                include_paused: job.is_some(),
            };
            run_headless(db, &tuning, json, tuning.stores(), vec![command]).await
        }
        Some(Commands::Check {
            source,
            destination,
            download,
            checkers,
            include,
            exclude,
            access,
            json,
        }) => {
            let (src, dst) =
                blobway::location::parse_route(&source, &destination).map_err(bad_input)?;
            let request = blobway::engine::check::CheckRequest {
                source: src,
                destination: dst,
                source_access: access.source(),
                dest_access: access.destination(),
                include,
                exclude,
                download,
                checkers: checkers as usize,
            };
            run_check(&request, json).await
        }
        Some(Commands::Cancel { job, json }) => {
            if let Some(client) = daemon(&state_path).await? {
                client
                    .request(Method::POST, &format!("/v1/jobs/{job}/cancel"), None::<&()>)
                    .await
                    .and_then(|a| a.ok())
                    .map_err(bad_input)?;
                println!("job {job}: cancelled");
                return Ok(ExitCode::SUCCESS);
            }
            let db = location.open().map_err(state_failure)?;
            if db.job(job).map_err(state_failure)?.is_none() {
                return Err(bad_input(anyhow::anyhow!(
                    "there is no job {job} in {}; `blobway jobs` lists them",
                    location
                )));
            }
            let tuning = Tuning::parse_defaults();
            run_headless(
                db,
                &tuning,
                json,
                tuning.stores(),
                vec![Command::Cancel(job)],
            )
            .await
        }
        Some(Commands::Demo {
            dir,
            keep,
            bandwidth,
            chaos,
            headless,
            json,
            tuning,
        }) => {
            let layout = blobway::demo::DemoLayout::under(
                &dir.unwrap_or_else(blobway::demo::DemoLayout::default_root),
            );
            eprintln!("preparing sample files in {} …", layout.source.display());
            layout.prepare(!keep).map_err(bad_input)?;
            let state = StateLocation::parse(&cli.state.unwrap_or_else(|| layout.state.clone()));
            let db = open_unserved(&state).await?;
            let source = format!("{}/", layout.source.display());
            let destination = format!("{}/", layout.destination.display());
            // Kept and paused, the demo stays paused: its job is loaded, not planned again.
            let paused = if keep {
                paused_job(&db, &source, &destination).map_err(state_failure)?
            } else {
                None
            };
            if let (Some(job), true) = (paused, headless) {
                // Nothing would move, and nothing would end the run.
                eprintln!(
                    "the demo's job {job} is paused: `blobway demo --keep` (the terminal UI, key r) \
                     or `blobway --state {} resume {job}` goes on",
                    state
                );
                return Ok(ExitCode::SUCCESS);
            }
            let command = match paused {
                // Not named: a named job would be resumed.
                Some(_) => Command::Load {
                    job: None,
                    include_paused: true,
                },
                None => Command::Enqueue {
                    source,
                    destination,
                    options: JobOptions::with_chunk_size(blobway::demo::DEMO_CHUNK_SIZE),
                },
            };
            let stores = Arc::new(DemoStores {
                link: LinkSettings {
                    chaos,
                    throttle_above: (chaos > 0.0).then_some(24),
                    seed: rand::random(),
                    ..LinkSettings::new(bandwidth as f64, Duration::from_millis(15))
                },
            });
            let code = if headless {
                run_headless(db, &tuning, json, stores, vec![command]).await?
            } else {
                let options = AppOptions {
                    browse_root: format!("{}/", layout.source.display()),
                    local_destination: Some(layout.destination.display().to_string()),
                    chunk_size: blobway::demo::DEMO_CHUNK_SIZE,
                    attached: false,
                };
                run_tui(db, &tuning, stores, options, vec![command]).await?
            };
            eprintln!("the copies are in {}", layout.destination.display());
            Ok(code)
        }
    }
}

fn check_tuning(tuning: &Tuning, chunk_size: u64) -> Result<(), Failure> {
    if chunk_size == 0 {
        return Err(bad_input(anyhow::anyhow!(
            "--chunk-size must be at least 1 byte (e.g. 8MiB)"
        )));
    }
    if chunk_size > tuning.max_memory {
        return Err(bad_input(anyhow::anyhow!(
            "--chunk-size {} is larger than --max-memory {}; one chunk must fit in memory",
            human(chunk_size),
            human(tuning.max_memory)
        )));
    }
    Ok(())
}

/// The engine settings the tuning flags ask for.
fn engine_config(tuning: &Tuning) -> Result<EngineConfig, Failure> {
    let (min, max) = (tuning.min_concurrency, tuning.max_concurrency);
    if min > max {
        return Err(bad_input(anyhow::anyhow!(
            "--min-concurrency {min} is above --max-concurrency {max}"
        )));
    }
    let defaults = ControllerConfig::default();
    let concurrency = match tuning.concurrency {
        Some(fixed) => ControllerConfig {
            initial: fixed,
            min: 1,
            max: max.max(fixed),
            ..defaults
        },
        None => ControllerConfig {
            initial: defaults.initial.clamp(min, max),
            min,
            max,
            ..defaults
        },
    };
    Ok(EngineConfig {
        concurrency,
        adaptive: tuning.concurrency.is_none(),
        max_memory: tuning.max_memory,
        retry: tuning.retry(),
        checksum: tuning.checksum.unwrap_or_default(),
        exit_when_idle: true,
        bwlimit: tuning.bwlimit.clone(),
    })
}

/// Runs the terminal UI over an engine that stays up until the operator quits.
async fn run_tui(
    db: StateDb,
    tuning: &Tuning,
    stores: Arc<dyn StoreFactory>,
    options: AppOptions,
    start: Vec<Command>,
) -> Result<ExitCode, Failure> {
    let config = EngineConfig {
        exit_when_idle: false,
        ..engine_config(tuning)?
    };
    let log = log_path(&db);
    let _log = init_logging(&db);
    let engine = Engine::start(db, config, stores).map_err(state_failure)?;
    let result = blobway::tui::run(engine, options, start).await;
    if let Some(log) = log {
        eprintln!("log: {}", log.display());
    }
    result.map_err(state_failure)?;
    Ok(ExitCode::SUCCESS)
}

/// `blobway check`: one line per object as it is judged, then the summary.
async fn run_check(
    request: &blobway::engine::check::CheckRequest,
    json: bool,
) -> Result<ExitCode, Failure> {
    let stores = DefaultStores::default();
    let summary = blobway::engine::check::check(&stores, request, |verdict| {
        if json {
            println!("{}", serde_json::to_string(verdict).unwrap_or_default());
        } else {
            println!("{}", verdict.line());
        }
    })
    .await
    .map_err(bad_input)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "summary": summary, "all_match": summary.all_match() })
        );
    }
    eprintln!("check: {}", summary.sentence());
    Ok(if summary.all_match() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Asks the daemon to stop and waits until its process is gone (and with it its hold on the
/// state file, so the next command can open it).
async fn stop_daemon(client: &Client) -> Result<(), Failure> {
    let pid = client.version().await.map_err(state_failure)?.pid;
    client
        .request(Method::POST, "/v1/stop", None::<&()>)
        .await
        .and_then(|a| a.ok())
        .map_err(state_failure)?;
    // Gone, or a zombie its parent has not reaped yet (it holds nothing any more).
    let gone = || {
        let exited = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
            == Err(nix::errno::Errno::ESRCH);
        exited
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    after_name.split_whitespace().next().map(|s| s == "Z")
                })
                .unwrap_or(false)
    };
    for _ in 0..600 {
        if gone() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(state_failure(anyhow::anyhow!(
        "the daemon is still stopping (its log says why)"
    )))
}

/// Runs an engine until its work is done, showing progress without a UI.
async fn run_headless(
    db: StateDb,
    tuning: &Tuning,
    json: bool,
    stores: Arc<dyn StoreFactory>,
    commands: Vec<Command>,
) -> Result<ExitCode, Failure> {
    let config = engine_config(tuning)?;
    let _log = init_logging(&db);
    let engine = Engine::start(db, config, stores).map_err(state_failure)?;
    for command in commands {
        engine.handle.send(command).await.map_err(state_failure)?;
    }
    let output = output_for(json);
    let report = headless::follow(engine, output)
        .await
        .map_err(state_failure)?;
    headless::print_summary(&report, output);
    Ok(exit_code(&report))
}

/// How headless progress is shown.
fn output_for(json: bool) -> Output {
    if json {
        Output::Json
    } else if std::io::stderr().is_terminal() {
        Output::Terminal
    } else {
        Output::Plain
    }
}

/// The exit status a finished run reports (see `--help`).
fn exit_code(report: &headless::Report) -> ExitCode {
    if report.succeeded() {
        ExitCode::SUCCESS
    } else if report.fatal.is_some() {
        ExitCode::from(3)
    } else if !report.plan_failures.is_empty() && report.jobs.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// Hands routes to the daemon; returns the jobs they run as. Local paths go absolute: a
/// relative one means this shell's folder, not the daemon's.
async fn submit(
    client: &Client,
    source: &str,
    destinations: &[String],
    options: JobOptions,
) -> Result<Vec<api::Accepted>, Failure> {
    let mut routes = Vec::new();
    for destination in destinations {
        let (src, dst) = blobway::location::parse_route(source, destination).map_err(bad_input)?;
        routes.push((src.to_string(), dst.to_string()));
    }
    let new = api::NewJobs {
        source: routes[0].0.clone(),
        destinations: routes.into_iter().map(|(_, dst)| dst).collect(),
        options: Some(options),
    };
    client
        .request(Method::POST, "/v1/jobs", Some(&new))
        .await
        .map_err(state_failure)?
        .json()
        .map_err(bad_input)
}

/// The paused job of the route `source` → `destination`, if the state file has one.
fn paused_job(
    db: &blobway::state::StateDb,
    source: &str,
    destination: &str,
) -> Result<Option<JobId>, blobway::state::StateError> {
    let Ok((src, dst)) = blobway::location::parse_route(source, destination) else {
        return Ok(None);
    };
    Ok(db
        .job_for_route(&src.to_string(), &dst.to_string())?
        .filter(|j| j.state == JobState::Paused)
        .map(|j| j.id))
}

/// Tells the operator which paused jobs `resume` leaves paused, and how to resume them.
fn say_left_paused(paused: &[(JobId, String, String)]) {
    for (id, source, destination) in paused {
        eprintln!(
            "job {id} ({source} → {destination}) stays paused; `blobway resume {id}` resumes it"
        );
    }
}

/// Asks the daemon to continue `job` (or every unfinished job but the paused) and follows
/// them here until they finish.
async fn resume_in_daemon(
    client: Client,
    job: Option<JobId>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let mut engine = blobway::daemon::attach::attach(client.clone());
    connected(&mut engine).await?;
    let views = daemon_jobs(&client).await?;
    // A job the operator paused stays paused unless it is named (as without a daemon).
    let (wanted, paused): (Vec<_>, Vec<_>) = views
        .into_iter()
        .filter(|v| match job {
            Some(id) => v.id == id,
            None => !v.state.is_finished() || v.state == JobState::Failed,
        })
        .partition(|v| job.is_some() || v.state != JobState::Paused);
    say_left_paused(
        &paused
            .into_iter()
            .map(|v| (v.id, v.source, v.destination))
            .collect::<Vec<_>>(),
    );
    if let Some(id) = job
        && wanted.is_empty()
    {
        return Err(bad_input(anyhow::anyhow!(
            "there is no job {id}; `blobway jobs` lists them"
        )));
    }
    let mut accepted = Vec::new();
    for view in wanted {
        client
            .request(
                Method::POST,
                &format!("/v1/jobs/{}/resume", view.id),
                None::<&()>,
            )
            .await
            .and_then(|a| a.ok())
            .map_err(bad_input)?;
        accepted.push(api::Accepted {
            job: view.id,
            source: view.source,
            destination: view.destination,
        });
    }
    follow_accepted(engine, &accepted, json).await
}

/// Waits until an attached engine hears the daemon, so nothing it says next is missed.
async fn connected(engine: &mut blobway::engine::Engine) -> Result<(), Failure> {
    let heard = tokio::time::timeout(Duration::from_secs(10), engine.snapshots.changed());
    match heard.await {
        Ok(Ok(())) => Ok(()),
        _ => Err(state_failure(anyhow::anyhow!(
            "the daemon serving this state file does not answer its event stream"
        ))),
    }
}

/// Follows jobs the daemon runs until they finish; Ctrl-C stops only the following.
async fn follow_accepted(
    engine: blobway::engine::Engine,
    accepted: &[api::Accepted],
    json: bool,
) -> Result<ExitCode, Failure> {
    let output = output_for(json);
    if output != Output::Json {
        for job in accepted {
            eprintln!(
                "job {}: {} → {} (run by the daemon; Ctrl-C stops following, not copying)",
                job.job, job.source, job.destination
            );
        }
    }
    let engine = blobway::daemon::attach::follow(engine, accepted);
    let report = headless::follow_saying(
        engine,
        output,
        "stopped following; the daemon keeps copying (`blobway jobs` shows it, `blobway pause \
         JOB` pauses it)",
    )
    .await
    .map_err(state_failure)?;
    headless::print_summary(&report, output);
    Ok(exit_code(&report))
}

/// Runs a copy in the daemon and follows it here until its jobs finish; Ctrl-C stops only
/// the following.
async fn follow_in_daemon(
    client: Client,
    source: &str,
    destinations: &[String],
    options: JobOptions,
    json: bool,
) -> Result<ExitCode, Failure> {
    let mut engine = blobway::daemon::attach::attach(client.clone());
    // Listening before asking, so no event of the new jobs is missed.
    connected(&mut engine).await?;
    let accepted = submit(&client, source, destinations, options).await?;
    follow_accepted(engine, &accepted, json).await
}

/// Plans each route and prints the plans; copies, creates and records nothing. The state file
/// is read, when there is one, so objects done in an earlier run show as such.
async fn dry_run_plans(
    state: &StateLocation,
    tuning: &Tuning,
    json: bool,
    source: &str,
    destinations: &[String],
    options: JobOptions,
) -> Result<ExitCode, Failure> {
    let db = if state.may_exist() {
        match state.open_to_read() {
            Ok(db) => Some(db),
            Err(e) => {
                eprintln!("note: {e}; the plan ignores earlier runs");
                None
            }
        }
    } else {
        None
    };
    let stores = tuning.stores();
    for destination in destinations {
        let (src, dst) = blobway::location::parse_route(source, destination).map_err(bad_input)?;
        let plan = async {
            let source_store = stores.source(&src, &options.source_access).await?;
            let sink = stores.sink(&dst, &options.dest_access).await?;
            let request = blobway::engine::plan::PlanRequest {
                new_job_id: 0,
                source: &src,
                destination: &dst,
                options: options.clone(),
                max_memory: tuning.max_memory,
                retry: tuning.retry(),
                dry_run: true,
            };
            blobway::engine::plan::plan_job(
                db.as_ref(),
                request,
                source_store.as_ref(),
                sink.as_ref(),
            )
            .await
        }
        .await
        .map_err(bad_input)?;
        headless::print_dry_run(&src.to_string(), &dst.to_string(), &plan, json);
    }
    Ok(ExitCode::SUCCESS)
}

/// The log file: `blobway.log` next to the state file.
fn log_path(db: &StateDb) -> Option<PathBuf> {
    Some(db.anchor().parent()?.join("blobway.log"))
}

/// Sends logs to the log file; returns the guard that flushes it.
fn init_logging(db: &StateDb) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    init_logging_at(&db.anchor())
}

/// Sends logs to `blobway.log` next to `state`.
fn init_logging_at(state: &std::path::Path) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let path = state.parent()?.join("blobway.log");
    let appender = tracing_appender::rolling::never(path.parent()?, "blobway.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLOBWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(blobway::redact::RedactingWriter(writer))
        .with_ansi(false)
        .try_init()
        .ok()?;
    Some(guard)
}

fn list_jobs(db: &StateDb, json: bool, stopped: bool) -> anyhow::Result<()> {
    let mut views = Vec::new();
    for job in db.jobs()? {
        let progress = db.progress(job.id)?;
        if json {
            // The whole record (options, planned) from the state file.
            println!(
                "{}",
                serde_json::json!({ "job": job, "progress": progress })
            );
            continue;
        }
        views.push(JobView::recorded(job, progress));
    }
    if !json {
        // `stopped`: this process holds the state file, so no other blobway runs the jobs and
        // a job recorded RUNNING was interrupted (a shared database's may run elsewhere).
        print_jobs(&db.path().display(), views, false, stopped);
    }
    Ok(())
}

/// Prints the workers of a shared state as a table or JSON lines.
fn print_workers(
    state: &dyn std::fmt::Display,
    workers: &[blobway::state::lease::WorkerRecord],
    json: bool,
) {
    if json {
        for worker in workers {
            println!("{}", serde_json::json!(worker));
        }
        return;
    }
    if workers.is_empty() {
        println!("no workers have joined {state}");
        return;
    }
    println!(
        "{:<24}  {:<16}  {:<11}  {:>9}  {:>9}  {:>8}  {:>10}  {:>7}",
        "NAME", "HOST", "STATE", "HEARTBEAT", "IN FLIGHT", "CHUNKS", "BYTES", "CLAIMED"
    );
    for w in workers {
        println!(
            "{:<24}  {:<16}  {:<11}  {:>9}  {:>9}  {:>8}  {:>10}  {:>7}",
            w.name,
            w.host,
            w.state,
            format!("{:.0} s ago", w.heartbeat_age_s.max(0.0)),
            w.in_flight,
            w.chunks_moved,
            blobway::size::human(u64::try_from(w.bytes_moved).unwrap_or(0)),
            w.claimed
        );
    }
    for w in workers {
        if let Some(reason) = &w.quarantine {
            println!("{} stepped aside: {reason}", w.name);
        }
    }
}

/// Prints jobs as a table or JSON lines; `stopped` shows RUNNING as STOPPED (nothing runs
/// them).
fn print_jobs(state: &dyn std::fmt::Display, jobs: Vec<JobView>, json: bool, stopped: bool) {
    if jobs.is_empty() && !json {
        println!("no jobs in {state}");
        return;
    }
    if !json {
        println!(
            "{:>4}  {:<9}  {:>13}  {:>21}  ROUTE",
            "JOB", "STATE", "OBJECTS", "BYTES"
        );
    }
    for job in jobs {
        let p = job.progress;
        if json {
            println!("{}", serde_json::json!({ "job": job, "progress": p }));
            continue;
        }
        let objects = format!("{}/{}", p.files_done + p.files_skipped, p.files_total);
        let bytes = format!("{}/{}", human(p.bytes_done), human(p.bytes_total));
        let state = match job.state {
            JobState::Running if stopped => "STOPPED",
            other => other.name(),
        };
        println!(
            "{:>4}  {:<9}  {:>13}  {:>21}  {} → {}",
            job.id, state, objects, bytes, job.source, job.destination
        );
        if let Some(error) = &job.error {
            println!("      {error}");
        }
    }
}

/// The daemon a command that runs work uses: the one serving `state`, started in the
/// background (with `tuning`) when none runs — unless `--no-daemon`, which starts none but
/// still uses one that runs (the state file is its).
async fn daemon_for_work(
    state: &StateLocation,
    no_daemon: bool,
    tuning: &Tuning,
) -> Result<Option<Client>, Failure> {
    let Some(running) = daemon(&state.anchor()).await? else {
        if no_daemon {
            return Ok(None);
        }
        // A database that does not answer, refuses the login or is newer is said here, in
        // its own words, not as a daemon that exited.
        if state.is_shared() {
            drop(state.open().map_err(state_failure)?);
        }
        // A daemon this command starts takes its tuning flags.
        return Client::find_or_start(state, &tuning.as_args())
            .await
            .map(Some)
            .map_err(state_failure);
    };
    // One already running keeps its own, except a concurrency asked for now.
    if let Some(limit) = tuning.concurrency {
        running
            .request(
                Method::PUT,
                "/v1/concurrency",
                Some(&serde_json::json!({ "limit": limit })),
            )
            .await
            .and_then(|a| a.ok())
            .map_err(state_failure)?;
        eprintln!("the running daemon now keeps {limit} in flight");
    }
    // And a bandwidth cap asked for now (the daemon keeps it, as `set-bwlimit` would).
    if let Some(bwlimit) = &tuning.bwlimit {
        running
            .request(
                Method::PUT,
                "/v1/bwlimit",
                Some(&api::BwLimitAsked {
                    bwlimit: bwlimit.clone(),
                }),
            )
            .await
            .and_then(|a| a.ok())
            .map_err(state_failure)?;
        eprintln!("the running daemon's bandwidth cap is now {bwlimit} (kept until set again)");
    }
    Ok(Some(running))
}

/// Every job the daemon knows (up to a thousand).
async fn daemon_jobs(client: &Client) -> Result<Vec<JobView>, Failure> {
    let page: serde_json::Value = client
        .request(Method::GET, "/v1/jobs?limit=1000", None::<&()>)
        .await
        .and_then(|a| a.json())
        .map_err(state_failure)?;
    serde_json::from_value(page["jobs"].clone()).map_err(state_failure)
}

/// The daemon serving `state`, if one runs.
async fn daemon(state: &std::path::Path) -> Result<Option<Client>, Failure> {
    Client::find(state).await.map_err(state_failure)
}

/// The daemon serving `state`; a command that needs one says how to start it.
async fn require_daemon(state: &std::path::Path) -> Result<Client, Failure> {
    daemon(state).await?.ok_or_else(|| {
        bad_input(anyhow::anyhow!(
            "no daemon serves {}: start one with `blobway serve` (or `blobway copy --detach`)",
            state.display()
        ))
    })
}

/// The IDs of the daemon's unfinished jobs.
async fn client_job_ids(client: &Client) -> Result<Vec<JobId>, Failure> {
    let views = daemon_jobs(client).await?;
    Ok(views
        .into_iter()
        .filter(|v| !v.state.is_finished())
        .map(|v| v.id)
        .collect())
}

/// Opens the state file for an engine in this process; a daemon serving it is named, with
/// what to do instead.
async fn open_unserved(state: &StateLocation) -> Result<StateDb, Failure> {
    if let Some(client) = daemon(&state.anchor()).await? {
        let pid = client.version().await.map(|v| v.pid).unwrap_or_default();
        return Err(state_failure(anyhow::anyhow!(
            "the daemon (pid {pid}) serves {state}: hand it work with `blobway copy --detach`, \
             watch it with `blobway jobs`, or stop it with `blobway stop`"
        )));
    }
    state.open().map_err(state_failure)
}
