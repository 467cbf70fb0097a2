//! The TUI's state and its pure update functions: a key becomes an [`Action`], an action
//! changes the state and returns the engine [`Command`]s to send. Engine events and snapshots
//! update the state the same way. Nothing here draws or waits, so every path is testable
//! without a terminal.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use ratatui::crossterm::event::KeyEvent;
use tui_input::Input;
use tui_input::backend::crossterm::EventHandler;

use super::keys::{self, Action, Context, Key};
use crate::engine::bwlimit::BwLimit;
use crate::engine::snapshot::{self, FileView, JobView, ObjectQuery, Selection, Snapshot};
use crate::engine::{Command, Event};
use crate::state::{ChunkState, FileState, JobId, JobOptions};
use crate::store::Page;

/// The main screens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// Every job.
    Jobs,
    /// One job: objects, heat-map, graphs.
    Detail,
    /// Buckets, prefixes and objects.
    Browser,
}

/// Which half of the detail screen has the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// The objects list.
    Files,
    /// The chunk heat-map.
    HeatMap,
}

/// A window over the current screen.
#[derive(Clone, Debug)]
pub enum Popup {
    /// The key help, scrolled down this many lines.
    Help(u16),
    /// One chunk in full.
    Inspector,
    /// Asks for the destination of the marked entries.
    Destination(Input),
    /// Filters the browser listing.
    Filter(Input),
    /// Searches the job's objects by key.
    Search(Input),
    /// Asks for a location to browse.
    GoTo(Input),
    /// Asks for the bandwidth cap.
    BwLimit(Input),
    /// Asks before cancelling a job.
    ConfirmCancel(JobId),
    /// Asks before stopping the daemon (or the in-process engine).
    ConfirmStop,
}

/// One entry of a browser listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Shown name (relative to the listed location; directories end in `/`).
    pub name: String,
    /// Full location, e.g. `s3://bucket/photos/2024/`.
    pub location: String,
    /// Size, for objects.
    pub size: Option<u64>,
    /// Modification time (Unix seconds), for objects.
    pub modified: Option<i64>,
}

impl Entry {
    /// True for buckets, containers and prefixes.
    pub fn is_dir(&self) -> bool {
        self.name.ends_with('/')
    }
}

/// The browser's state.
#[derive(Clone, Debug, Default)]
pub struct BrowserState {
    /// The listed location.
    pub location: String,
    /// Its entries: directories first, then objects.
    pub entries: Vec<Entry>,
    /// Cursor over the filtered entries.
    pub cursor: usize,
    /// Marked entries' locations (marks belong to the listed folder; moving clears them).
    pub marked: BTreeSet<String>,
    /// Where a range started (`v`): the entry's location.
    pub anchor: Option<String>,
    /// The entry to put the cursor on when the listing comes (the folder just left).
    pub return_to: Option<String>,
    /// Case-insensitive filter on names.
    pub filter: String,
    /// The listing request in progress.
    pub request: u64,
    /// True while pages are still coming.
    pub loading: bool,
    /// Why the listing failed.
    pub error: Option<String>,
}

impl BrowserState {
    /// The entries that pass the filter.
    pub fn visible(&self) -> Vec<&Entry> {
        let filter = self.filter.to_lowercase();
        self.entries
            .iter()
            .filter(|e| filter.is_empty() || e.name.to_lowercase().contains(&filter))
            .collect()
    }

    /// Where entries' keys are rooted: `scheme://container/` for clouds, the directory for
    /// local paths, empty at the bucket/container level.
    fn base(&self) -> String {
        if is_root(&self.location) {
            self.location.clone()
        } else if let Some((scheme, rest)) = self.location.split_once("://")
            && scheme != "file"
        {
            let container = rest.split('/').next().unwrap_or_default();
            format!("{scheme}://{container}/")
        } else {
            self.location.clone()
        }
    }

    /// The key prefix listed, relative to [`Self::base`].
    fn prefix(&self) -> String {
        self.location
            .strip_prefix(&self.base())
            .unwrap_or_default()
            .to_string()
    }
}

fn is_root(location: &str) -> bool {
    location == "s3://" || location == "az://"
}

/// The location one level up.
pub fn parent(location: &str) -> String {
    if is_root(location) {
        return location.to_string();
    }
    let trimmed = location.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) if trimmed[..i].ends_with(':') || trimmed[..i].ends_with(":/") => {
            // "s3://bucket" → "s3://"
            trimmed[..=i].to_string()
        }
        Some(i) => format!("{}/", &trimmed[..i]),
        None => "/".into(),
    }
}

/// The detail screen's state.
#[derive(Clone, Debug)]
pub struct DetailState {
    /// The job shown.
    pub job: JobId,
    /// Which of its objects are listed, from which index.
    pub objects: ObjectQuery,
    /// Where the pages before this one started, to page back.
    pub pages: Vec<u32>,
    /// Cursor over the listed objects.
    pub file_cursor: usize,
    /// Which half has the keys.
    pub focus: Focus,
    /// The chunk under the heat-map cursor.
    pub chunk_cursor: u32,
    /// The listed page sorted by state (failed first) instead of by index.
    pub by_state: bool,
}

impl DetailState {
    /// At either end of the listed page, moving on (`delta` > 0) lists the objects after
    /// its last; moving back, the page before. A job of millions is read a page at a time.
    fn turn_page(&mut self, delta: i64, snapshot: &Snapshot) {
        let Some(listed) = snapshot
            .job_detail
            .as_ref()
            .filter(|d| d.query == self.objects && !d.loading)
        else {
            return;
        };
        if delta > 0 && listed.files.len() >= snapshot::LISTED_OBJECTS {
            if let Some(from) = listed.files.last().and_then(|f| f.index.checked_add(1)) {
                self.pages.push(self.objects.from);
                self.objects.from = from;
                self.file_cursor = 0;
            }
        } else if delta < 0
            && self.file_cursor == 0
            && let Some(from) = self.pages.pop()
        {
            self.objects.from = from;
            self.file_cursor = snapshot::LISTED_OBJECTS - 1;
        }
    }
}

/// How the heat-map was last laid out, so the cursor can move by rows and slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeatMapGeometry {
    /// Slots per row.
    pub columns: usize,
    /// Chunks per slot.
    pub per_slot: usize,
}

/// Settings the TUI starts with.
#[derive(Clone, Debug)]
pub struct AppOptions {
    /// Where the browser starts (`s3://`, `az://` or a directory).
    pub browse_root: String,
    /// For local sources: the directory destinations are proposed under.
    pub local_destination: Option<String>,
    /// Chunk size of the jobs queued from the browser.
    pub chunk_size: u64,
    /// True when the engine runs in a daemon: quitting only detaches.
    pub attached: bool,
}

/// A message, with the local time it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// `HH:MM:SS`, local time.
    pub at: String,
    /// What happened.
    pub text: String,
}

impl Notice {
    /// A message that came now.
    pub fn now(text: impl Into<String>) -> Self {
        Self {
            at: jiff::Zoned::now().strftime("%H:%M:%S").to_string(),
            text: text.into(),
        }
    }
}

/// How the rows of a listed page rank when sorted by state: trouble first.
fn state_rank(state: FileState) -> u8 {
    match state {
        FileState::Failed => 0,
        FileState::Committing => 1,
        FileState::Transferring => 2,
        FileState::Done => 3,
        FileState::Skipped => 4,
    }
}

/// `1 object`, `2 objects`.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Everything the TUI shows and remembers.
pub struct App {
    /// The main screen.
    pub screen: Screen,
    /// The popup over it.
    pub popup: Option<Popup>,
    /// The latest picture of the engine.
    pub snapshot: Arc<Snapshot>,
    /// Cursor over the jobs.
    pub jobs_cursor: usize,
    /// The detail screen.
    pub detail: Option<DetailState>,
    /// The browser.
    pub browser: BrowserState,
    /// Recent messages, newest last.
    pub notices: VecDeque<Notice>,
    /// The controller's (or the operator's) last concurrency decision: its own line, so
    /// decisions never push messages out of view.
    pub controller: Option<Notice>,
    /// The heat-map's last layout.
    pub heatmap: HeatMapGeometry,
    /// Set when the operator asked to quit.
    pub quit: bool,
    /// Set when the operator confirmed stopping the engine (the daemon, when attached).
    pub stop: bool,
    options: AppOptions,
    next_request: u64,
    /// Set while the go-to prompt waits for a listing to complete its text from.
    completing: bool,
    /// Where the browser was before completing moved it (Esc goes back there).
    completed_from: Option<String>,
    /// What the last key press did not show otherwise (a mistake, nothing found, the names
    /// a Tab could complete): the status bar shows it before its numbers until the next key.
    pub answer: Option<String>,
}

const PAGE: usize = 10;
const NOTICES: usize = 50;

impl App {
    /// A fresh TUI state; returns it with the commands to send at start.
    pub fn new(options: AppOptions) -> (Self, Vec<Command>) {
        let mut app = Self {
            screen: Screen::Jobs,
            popup: None,
            snapshot: Arc::new(Snapshot::default()),
            jobs_cursor: 0,
            detail: None,
            browser: BrowserState {
                location: options.browse_root.clone(),
                ..BrowserState::default()
            },
            notices: VecDeque::new(),
            controller: None,
            heatmap: HeatMapGeometry::default(),
            quit: false,
            stop: false,
            options,
            next_request: 0,
            completing: false,
            completed_from: None,
            answer: None,
        };
        let location = app.browser.location.clone();
        let browse = app.browse(location);
        (app, browse)
    }

    /// The contexts whose bindings apply now, most specific first.
    pub fn contexts(&self) -> Vec<Context> {
        let mut contexts = match self.screen {
            Screen::Jobs => vec![Context::Jobs],
            Screen::Browser => vec![Context::Browser],
            Screen::Detail => match self.detail.as_ref().map(|d| d.focus) {
                Some(Focus::HeatMap) => vec![Context::HeatMap, Context::Detail],
                _ => vec![Context::Detail],
            },
        };
        contexts.push(Context::Global);
        contexts
    }

    /// What the engine should put in its snapshots for this view.
    pub fn selection(&self) -> Selection {
        match (&self.screen, &self.detail) {
            (Screen::Detail, Some(detail)) => Selection {
                job: Some(detail.job),
                objects: detail.objects.clone(),
                file: self.selected_file_index(),
                chunk: matches!(self.popup, Some(Popup::Inspector)).then_some(detail.chunk_cursor),
            },
            _ => Selection::default(),
        }
    }

    /// The job under the cursor (jobs list) or shown (detail).
    pub fn selected_job(&self) -> Option<&JobView> {
        match (&self.screen, &self.detail) {
            (Screen::Detail, Some(detail)) => {
                self.snapshot.jobs.iter().find(|j| j.id == detail.job)
            }
            _ => self.snapshot.jobs.get(self.jobs_cursor),
        }
    }

    /// The index (in its job) of the object under the detail cursor.
    pub fn selected_file_index(&self) -> Option<u32> {
        let detail = self.detail.as_ref()?;
        // A list of other objects than those asked for (the page is being read) selects none.
        let listed = self.snapshot.job_detail.as_ref()?;
        if listed.query != detail.objects {
            return None;
        }
        let files = self.listed_files();
        files
            .get(detail.file_cursor.min(files.len().saturating_sub(1)))
            .map(|f| f.index)
    }

    /// The listed page's objects in the order shown: by index, or by state when asked.
    pub fn listed_files(&self) -> Vec<&FileView> {
        let mut files: Vec<&FileView> = self
            .snapshot
            .job_detail
            .as_ref()
            .map(|d| d.files.iter().collect())
            .unwrap_or_default();
        if self.detail.as_ref().is_some_and(|d| d.by_state) {
            files.sort_by_key(|f| state_rank(f.state));
        }
        files
    }

    /// Answers a key press with a message the screen would not show otherwise.
    fn answer(&mut self, message: impl Into<String>) {
        let message = message.into();
        self.answer = Some(message.clone());
        self.notice(message);
    }

    fn notice(&mut self, message: impl Into<String>) {
        self.notices.push_back(Notice::now(message));
        while self.notices.len() > NOTICES {
            self.notices.pop_front();
        }
    }

    // ---- input --------------------------------------------------------------------------------

    /// Handles a key press.
    pub fn handle_key(&mut self, event: KeyEvent) -> Vec<Command> {
        self.answer = None;
        self.answer_key(event)
    }

    fn answer_key(&mut self, event: KeyEvent) -> Vec<Command> {
        if let Some(commands) = self.handle_text(event) {
            return commands;
        }
        let Some(key) = Key::from_event(event) else {
            return Vec::new();
        };
        match (&self.popup, key) {
            (Some(Popup::Help(scroll)), _) => {
                let scroll = *scroll;
                // The help scrolls; only its own keys (and Esc, q) close it.
                self.popup = match keys::lookup(&[Context::Global], key) {
                    Some(Action::Help | Action::Back | Action::Quit) => None,
                    Some(Action::Up) => Some(Popup::Help(scroll.saturating_sub(1))),
                    Some(Action::Down) => Some(Popup::Help(scroll.saturating_add(1))),
                    Some(Action::PageUp) => Some(Popup::Help(scroll.saturating_sub(PAGE as u16))),
                    Some(Action::PageDown) => Some(Popup::Help(scroll.saturating_add(PAGE as u16))),
                    Some(Action::Top) => Some(Popup::Help(0)),
                    Some(Action::Bottom) => Some(Popup::Help(u16::MAX)),
                    _ => Some(Popup::Help(scroll)),
                };
                return Vec::new();
            }
            (Some(Popup::ConfirmCancel(job)), Key::Char('y')) => {
                let job = *job;
                self.popup = None;
                self.notice(format!(
                    "job {job}: cancelling — no new chunk starts; those in flight finish"
                ));
                return vec![Command::Cancel(job)];
            }
            (Some(Popup::ConfirmStop), Key::Char('y')) => {
                self.popup = None;
                self.quit = true;
                self.stop = true;
                return vec![Command::Shutdown];
            }
            (Some(Popup::ConfirmCancel(_) | Popup::ConfirmStop), _) => {
                self.popup = None;
                return Vec::new();
            }
            (Some(Popup::Inspector), Key::Esc | Key::Enter | Key::Backspace) => {
                self.popup = None;
                return Vec::new();
            }
            _ => {}
        }
        match keys::lookup(&self.contexts(), key) {
            Some(action) => self.update(action),
            None => Vec::new(),
        }
    }

    /// Text fields take every key while they are open.
    fn handle_text(&mut self, event: KeyEvent) -> Option<Vec<Command>> {
        let key = Key::from_event(event);
        let popup = self.popup.as_mut()?;
        let go_to = matches!(popup, Popup::GoTo(_));
        let input = match popup {
            Popup::Destination(input)
            | Popup::Filter(input)
            | Popup::GoTo(input)
            | Popup::BwLimit(input)
            | Popup::Search(input) => input,
            _ => return None,
        };
        match key {
            Some(Key::Tab) if go_to => {
                let typed = input.value().to_string();
                Some(self.complete(&typed))
            }
            Some(Key::Esc) => {
                self.completing = false;
                if let (Popup::GoTo(_), Some(from)) = (&popup, self.completed_from.take()) {
                    self.popup = None;
                    return Some(self.browse(from));
                }
                match popup {
                    Popup::Filter(_) => {
                        self.browser.filter.clear();
                        self.browser.anchor = None;
                    }
                    Popup::Search(_) => self.set_objects(|q| q.search.clear()),
                    _ => {}
                }
                self.popup = None;
                Some(Vec::new())
            }
            Some(Key::Enter) => {
                let value = input.value().trim().to_string();
                let popup = self.popup.take();
                self.completing = false;
                self.completed_from = None;
                Some(match popup {
                    Some(Popup::Destination(_)) => self.queue(&value),
                    Some(Popup::GoTo(_)) if !value.is_empty() => {
                        self.browse(normalize_location(&value))
                    }
                    Some(Popup::Search(_)) => {
                        self.set_objects(|q| q.search = value);
                        Vec::new()
                    }
                    Some(Popup::BwLimit(_)) => match BwLimit::parse(&value) {
                        Ok(cap) => vec![Command::SetBwLimit(cap)],
                        Err(why) => {
                            // Left open, to be put right.
                            self.answer(why);
                            self.popup = Some(Popup::BwLimit(Input::new(value)));
                            Vec::new()
                        }
                    },
                    _ => Vec::new(),
                })
            }
            _ => {
                input.handle_event(&ratatui::crossterm::event::Event::Key(event));
                if let Some(Popup::Filter(input)) = &self.popup {
                    self.browser.filter = input.value().to_string();
                    self.browser.cursor = 0;
                }
                Some(Vec::new())
            }
        }
    }

    /// True when the engine runs in a daemon: `q` only detaches.
    pub fn attached(&self) -> bool {
        self.options.attached
    }

    /// Applies an action.
    pub fn update(&mut self, action: Action) -> Vec<Command> {
        match action {
            Action::Quit => {
                self.quit = true;
                vec![Command::Shutdown]
            }
            Action::StopAll => {
                self.popup = Some(Popup::ConfirmStop);
                Vec::new()
            }
            Action::Help => {
                self.popup = match self.popup {
                    Some(Popup::Help(_)) => None,
                    _ => Some(Popup::Help(0)),
                };
                Vec::new()
            }
            Action::Back => self.back(),
            Action::ShowJobs => {
                self.screen = Screen::Jobs;
                self.popup = None;
                Vec::new()
            }
            Action::ShowBrowser => {
                self.screen = Screen::Browser;
                self.popup = None;
                Vec::new()
            }
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::PageUp => self.move_cursor(-(PAGE as i64)),
            Action::PageDown => self.move_cursor(PAGE as i64),
            Action::Top => self.jump(false),
            Action::Bottom => self.jump(true),
            Action::Left => self.move_chunk_cursor(-1),
            Action::Right => self.move_chunk_cursor(1),
            Action::Open => self.open(),
            Action::SwitchFocus => {
                if let Some(detail) = &mut self.detail {
                    detail.focus = match detail.focus {
                        Focus::Files => Focus::HeatMap,
                        Focus::HeatMap => Focus::Files,
                    };
                }
                Vec::new()
            }
            Action::PauseAll => {
                self.notice("pausing every job");
                vec![Command::Pause(None)]
            }
            Action::ResumeAll => {
                self.notice("resuming every job");
                vec![Command::Resume(None)]
            }
            Action::PauseJob => self
                .selected_job_id()
                .map(|id| vec![Command::Pause(Some(id))])
                .unwrap_or_default(),
            Action::ResumeJob => self
                .selected_job_id()
                .map(|id| vec![Command::Resume(Some(id))])
                .unwrap_or_default(),
            Action::RetryFailed => self
                .selected_job_id()
                .map(|id| vec![Command::RetryFailed(id)])
                .unwrap_or_default(),
            Action::CancelJob => {
                if let Some(job) = self.selected_job().filter(|j| !j.state.is_finished()) {
                    self.popup = Some(Popup::ConfirmCancel(job.id));
                }
                Vec::new()
            }
            Action::StepConcurrency(step) => vec![Command::StepConcurrency(step)],
            Action::ToggleAdaptive => vec![Command::SetAdaptive(!self.snapshot.adaptive)],
            Action::Mark => {
                if let Some(entry) = self
                    .browser
                    .visible()
                    .get(self.browser.cursor)
                    .map(|e| e.location.clone())
                {
                    if !self.browser.marked.remove(&entry) {
                        self.browser.marked.insert(entry);
                    }
                    self.move_cursor(1);
                }
                Vec::new()
            }
            Action::MarkAll => {
                let shown: Vec<String> = self
                    .browser
                    .visible()
                    .iter()
                    .map(|e| e.location.clone())
                    .collect();
                if shown.iter().all(|l| self.browser.marked.contains(l)) {
                    for location in &shown {
                        self.browser.marked.remove(location);
                    }
                } else {
                    self.browser.marked.extend(shown);
                }
                Vec::new()
            }
            Action::MarkRange => {
                let cursor = self.browser.cursor;
                let visible: Vec<String> = self
                    .browser
                    .visible()
                    .iter()
                    .map(|e| e.location.clone())
                    .collect();
                match self.browser.anchor.take() {
                    None => self.browser.anchor = visible.get(cursor).cloned(),
                    Some(anchor) => {
                        // The range's start is an entry, found again among those shown now;
                        // hidden by a filter since, the range is the cursor's entry alone.
                        let start = visible.iter().position(|l| *l == anchor).unwrap_or(cursor);
                        let (from, to) = (start.min(cursor), start.max(cursor));
                        let range = visible.into_iter().skip(from).take(to - from + 1);
                        self.browser.marked.extend(range);
                    }
                }
                Vec::new()
            }
            Action::Filter => {
                self.popup = Some(Popup::Filter(Input::new(self.browser.filter.clone())));
                Vec::new()
            }
            Action::NextObjectFilter => {
                self.set_objects(|q| q.filter = q.filter.next());
                Vec::new()
            }
            Action::SortByState => {
                if let Some(detail) = &mut self.detail {
                    detail.by_state = !detail.by_state;
                    detail.file_cursor = 0;
                    detail.chunk_cursor = 0;
                }
                Vec::new()
            }
            Action::NextFailed => {
                self.next_failed();
                Vec::new()
            }
            Action::SearchObjects => {
                if let Some(detail) = &self.detail {
                    self.popup = Some(Popup::Search(Input::new(detail.objects.search.clone())));
                }
                Vec::new()
            }
            Action::SetBwLimit => {
                // Empty: the prompt says the cap in force; what is typed replaces it.
                self.popup = Some(Popup::BwLimit(Input::default()));
                Vec::new()
            }
            Action::GoTo => {
                self.popup = Some(Popup::GoTo(Input::new(self.browser.location.clone())));
                Vec::new()
            }
            Action::Queue => {
                if self.browser.marked.is_empty()
                    && let Some(entry) = self
                        .browser
                        .visible()
                        .get(self.browser.cursor)
                        .map(|e| e.location.clone())
                {
                    self.browser.marked.insert(entry);
                }
                if !self.browser.marked.is_empty() {
                    self.popup = Some(Popup::Destination(Input::new(self.proposed_destination())));
                }
                Vec::new()
            }
            Action::Parent => {
                let left = self.browser.location.clone();
                let up = parent(&left);
                if up != left {
                    let commands = self.browse(up);
                    self.browser.return_to = Some(left);
                    return commands;
                }
                Vec::new()
            }
        }
    }

    fn selected_job_id(&self) -> Option<JobId> {
        self.selected_job().map(|j| j.id)
    }

    fn back(&mut self) -> Vec<Command> {
        if self.popup.take().is_some() {
            return Vec::new();
        }
        match self.screen {
            // A search, a filter or a sort is undone first; then back to the jobs.
            Screen::Detail => {
                let narrowed = self.detail.as_ref().is_some_and(|d| {
                    !d.objects.search.is_empty()
                        || d.objects.filter != snapshot::ObjectFilter::All
                        || d.by_state
                });
                if narrowed {
                    self.set_objects(|q| {
                        q.search.clear();
                        q.filter = snapshot::ObjectFilter::All;
                    });
                    if let Some(detail) = &mut self.detail {
                        detail.by_state = false;
                    }
                } else {
                    self.screen = Screen::Jobs;
                }
            }
            Screen::Browser => return self.update(Action::Parent),
            Screen::Jobs => {}
        }
        Vec::new()
    }

    fn open(&mut self) -> Vec<Command> {
        match self.screen {
            Screen::Jobs => {
                if let Some(job) = self.snapshot.jobs.get(self.jobs_cursor) {
                    let job = job.id;
                    if self.detail.as_ref().is_none_or(|d| d.job != job) {
                        self.detail = Some(DetailState {
                            job,
                            objects: ObjectQuery::default(),
                            pages: Vec::new(),
                            file_cursor: 0,
                            focus: Focus::Files,
                            chunk_cursor: 0,
                            by_state: false,
                        });
                    }
                    self.screen = Screen::Detail;
                }
                Vec::new()
            }
            Screen::Detail => {
                if self
                    .detail
                    .as_ref()
                    .is_some_and(|d| d.focus == Focus::HeatMap)
                {
                    self.popup = Some(Popup::Inspector);
                } else if let Some(detail) = &mut self.detail {
                    detail.focus = Focus::HeatMap;
                    detail.chunk_cursor = 0;
                }
                Vec::new()
            }
            Screen::Browser => {
                let target = self
                    .browser
                    .visible()
                    .get(self.browser.cursor)
                    .filter(|e| e.is_dir())
                    .map(|e| e.location.clone());
                match target {
                    Some(location) => self.browse(location),
                    None => Vec::new(),
                }
            }
        }
    }

    fn move_cursor(&mut self, delta: i64) -> Vec<Command> {
        let step = |cursor: usize, len: usize| -> usize {
            if len == 0 {
                return 0;
            }
            (cursor as i64 + delta).clamp(0, len as i64 - 1) as usize
        };
        match self.screen {
            Screen::Jobs => self.jobs_cursor = step(self.jobs_cursor, self.snapshot.jobs.len()),
            Screen::Browser => {
                let len = self.browser.visible().len();
                self.browser.cursor = step(self.browser.cursor, len);
            }
            Screen::Detail => {
                let files = self
                    .snapshot
                    .job_detail
                    .as_ref()
                    .map_or(0, |d| d.files.len());
                if let Some(detail) = &mut self.detail {
                    match detail.focus {
                        Focus::Files => {
                            let before = detail.file_cursor;
                            detail.file_cursor = step(detail.file_cursor, files);
                            if before == detail.file_cursor {
                                detail.turn_page(delta, &self.snapshot);
                            }
                            if before != detail.file_cursor || detail.file_cursor == 0 {
                                detail.chunk_cursor = 0;
                            }
                        }
                        Focus::HeatMap => {
                            let row =
                                (self.heatmap.columns.max(1) * self.heatmap.per_slot.max(1)) as i64;
                            return self.move_chunk_cursor(delta * row);
                        }
                    }
                }
            }
        }
        Vec::new()
    }

    /// Moves to the first (`last` false) or last entry of what has the keys.
    fn jump(&mut self, last: bool) -> Vec<Command> {
        let end = |len: usize| if last { len.saturating_sub(1) } else { 0 };
        match self.screen {
            Screen::Jobs => self.jobs_cursor = end(self.snapshot.jobs.len()),
            Screen::Browser => self.browser.cursor = end(self.browser.visible().len()),
            Screen::Detail => {
                let files = self.listed_files().len();
                let chunks = self
                    .snapshot
                    .file_chunks
                    .as_ref()
                    .map_or(0, |f| f.cells.len());
                if let Some(detail) = &mut self.detail {
                    match detail.focus {
                        Focus::Files => {
                            detail.file_cursor = end(files);
                            detail.chunk_cursor = 0;
                        }
                        Focus::HeatMap => detail.chunk_cursor = end(chunks) as u32,
                    }
                }
            }
        }
        Vec::new()
    }

    /// Moves to the next failed object of the listed page (objects focused) or the next
    /// failed chunk of the object (heat-map focused), wrapping round; says so when none is.
    fn next_failed(&mut self) {
        let Some(detail) = &self.detail else {
            return;
        };
        let (len, cursor, failed): (usize, usize, Vec<bool>) = match detail.focus {
            Focus::Files => {
                let files = self.listed_files();
                let failed = files.iter().map(|f| f.state == FileState::Failed).collect();
                (files.len(), detail.file_cursor, failed)
            }
            Focus::HeatMap => {
                let cells = self
                    .snapshot
                    .file_chunks
                    .as_ref()
                    .map(|f| f.cells.as_slice())
                    .unwrap_or_default();
                let failed = cells
                    .iter()
                    .map(|c| c.state == ChunkState::Failed)
                    .collect();
                (cells.len(), detail.chunk_cursor as usize, failed)
            }
        };
        let next = (1..=len)
            .map(|step| (cursor + step) % len.max(1))
            .find(|&i| failed.get(i).copied().unwrap_or(false));
        let focus = detail.focus;
        match (next, focus) {
            (Some(i), Focus::Files) => {
                if let Some(detail) = &mut self.detail {
                    detail.file_cursor = i;
                    detail.chunk_cursor = 0;
                }
            }
            (Some(i), Focus::HeatMap) => {
                if let Some(detail) = &mut self.detail {
                    detail.chunk_cursor = i as u32;
                }
            }
            (None, Focus::Files) => {
                self.answer("no failed object on this page (s lists the failed ones of the job)")
            }
            (None, Focus::HeatMap) => self.answer("no failed chunk in this object"),
        }
    }

    /// Changes which objects the detail screen lists, from their first.
    fn set_objects(&mut self, change: impl FnOnce(&mut ObjectQuery)) {
        if let Some(detail) = &mut self.detail {
            let before = detail.objects.clone();
            change(&mut detail.objects);
            if detail.objects == before {
                return;
            }
            detail.objects.from = 0;
            detail.pages.clear();
            detail.file_cursor = 0;
            detail.chunk_cursor = 0;
        }
    }

    fn move_chunk_cursor(&mut self, slots: i64) -> Vec<Command> {
        let chunks = self
            .snapshot
            .file_chunks
            .as_ref()
            .map_or(0, |f| f.cells.len()) as i64;
        let per = self.heatmap.per_slot.max(1) as i64;
        if let Some(detail) = &mut self.detail
            && chunks > 0
        {
            let step = if slots.abs() >= per {
                slots
            } else {
                slots * per
            };
            let slot_start = (i64::from(detail.chunk_cursor) / per) * per;
            detail.chunk_cursor = (slot_start + step).clamp(0, chunks - 1) as u32;
        }
        Vec::new()
    }

    // ---- browser ------------------------------------------------------------------------------

    /// Starts listing `location` in the browser.
    fn browse(&mut self, location: String) -> Vec<Command> {
        self.next_request += 1;
        let location = if location.contains("://") || location.ends_with('/') {
            location
        } else {
            format!("{location}/")
        };
        self.browser = BrowserState {
            location: location.clone(),
            request: self.next_request,
            loading: true,
            ..BrowserState::default()
        };
        vec![Command::Browse {
            request: self.next_request,
            location,
            token: None,
        }]
    }

    /// Completes the go-to prompt's text from the listing of its folder: as far as the
    /// names that start with it agree. A folder not listed yet is listed first (the browser
    /// goes there) and the text completed when its last page is in.
    fn complete(&mut self, typed: &str) -> Vec<Command> {
        let Some(slash) = typed.rfind('/') else {
            return Vec::new();
        };
        let folder = &typed[..=slash];
        if self.browser.location == folder {
            if self.browser.loading {
                self.completing = true;
            } else {
                self.apply_completion();
            }
            return Vec::new();
        }
        self.completing = true;
        if self.completed_from.is_none() {
            self.completed_from = Some(self.browser.location.clone());
        }
        self.browse(folder.to_string())
    }

    fn apply_completion(&mut self) {
        self.completing = false;
        let Some(Popup::GoTo(input)) = &self.popup else {
            return;
        };
        let typed = input.value().to_string();
        // Folders only: a location to open is a bucket, a container or a prefix.
        let matching: Vec<(String, String)> = self
            .browser
            .entries
            .iter()
            .filter(|e| e.is_dir() && e.location.starts_with(&typed))
            .map(|e| (e.name.clone(), e.location.clone()))
            .collect();
        let Some((_, first)) = matching.first() else {
            self.answer(format!("no folder starts with {typed}"));
            return;
        };
        let mut common = first.clone();
        for (_, other) in matching.iter().skip(1) {
            let agreed = common
                .chars()
                .zip(other.chars())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a.len_utf8())
                .sum();
            common.truncate(agreed);
        }
        if matching.len() > 1 {
            // Several: said, so a Tab that adds nothing is not a mystery.
            let names: Vec<&str> = matching.iter().take(8).map(|(n, _)| n.as_str()).collect();
            let more = match matching.len() {
                n if n > 8 => format!(" and {} more", n - 8),
                _ => String::new(),
            };
            self.answer(format!("{}{more}", names.join("  ")));
        }
        if common.len() > typed.len() {
            self.popup = Some(Popup::GoTo(Input::new(common)));
        }
    }

    fn add_page(&mut self, page: Page) -> Vec<Command> {
        let base = self.browser.base();
        let prefix = self.browser.prefix();
        let mut known: BTreeSet<String> = self
            .browser
            .entries
            .iter()
            .map(|e| e.location.clone())
            .collect();
        let mut dirs = Vec::new();
        for dir in page.dirs {
            let (name, location) = if is_root(&self.browser.location) {
                (format!("{dir}/"), format!("{base}{dir}/"))
            } else {
                let name = dir.strip_prefix(&prefix).unwrap_or(&dir).to_string();
                (name, format!("{base}{dir}"))
            };
            if known.insert(location.clone()) {
                dirs.push(Entry {
                    name,
                    location,
                    size: None,
                    modified: None,
                });
            }
        }
        let objects = page.objects.into_iter().map(|o| Entry {
            name: o.key.strip_prefix(&prefix).unwrap_or(&o.key).to_string(),
            location: format!("{base}{}", o.key),
            size: Some(o.size),
            modified: o.modified,
        });
        let split = self
            .browser
            .entries
            .iter()
            .take_while(|e| e.is_dir())
            .count();
        let tail = self.browser.entries.split_off(split);
        self.browser.entries.extend(dirs);
        self.browser.entries.extend(tail);
        self.browser.entries.extend(objects);
        match page.next {
            Some(token) => vec![Command::Browse {
                request: self.browser.request,
                location: self.browser.location.clone(),
                token: Some(token),
            }],
            None => {
                self.browser.loading = false;
                if let Some(left) = self.browser.return_to.take()
                    && let Some(at) = self
                        .browser
                        .visible()
                        .iter()
                        .position(|e| e.location == left)
                {
                    self.browser.cursor = at;
                }
                if self.completing {
                    self.apply_completion();
                }
                Vec::new()
            }
        }
    }

    /// The folder proposed for the marked entries: the listed folder's twin under Azure
    /// (`az://` itself for buckets: each becomes a container of its name; from Azure, under
    /// S3), or under the local destination folder.
    pub fn proposed_destination(&self) -> String {
        let source = self.browser.location.clone();
        match source.as_str() {
            // Buckets become containers of their names; containers, buckets.
            "s3://" => return "az://".into(),
            "az://" => return "s3://".into(),
            _ => {}
        }
        if let Some(rest) = source.strip_prefix("s3://") {
            let (container, key) = rest.split_once('/').unwrap_or((rest, ""));
            return format!("az://{}/{key}", container_name(container));
        }
        if let Some(rest) = source.strip_prefix("az://") {
            return format!("s3://{rest}");
        }
        // Under the browse root: the same path under the destination; elsewhere, its name.
        let relative = match source.strip_prefix(self.options.browse_root.trim_end_matches('/')) {
            Some(under) => under.trim_start_matches('/'),
            None => source
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default(),
        };
        match &self.options.local_destination {
            Some(root) => format!("{}/{relative}", root.trim_end_matches('/')),
            None => source.clone(),
        }
    }

    /// Queues every marked entry into the folder `destination`, each by its name — one
    /// entry or many, the same rule.
    fn queue(&mut self, destination: &str) -> Vec<Command> {
        if destination.is_empty() {
            return Vec::new();
        }
        let marked = std::mem::take(&mut self.browser.marked);
        self.browser.anchor = None;
        let base = self.browser.location.clone();
        let options = JobOptions::with_chunk_size(self.options.chunk_size);
        let mut commands = Vec::new();
        for source in marked {
            let name = source.strip_prefix(&base).unwrap_or(&source);
            let target = destination_of(destination, name);
            if target.trim_end_matches('/') == source.trim_end_matches('/') {
                self.answer(format!("{source} would be copied onto itself: not queued"));
                continue;
            }
            self.notice(format!("queued {source} → {target}"));
            commands.push(Command::Enqueue {
                source,
                destination: target,
                options: options.clone(),
            });
        }
        self.screen = Screen::Jobs;
        commands
    }

    // ---- engine -------------------------------------------------------------------------------

    /// Takes a new snapshot.
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        // Sorted by state, rows move as objects change state: the cursor stays on its object.
        let pinned = self
            .detail
            .as_ref()
            .filter(|d| d.by_state)
            .and_then(|_| self.selected_file_index());
        self.snapshot = snapshot;
        if let Some(index) = pinned
            && let Some(row) = self.listed_files().iter().position(|f| f.index == index)
            && let Some(detail) = &mut self.detail
        {
            detail.file_cursor = row;
        }
        self.jobs_cursor = self
            .jobs_cursor
            .min(self.snapshot.jobs.len().saturating_sub(1));
    }

    /// Takes an engine event.
    pub fn on_event(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::Listing { request, page, .. } if request == self.browser.request => match page {
                Ok(page) => return self.add_page(page),
                Err(error) => {
                    self.browser.loading = false;
                    self.browser.error = Some(error);
                }
            },
            Event::PlanFailed { source, error, .. } => {
                self.notice(format!("cannot copy {source}: {error}"))
            }
            Event::JobPlanned { job, summary, .. } => self.notice(format!(
                "job {job}: planned {}, {} to copy",
                counted(summary.files, "object", "objects"),
                summary.to_copy
            )),
            Event::JobFinished { job, state, .. } => {
                self.notice(format!("job {job}: {}", state.name()))
            }
            Event::ObjectFailed { key, error, .. } => {
                self.notice(format!("failed: {key}: {}", error.message))
            }
            Event::JobStateChanged { job, state } => {
                self.notice(format!("job {job}: {}", state.name()))
            }
            Event::ConcurrencyChanged { reason, .. } => {
                self.controller = Some(Notice::now(format!("concurrency {reason}")));
            }
            Event::BwLimitChanged { reason, .. } => self.notice(reason),
            Event::Fatal { error } => self.notice(format!("engine stopped: {error}")),
            Event::Notice { message } => self.notice(message),
            _ => {}
        }
        Vec::new()
    }
}

/// A location as typed: plain paths get a trailing slash (they name directories here).
fn normalize_location(text: &str) -> String {
    if text.contains("://") || text.ends_with('/') {
        text.to_string()
    } else {
        format!("{text}/")
    }
}

/// Where an entry named `name` (relative to the listed folder; folders end in `/`) goes in
/// the folder `folder`. Into `az://` itself, a bucket becomes a container of its name.
pub fn destination_of(folder: &str, name: &str) -> String {
    if folder == "az://" && name.ends_with('/') {
        let (bucket, rest) = name.split_once('/').unwrap_or((name, ""));
        return format!("az://{}/{rest}", container_name(bucket));
    }
    if folder.ends_with("://") {
        return format!("{folder}{name}");
    }
    format!("{}/{name}", folder.trim_end_matches('/'))
}

/// An S3 bucket name made acceptable as an Azure container name.
fn container_name(bucket: &str) -> String {
    let mut name: String = bucket
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    name.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::snapshot::{FileView, JobDetail};
    use crate::state::{FileState, JobProgress, JobState};
    use crate::store::ObjectInfo;
    use ratatui::crossterm::event::{KeyCode, KeyModifiers};

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn job(id: JobId, state: JobState) -> JobView {
        JobView {
            id,
            source: format!("s3://src/{id}/"),
            destination: format!("az://dst/{id}/"),
            state,
            progress: JobProgress::default(),
            rate: 0.0,
            eta_secs: None,
            error: None,
            carried: Default::default(),
            in_flight: 0,
        }
    }

    fn app() -> App {
        let (mut app, commands) = App::new(AppOptions {
            browse_root: "s3://".into(),
            local_destination: None,
            chunk_size: 8 << 20,
            attached: true,
        });
        assert!(
            matches!(commands[0], Command::Browse { .. }),
            "the browser starts listing"
        );
        app.on_snapshot(Arc::new(Snapshot {
            limit: 16,
            adaptive: true,
            jobs: vec![job(1, JobState::Running), job(2, JobState::Paused)],
            ..Snapshot::default()
        }));
        app
    }

    #[test]
    fn pause_resume_and_concurrency_keys_become_commands() {
        let mut app = app();
        assert_eq!(app.handle_key(key('P')), vec![Command::Pause(None)]);
        assert_eq!(app.handle_key(key('R')), vec![Command::Resume(None)]);
        assert_eq!(app.handle_key(key('p')), vec![Command::Pause(Some(1))]);
        app.handle_key(code(KeyCode::Down));
        assert_eq!(app.handle_key(key('r')), vec![Command::Resume(Some(2))]);
        assert_eq!(app.handle_key(key('+')), vec![Command::StepConcurrency(1)]);
        assert_eq!(app.handle_key(key('-')), vec![Command::StepConcurrency(-1)]);
        assert_eq!(app.handle_key(key('a')), vec![Command::SetAdaptive(false)]);
        assert_eq!(app.handle_key(key('f')), vec![Command::RetryFailed(2)]);
    }

    #[test]
    fn the_bandwidth_cap_key_asks_for_a_cap_and_names_a_mistake() {
        let mut app = app();
        assert!(app.handle_key(key('B')).is_empty());
        assert!(
            matches!(&app.popup, Some(Popup::BwLimit(input)) if input.value().is_empty()),
            "what is typed replaces the cap (the prompt says the one in force)"
        );
        for c in "Mon-Fri 08:00,5MiB/s 19:00,off".chars() {
            app.handle_key(key(c));
        }
        let asked = app.handle_key(code(KeyCode::Enter));
        assert_eq!(
            asked,
            vec![Command::SetBwLimit(
                BwLimit::parse("Mon-Fri 08:00,5MiB/s 19:00,off").expect("timetable")
            )]
        );
        assert!(app.popup.is_none());
        app.handle_key(key('B'));
        for c in "xx".chars() {
            app.handle_key(key(c));
        }
        assert!(
            app.handle_key(code(KeyCode::Enter)).is_empty(),
            "nothing sent"
        );
        assert!(
            app.notices
                .back()
                .is_some_and(|n| n.text.contains("not a size")),
            "{:?}",
            app.notices
        );
        assert!(
            matches!(&app.popup, Some(Popup::BwLimit(input)) if input.value() == "xx"),
            "left open to be put right"
        );
        assert!(
            app.answer
                .as_ref()
                .is_some_and(|a| a.contains("not a size")),
            "the mistake is the answer until the next key"
        );
        app.handle_key(code(KeyCode::Esc));
        assert!(app.answer.is_none());
    }

    #[test]
    fn cancelling_asks_first() {
        let mut app = app();
        assert!(app.handle_key(key('x')).is_empty());
        assert!(matches!(app.popup, Some(Popup::ConfirmCancel(1))));
        assert!(
            app.handle_key(key('n')).is_empty(),
            "anything but y keeps the job"
        );
        assert!(app.popup.is_none());
        app.handle_key(key('x'));
        assert_eq!(app.handle_key(key('y')), vec![Command::Cancel(1)]);
    }

    #[test]
    fn stopping_the_daemon_asks_first_and_detaching_does_not_stop_it() {
        let mut app = app();
        assert!(app.handle_key(key('Q')).is_empty());
        assert!(matches!(app.popup, Some(Popup::ConfirmStop)));
        assert!(
            app.handle_key(key('n')).is_empty(),
            "anything but y keeps it"
        );
        assert!(!app.quit && !app.stop);
        app.handle_key(key('Q'));
        assert_eq!(app.handle_key(key('y')), vec![Command::Shutdown]);
        assert!(app.quit && app.stop);

        let mut app = self::app();
        app.handle_key(key('q'));
        assert!(app.quit && !app.stop, "q only detaches");
    }

    #[test]
    fn quitting_shuts_the_engine_down() {
        let mut app = app();
        assert_eq!(app.handle_key(key('q')), vec![Command::Shutdown]);
        assert!(app.quit);
    }

    #[test]
    fn help_scrolls_with_its_keys_and_closes_only_on_esc_q_or_question_mark() {
        let mut app = app();
        app.handle_key(key('?'));
        assert!(matches!(app.popup, Some(Popup::Help(0))));
        let scroll = |app: &App| match app.popup {
            Some(Popup::Help(n)) => Some(n),
            _ => None,
        };
        app.handle_key(key('j'));
        app.handle_key(code(KeyCode::Down));
        assert_eq!(scroll(&app), Some(2));
        app.handle_key(code(KeyCode::PageDown));
        assert_eq!(scroll(&app), Some(12));
        app.handle_key(key('k'));
        app.handle_key(code(KeyCode::PageUp));
        assert_eq!(scroll(&app), Some(1));
        app.handle_key(code(KeyCode::End));
        assert_eq!(
            scroll(&app),
            Some(u16::MAX),
            "the view clamps it to the end"
        );
        app.handle_key(key('g'));
        assert_eq!(scroll(&app), Some(0));
        assert!(
            app.handle_key(key('P')).is_empty(),
            "other keys do nothing while the help is open"
        );
        assert_eq!(scroll(&app), Some(0));
        for close in [key('?'), code(KeyCode::Esc), key('q')] {
            if app.popup.is_none() {
                app.handle_key(key('?'));
            }
            assert!(app.handle_key(close).is_empty());
            assert!(
                app.popup.is_none() && !app.quit,
                "{close:?} closes the help"
            );
        }
    }

    #[test]
    fn every_press_of_a_concurrency_key_counts_and_shift_steps_by_eight() {
        let mut app = app();
        let sent: Vec<Command> = (0..5).flat_map(|_| app.handle_key(key('+'))).collect();
        assert_eq!(
            sent,
            vec![Command::StepConcurrency(1); 5],
            "five presses between two snapshots are five steps"
        );
        assert_eq!(app.handle_key(key('=')), vec![Command::StepConcurrency(1)]);
        assert_eq!(app.handle_key(key('*')), vec![Command::StepConcurrency(8)]);
        assert_eq!(app.handle_key(key('_')), vec![Command::StepConcurrency(-8)]);
        assert_eq!(app.handle_key(key('-')), vec![Command::StepConcurrency(-1)]);
    }

    #[test]
    fn home_end_g_and_capital_g_go_to_the_first_and_last_entry() {
        let mut app = app();
        app.on_snapshot(Arc::new(Snapshot {
            jobs: (1..=5).map(|id| job(id, JobState::Running)).collect(),
            ..Snapshot::default()
        }));
        app.handle_key(key('G'));
        assert_eq!(app.jobs_cursor, 4);
        app.handle_key(key('g'));
        assert_eq!(app.jobs_cursor, 0);
        app.handle_key(code(KeyCode::End));
        assert_eq!(app.jobs_cursor, 4);
        app.handle_key(code(KeyCode::Home));
        assert_eq!(app.jobs_cursor, 0);
        // The objects of a job, then the heat-map of one.
        app.handle_key(code(KeyCode::Enter));
        app.on_snapshot(listed(ObjectQuery::default(), 0, 7));
        app.handle_key(key('G'));
        assert_eq!(app.selected_file_index(), Some(6));
        assert_eq!(app.selection().objects.from, 0, "no page turned");
        app.handle_key(key('g'));
        assert_eq!(app.selected_file_index(), Some(0));
        let mut with_chunks = (*listed(ObjectQuery::default(), 0, 7)).clone();
        with_chunks.file_chunks = Some(chunks(&[ChunkState::Completed; 30]));
        app.on_snapshot(Arc::new(with_chunks));
        app.handle_key(code(KeyCode::Tab));
        app.handle_key(code(KeyCode::End));
        assert_eq!(app.detail.as_ref().map(|d| d.chunk_cursor), Some(29));
        app.handle_key(code(KeyCode::Home));
        assert_eq!(app.detail.as_ref().map(|d| d.chunk_cursor), Some(0));
        // The browser.
        let mut app = browsing(&["2024/"], &[("a", 1), ("b", 2), ("c", 3)]);
        app.handle_key(key('G'));
        assert_eq!(app.browser.cursor, 3);
        app.handle_key(key('g'));
        assert_eq!(app.browser.cursor, 0);
    }

    /// The cells of an object's heat-map.
    fn chunks(states: &[ChunkState]) -> crate::engine::snapshot::FileChunks {
        crate::engine::snapshot::FileChunks {
            job: 1,
            file: 0,
            key: "k0".into(),
            size: states.len() as u64,
            chunk_size: 1,
            cells: states
                .iter()
                .map(|state| crate::engine::snapshot::ChunkCell {
                    state: *state,
                    attempts: 1,
                })
                .collect(),
        }
    }

    /// The browser showing one page of `s3://media/photos/`.
    fn browsing(dirs: &[&str], objects: &[(&str, u64)]) -> App {
        let mut app = app();
        app.browse("s3://media/photos/".into());
        let request = app.browser.request;
        let dirs: Vec<String> = dirs.iter().map(|d| format!("photos/{d}")).collect();
        let keys: Vec<(String, u64)> = objects
            .iter()
            .map(|(k, s)| (format!("photos/{k}"), *s))
            .collect();
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let keys: Vec<(&str, u64)> = keys.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        app.on_event(Event::Listing {
            request,
            location: "s3://media/photos/".into(),
            page: Ok(page(&dirs, &keys, None)),
        });
        app.screen = Screen::Browser;
        app
    }

    /// The routes the commands queue.
    fn routes(commands: Vec<Command>) -> Vec<(String, String)> {
        commands
            .into_iter()
            .map(|c| match c {
                Command::Enqueue {
                    source,
                    destination,
                    ..
                } => (source, destination),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn star_marks_every_entry_the_filter_shows_and_c_queues_exactly_those() {
        let mut app = browsing(
            &["raw/"],
            &[("a.jpg", 1), ("b.png", 2), ("c.jpg", 3), ("d.txt", 4)],
        );
        app.handle_key(key('/'));
        for c in ".jpg".chars() {
            app.handle_key(key(c));
        }
        app.handle_key(code(KeyCode::Enter));
        app.handle_key(key('*'));
        assert_eq!(app.browser.marked.len(), 2);
        app.handle_key(key('c'));
        match &app.popup {
            Some(Popup::Destination(input)) => assert_eq!(input.value(), "az://media/photos/"),
            other => panic!("no destination prompt: {other:?}"),
        }
        let queued = routes(app.handle_key(code(KeyCode::Enter)));
        assert_eq!(
            queued,
            vec![
                (
                    "s3://media/photos/a.jpg".into(),
                    "az://media/photos/a.jpg".into()
                ),
                (
                    "s3://media/photos/c.jpg".into(),
                    "az://media/photos/c.jpg".into()
                ),
            ]
        );
        // Again on everything marked: unmarks.
        let mut app = browsing(&[], &[("a", 1), ("b", 2)]);
        app.handle_key(key('*'));
        assert_eq!(app.browser.marked.len(), 2);
        app.handle_key(key('*'));
        assert!(app.browser.marked.is_empty());
    }

    #[test]
    fn v_marks_a_range_in_either_direction() {
        let mut app = browsing(&["raw/"], &[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        app.handle_key(key('j'));
        app.handle_key(key('v'));
        assert_eq!(app.browser.anchor.as_deref(), Some("s3://media/photos/a"));
        app.handle_key(key('j'));
        app.handle_key(key('j'));
        app.handle_key(key('v'));
        let marked: Vec<&str> = app.browser.marked.iter().map(String::as_str).collect();
        assert_eq!(
            marked,
            [
                "s3://media/photos/a",
                "s3://media/photos/b",
                "s3://media/photos/c"
            ]
        );
        assert_eq!(app.browser.anchor, None);
        let mut app = browsing(&[], &[("a", 1), ("b", 2), ("c", 3)]);
        app.handle_key(key('G'));
        app.handle_key(key('v'));
        app.handle_key(key('k'));
        app.handle_key(key('v'));
        assert_eq!(app.browser.marked.len(), 2, "upwards too");
    }

    #[test]
    fn buckets_are_marked_and_copied_from_the_bucket_list() {
        let mut app = app();
        app.handle_key(key('2'));
        let request = app.browser.request;
        app.on_event(Event::Listing {
            request,
            location: "s3://".into(),
            page: Ok(page(&["logs", "my.media"], &[], None)),
        });
        // `c` on the bucket under the cursor.
        app.handle_key(key('j'));
        app.handle_key(key('c'));
        match &app.popup {
            Some(Popup::Destination(input)) => assert_eq!(input.value(), "az://"),
            other => panic!("no destination prompt: {other:?}"),
        }
        assert_eq!(
            routes(app.handle_key(code(KeyCode::Enter))),
            vec![("s3://my.media/".into(), "az://my-media/".into())],
            "a bucket becomes a container of its name"
        );
        // Space marks buckets; into a folder, each goes under it by its name.
        app.handle_key(key('2'));
        app.handle_key(key('g'));
        app.handle_key(key(' '));
        app.handle_key(key(' '));
        app.handle_key(key('c'));
        if let Some(Popup::Destination(input)) = &mut app.popup {
            *input = Input::new("az://archive/2026/".into());
        }
        assert_eq!(
            routes(app.handle_key(code(KeyCode::Enter))),
            vec![
                ("s3://logs/".into(), "az://archive/2026/logs/".into()),
                (
                    "s3://my.media/".into(),
                    "az://archive/2026/my.media/".into()
                ),
            ]
        );
    }

    #[test]
    fn one_marked_prefix_and_several_are_laid_out_alike() {
        // The same folder typed both times: one entry goes into it by its name, as several do
        // (one used to be copied to the typed path itself).
        let into = |app: &mut App| {
            app.handle_key(key('c'));
            if let Some(Popup::Destination(input)) = &mut app.popup {
                *input = Input::new("az://archive/".into());
            }
            routes(app.handle_key(code(KeyCode::Enter)))
        };
        let mut one = browsing(&["2024/", "2025/"], &[]);
        one.handle_key(key(' '));
        let alone = into(&mut one);
        let mut both = browsing(&["2024/", "2025/"], &[]);
        both.handle_key(key('*'));
        let together = into(&mut both);
        assert_eq!(
            alone,
            vec![(
                "s3://media/photos/2024/".into(),
                "az://archive/2024/".into()
            )]
        );
        assert_eq!(together[0], alone[0], "the same target, alone or not");
    }

    #[test]
    fn tab_completes_the_location_from_its_folders_listing() {
        let mut app = browsing(
            &["2024/", "2025/", "raw/", "releases/"],
            &[("readme.md", 1)],
        );
        app.handle_key(key('o'));
        let typed = |app: &App| match &app.popup {
            Some(Popup::GoTo(input)) => input.value().to_string(),
            other => panic!("no go-to prompt: {other:?}"),
        };
        assert_eq!(typed(&app), "s3://media/photos/");
        for c in "r".chars() {
            app.handle_key(key(c));
        }
        // Two folders start with "r" (files are no locations to open): the text goes as far
        // as they agree (nothing more here), and the two are named.
        assert!(app.handle_key(code(KeyCode::Tab)).is_empty());
        assert_eq!(typed(&app), "s3://media/photos/r");
        assert_eq!(
            app.notices.back().map(|n| n.text.as_str()),
            Some("raw/  releases/")
        );
        app.handle_key(key('a'));
        app.handle_key(code(KeyCode::Tab));
        assert_eq!(typed(&app), "s3://media/photos/raw/");
        // A folder not listed yet is listed first, and completed when its listing is in.
        app.handle_key(key('x'));
        let asked = app.handle_key(code(KeyCode::Tab));
        assert!(
            matches!(&asked[0], Command::Browse { location, .. } if location == "s3://media/photos/raw/")
        );
        let request = app.browser.request;
        app.on_event(Event::Listing {
            request,
            location: "s3://media/photos/raw/".into(),
            page: Ok(page(&["photos/raw/xmp/"], &[("photos/raw/y.cr2", 1)], None)),
        });
        assert_eq!(typed(&app), "s3://media/photos/raw/xmp/");
        let went = app.handle_key(code(KeyCode::Enter));
        assert!(
            matches!(&went[0], Command::Browse { location, .. } if location == "s3://media/photos/raw/xmp/")
        );
    }

    #[test]
    fn n_goes_to_the_next_failed_object_and_chunk_and_s_sorts_by_state() {
        let mut app = app();
        app.handle_key(code(KeyCode::Enter));
        let mut snapshot = (*listed(ObjectQuery::default(), 0, 6)).clone();
        if let Some(detail) = &mut snapshot.job_detail {
            for (i, file) in detail.files.iter_mut().enumerate() {
                file.state = if i == 2 || i == 4 {
                    FileState::Failed
                } else {
                    FileState::Done
                };
            }
        }
        snapshot.file_chunks = Some(chunks(&[
            ChunkState::Completed,
            ChunkState::Failed,
            ChunkState::Completed,
            ChunkState::Failed,
        ]));
        app.on_snapshot(Arc::new(snapshot));
        app.handle_key(key('n'));
        assert_eq!(app.selected_file_index(), Some(2));
        app.handle_key(key('n'));
        assert_eq!(app.selected_file_index(), Some(4));
        app.handle_key(key('n'));
        assert_eq!(app.selected_file_index(), Some(2), "round again");
        app.handle_key(code(KeyCode::Tab));
        app.handle_key(key('n'));
        assert_eq!(app.detail.as_ref().map(|d| d.chunk_cursor), Some(1));
        app.handle_key(key('n'));
        assert_eq!(app.detail.as_ref().map(|d| d.chunk_cursor), Some(3));
        app.handle_key(code(KeyCode::Tab));
        // S: failed first, then the rest in their order; again: back to job order.
        app.handle_key(key('S'));
        let order: Vec<u32> = app.listed_files().iter().map(|f| f.index).collect();
        assert_eq!(order, [2, 4, 0, 1, 3, 5]);
        assert_eq!(
            app.selected_file_index(),
            Some(2),
            "the cursor is on the first"
        );
        app.handle_key(key('S'));
        let order: Vec<u32> = app.listed_files().iter().map(|f| f.index).collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        // No failed object: said, and the cursor stays.
        let mut app = self::app();
        app.handle_key(code(KeyCode::Enter));
        let mut done = (*listed(ObjectQuery::default(), 0, 3)).clone();
        if let Some(detail) = &mut done.job_detail {
            detail
                .files
                .iter_mut()
                .for_each(|f| f.state = FileState::Done);
        }
        app.on_snapshot(Arc::new(done));
        app.handle_key(key('j'));
        app.handle_key(key('n'));
        assert_eq!(app.selected_file_index(), Some(1));
        assert!(
            app.notices
                .back()
                .is_some_and(|n| n.text.contains("no failed object"))
        );
    }

    #[test]
    fn esc_in_a_job_undoes_its_search_filter_and_sort_before_leaving() {
        let mut app = app();
        app.handle_key(code(KeyCode::Enter));
        app.handle_key(key('s'));
        app.handle_key(key('S'));
        app.handle_key(key('/'));
        app.handle_key(key('x'));
        app.handle_key(code(KeyCode::Enter));
        app.handle_key(code(KeyCode::Esc));
        assert_eq!(app.screen, Screen::Detail, "the first Esc undoes");
        assert_eq!(app.selection().objects, ObjectQuery::default());
        assert!(app.detail.as_ref().is_some_and(|d| !d.by_state));
        app.handle_key(code(KeyCode::Esc));
        assert_eq!(app.screen, Screen::Jobs);
    }

    #[test]
    fn sorted_by_state_the_cursor_stays_on_its_object_as_states_change() {
        let mut app = app();
        app.handle_key(code(KeyCode::Enter));
        app.on_snapshot(listed(ObjectQuery::default(), 0, 4));
        app.handle_key(key('S'));
        app.handle_key(key('j'));
        app.handle_key(key('j'));
        let chosen = app.selected_file_index();
        // Object 0 fails: it moves to the top, and every row under it moves down one.
        let mut next = (*listed(ObjectQuery::default(), 0, 4)).clone();
        if let Some(detail) = &mut next.job_detail {
            for file in &mut detail.files {
                file.state = if file.index == 0 {
                    FileState::Failed
                } else {
                    FileState::Transferring
                };
            }
        }
        app.on_snapshot(Arc::new(next));
        assert_eq!(app.selected_file_index(), chosen);
    }

    #[test]
    fn going_up_puts_the_cursor_on_the_folder_left_and_a_range_survives_a_filter() {
        let mut app = browsing(&["2024/", "2025/", "raw/"], &[]);
        let up = app.update(Action::Parent);
        let request = app.browser.request;
        assert!(matches!(&up[0], Command::Browse { location, .. } if location == "s3://media/"));
        app.on_event(Event::Listing {
            request,
            location: "s3://media/".into(),
            page: Ok(page(&["docs/", "photos/", "video/"], &[], None)),
        });
        assert_eq!(app.browser.cursor, 1, "on photos/");
        // v on photos/, a filter that hides it, v on video/: the range is video/ alone.
        app.handle_key(key('v'));
        app.handle_key(key('/'));
        app.handle_key(key('v'));
        app.handle_key(key('i'));
        app.handle_key(code(KeyCode::Enter));
        app.handle_key(key('v'));
        let marked: Vec<&str> = app.browser.marked.iter().map(String::as_str).collect();
        assert_eq!(marked, ["s3://media/video/"]);
    }

    #[test]
    fn nothing_is_queued_onto_itself() {
        let mut app = app();
        app.handle_key(key('2'));
        app.browse("az://".into());
        let request = app.browser.request;
        app.on_event(Event::Listing {
            request,
            location: "az://".into(),
            page: Ok(page(&["backup"], &[], None)),
        });
        app.handle_key(key('c'));
        match &app.popup {
            Some(Popup::Destination(input)) => assert_eq!(input.value(), "s3://"),
            other => panic!("no destination prompt: {other:?}"),
        }
        if let Some(Popup::Destination(input)) = &mut app.popup {
            *input = Input::new("az://".into());
        }
        assert!(app.handle_key(code(KeyCode::Enter)).is_empty());
        assert!(
            app.notices
                .back()
                .is_some_and(|n| n.text.contains("onto itself"))
        );
    }

    #[test]
    fn esc_in_the_go_to_prompt_goes_back_where_completing_left() {
        let mut app = browsing(&["raw/"], &[]);
        app.handle_key(key('o'));
        if let Some(Popup::GoTo(input)) = &mut app.popup {
            *input = Input::new("s3://other/x".into());
        }
        let asked = app.handle_key(code(KeyCode::Tab));
        assert!(matches!(&asked[0], Command::Browse { location, .. } if location == "s3://other/"));
        let back = app.handle_key(code(KeyCode::Esc));
        assert!(
            matches!(&back[0], Command::Browse { location, .. } if location == "s3://media/photos/")
        );
        assert!(app.popup.is_none());
    }

    #[test]
    fn controller_decisions_get_their_own_line_and_messages_carry_a_time() {
        let mut app = app();
        app.on_event(Event::JobFinished {
            job: 7,
            state: JobState::Cancelled,
            progress: JobProgress::default(),
            error: None,
            carried: Default::default(),
        });
        app.on_event(Event::ConcurrencyChanged {
            limit: 22,
            adaptive: true,
            decision: crate::engine::Decision::Increase,
            reason: "raised to 22".into(),
        });
        let last = app.notices.back().expect("a message");
        assert_eq!(
            last.text, "job 7: CANCELLED",
            "not pushed out by the controller"
        );
        assert_eq!(last.at.len(), 8, "HH:MM:SS: {}", last.at);
        assert_eq!(
            app.controller.as_ref().map(|c| c.text.as_str()),
            Some("concurrency raised to 22")
        );
    }

    #[test]
    fn opening_a_job_selects_its_objects_and_chunks() {
        let mut app = app();
        assert_eq!(app.selection(), Selection::default());
        app.handle_key(code(KeyCode::Enter));
        assert_eq!(app.screen, Screen::Detail);
        app.on_snapshot(Arc::new(Snapshot {
            jobs: vec![job(1, JobState::Running)],
            job_detail: Some(JobDetail {
                job: 1,
                files: (0..3)
                    .map(|i| FileView {
                        index: i + 10,
                        key: format!("k{i}"),
                        size: 1,
                        state: FileState::Transferring,
                        chunks_done: 0,
                        chunks_read: true,
                        chunk_count: 100,
                        retried: 0,
                        error: None,
                    })
                    .collect(),
                query: ObjectQuery::default(),
                matching: Some(3),
                loading: false,
            }),
            file_chunks: Some(crate::engine::snapshot::FileChunks {
                job: 1,
                file: 11,
                key: "k1".into(),
                size: 100,
                chunk_size: 1,
                cells: vec![
                    crate::engine::snapshot::ChunkCell {
                        state: crate::state::ChunkState::Pending,
                        attempts: 0
                    };
                    100
                ],
            }),
            ..Snapshot::default()
        }));
        app.handle_key(code(KeyCode::Down));
        assert_eq!(
            app.selection(),
            Selection {
                job: Some(1),
                file: Some(11),
                chunk: None,
                objects: ObjectQuery::default(),
            }
        );
        app.handle_key(code(KeyCode::Tab));
        app.heatmap = HeatMapGeometry {
            columns: 10,
            per_slot: 1,
        };
        app.handle_key(code(KeyCode::Right));
        app.handle_key(code(KeyCode::Down));
        app.handle_key(code(KeyCode::Enter));
        assert!(matches!(app.popup, Some(Popup::Inspector)));
        assert_eq!(app.selection().chunk, Some(11), "one right, one row down");
        app.handle_key(code(KeyCode::Esc));
        assert!(app.popup.is_none());
        app.handle_key(code(KeyCode::Backspace));
        assert_eq!(app.screen, Screen::Jobs);
    }

    /// A snapshot listing `count` objects of job 1 from index `from`, as asked by `query`.
    fn listed(query: ObjectQuery, from: u32, count: u32) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            jobs: vec![job(1, JobState::Running)],
            job_detail: Some(JobDetail {
                job: 1,
                files: (from..from + count)
                    .map(|i| FileView {
                        index: i,
                        key: format!("k{i}"),
                        size: 1,
                        state: FileState::Failed,
                        chunks_done: 0,
                        chunks_read: true,
                        chunk_count: 1,
                        retried: 0,
                        error: None,
                    })
                    .collect(),
                query,
                matching: None,
                loading: false,
            }),
            ..Snapshot::default()
        })
    }

    #[test]
    fn the_objects_are_filtered_by_state_searched_and_paged_from_the_state_file() {
        use crate::engine::snapshot::{LISTED_OBJECTS, ObjectFilter};
        let mut app = app();
        app.on_snapshot(Arc::new(Snapshot {
            jobs: vec![job(1, JobState::Running)],
            ..Snapshot::default()
        }));
        app.handle_key(code(KeyCode::Enter));
        assert_eq!(app.screen, Screen::Detail);
        // `s` lists the failed objects first, then those under way, the done, all again.
        let filters: Vec<ObjectFilter> = (0..4)
            .map(|_| {
                app.handle_key(code(KeyCode::Char('s')));
                app.selection().objects.filter
            })
            .collect();
        use ObjectFilter::*;
        assert_eq!(filters, [Failed, UnderWay, Done, All]);
        app.handle_key(code(KeyCode::Char('s')));
        // `/` searches by key; the search and the filter are both asked of the engine.
        app.handle_key(code(KeyCode::Char('/')));
        for c in "gate".chars() {
            app.handle_key(code(KeyCode::Char(c)));
        }
        app.handle_key(code(KeyCode::Enter));
        let query = app.selection().objects;
        assert_eq!(
            (query.filter, query.search.as_str(), query.from),
            (Failed, "gate", 0)
        );
        // A full page: moving past its last object asks for the objects after it — once it
        // is the page read for this query, not the objects under way standing in for it.
        let full = LISTED_OBJECTS as u32;
        let mut standing_in = (*listed(query.clone(), 0, full)).clone();
        if let Some(detail) = &mut standing_in.job_detail {
            detail.loading = true;
        }
        app.on_snapshot(Arc::new(standing_in));
        for _ in 0..full {
            app.handle_key(code(KeyCode::Down));
        }
        assert_eq!(
            app.selection().objects.from,
            0,
            "no page turned while loading"
        );
        app.handle_key(code(KeyCode::Home));
        for _ in 0..full {
            app.handle_key(code(KeyCode::Up));
        }
        app.on_snapshot(listed(query.clone(), 0, full));
        for _ in 0..full {
            app.handle_key(code(KeyCode::Down));
        }
        assert_eq!(app.selection().objects.from, full, "the next page");
        assert_eq!(app.detail.as_ref().map(|d| d.file_cursor), Some(0));
        // A short page is the last: moving on stays.
        app.on_snapshot(listed(app.selection().objects, full, 3));
        for _ in 0..5 {
            app.handle_key(code(KeyCode::Down));
        }
        assert_eq!(app.selection().objects.from, full);
        assert_eq!(app.selected_file_index(), Some(full + 2));
        // Moving back before the first object returns to the page before.
        for _ in 0..3 {
            app.handle_key(code(KeyCode::Up));
        }
        assert_eq!(app.selection().objects.from, 0);
        // Esc in the search clears it, and lists from the first object again.
        app.handle_key(code(KeyCode::Char('/')));
        app.handle_key(code(KeyCode::Esc));
        let query = app.selection().objects;
        assert_eq!(
            (query.filter, query.search.as_str(), query.from),
            (Failed, "", 0)
        );
    }

    fn page(dirs: &[&str], objects: &[(&str, u64)], next: Option<&str>) -> Page {
        Page {
            dirs: dirs.iter().map(|d| d.to_string()).collect(),
            objects: objects
                .iter()
                .map(|(k, s)| ObjectInfo {
                    key: k.to_string(),
                    size: *s,
                    etag: "e".into(),
                    modified: None,
                })
                .collect(),
            next: next.map(str::to_string),
        }
    }

    #[test]
    fn the_browser_walks_buckets_and_prefixes_and_fetches_every_page() {
        let mut app = app();
        app.handle_key(key('2'));
        assert_eq!(app.screen, Screen::Browser);
        let request = app.browser.request;
        app.on_event(Event::Listing {
            request,
            location: "s3://".into(),
            page: Ok(page(&["media", "logs"], &[], None)),
        });
        assert_eq!(app.browser.entries[0].location, "s3://media/");
        let commands = app.handle_key(code(KeyCode::Enter));
        assert!(
            matches!(&commands[0], Command::Browse { location, .. } if location == "s3://media/")
        );
        let request = app.browser.request;
        let more = app.on_event(Event::Listing {
            request,
            location: "s3://media/".into(),
            page: Ok(page(&["2024/"], &[("a.mov", 5)], Some("t1"))),
        });
        assert!(
            matches!(&more[0], Command::Browse { token: Some(t), .. } if t == "t1"),
            "the next page is fetched"
        );
        app.on_event(Event::Listing {
            request,
            location: "s3://media/".into(),
            page: Ok(page(&["2025/"], &[("b.mov", 6)], None)),
        });
        let names: Vec<&str> = app
            .browser
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["2024/", "2025/", "a.mov", "b.mov"],
            "directories first"
        );
        assert!(!app.browser.loading);
        app.on_event(Event::Listing {
            request: request - 1,
            location: "s3://".into(),
            page: Ok(page(&["stale"], &[], None)),
        });
        assert_eq!(
            app.browser.entries.len(),
            4,
            "answers to old requests are ignored"
        );

        app.handle_key(key('/'));
        for c in "b.m".chars() {
            app.handle_key(key(c));
        }
        assert_eq!(app.browser.visible().len(), 1);
        app.handle_key(code(KeyCode::Enter));
        app.handle_key(key(' '));
        assert!(app.browser.marked.contains("s3://media/b.mov"));
        app.handle_key(key('c'));
        match &app.popup {
            Some(Popup::Destination(input)) => assert_eq!(input.value(), "az://media/"),
            other => panic!("no destination prompt: {other:?}"),
        }
        let commands = app.handle_key(code(KeyCode::Enter));
        assert_eq!(
            commands,
            vec![Command::Enqueue {
                source: "s3://media/b.mov".into(),
                destination: "az://media/b.mov".into(),
                options: JobOptions::with_chunk_size(8 << 20),
            }]
        );
        assert_eq!(app.screen, Screen::Jobs);
        let up = app.update(Action::Parent);
        assert!(matches!(&up[0], Command::Browse { location, .. } if location == "s3://"));
    }

    #[test]
    fn several_marked_entries_go_under_one_destination_prefix() {
        let mut app = app();
        let commands = app.browse("s3://my.bucket/photos/".into());
        assert_eq!(commands.len(), 1);
        let request = app.browser.request;
        app.on_event(Event::Listing {
            request,
            location: "s3://my.bucket/photos/".into(),
            page: Ok(page(&["photos/2024/"], &[("photos/x.jpg", 1)], None)),
        });
        app.screen = Screen::Browser;
        app.handle_key(key(' '));
        app.handle_key(key(' '));
        app.handle_key(key('c'));
        match &app.popup {
            Some(Popup::Destination(input)) => assert_eq!(input.value(), "az://my-bucket/photos/"),
            other => panic!("no destination prompt: {other:?}"),
        }
        let commands = app.handle_key(code(KeyCode::Enter));
        let routes: Vec<(String, String)> = commands
            .into_iter()
            .map(|c| match c {
                Command::Enqueue {
                    source,
                    destination,
                    ..
                } => (source, destination),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            routes,
            vec![
                (
                    "s3://my.bucket/photos/2024/".into(),
                    "az://my-bucket/photos/2024/".into()
                ),
                (
                    "s3://my.bucket/photos/x.jpg".into(),
                    "az://my-bucket/photos/x.jpg".into()
                ),
            ]
        );
    }

    #[test]
    fn parents_of_locations() {
        assert_eq!(parent("s3://b/a/c/"), "s3://b/a/");
        assert_eq!(parent("s3://b/"), "s3://");
        assert_eq!(parent("s3://"), "s3://");
        assert_eq!(parent("/data/in/"), "/data/");
        assert_eq!(parent("/data/"), "/");
    }
}
