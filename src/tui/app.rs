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
use crate::engine::snapshot::{self, JobView, ObjectQuery, Selection, Snapshot};
use crate::engine::{Command, Event};
use crate::state::{JobId, JobOptions};
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
    /// The key help.
    Help,
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
    pub notices: VecDeque<String>,
    /// The heat-map's last layout.
    pub heatmap: HeatMapGeometry,
    /// Set when the operator asked to quit.
    pub quit: bool,
    /// Set when the operator confirmed stopping the engine (the daemon, when attached).
    pub stop: bool,
    options: AppOptions,
    next_request: u64,
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
            heatmap: HeatMapGeometry::default(),
            quit: false,
            stop: false,
            options,
            next_request: 0,
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
        let files = &listed.files;
        files
            .get(detail.file_cursor.min(files.len().saturating_sub(1)))
            .map(|f| f.index)
    }

    fn notice(&mut self, message: impl Into<String>) {
        self.notices.push_back(message.into());
        while self.notices.len() > NOTICES {
            self.notices.pop_front();
        }
    }

    // ---- input --------------------------------------------------------------------------------

    /// Handles a key press.
    pub fn handle_key(&mut self, event: KeyEvent) -> Vec<Command> {
        if let Some(commands) = self.handle_text(event) {
            return commands;
        }
        let Some(key) = Key::from_event(event) else {
            return Vec::new();
        };
        match (&self.popup, key) {
            (Some(Popup::Help), _) => {
                self.popup = None;
                return Vec::new();
            }
            (Some(Popup::ConfirmCancel(job)), Key::Char('y')) => {
                let job = *job;
                self.popup = None;
                self.notice(format!("job {job}: cancelling"));
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
        let input = match popup {
            Popup::Destination(input)
            | Popup::Filter(input)
            | Popup::GoTo(input)
            | Popup::BwLimit(input)
            | Popup::Search(input) => input,
            _ => return None,
        };
        match key {
            Some(Key::Esc) => {
                match popup {
                    Popup::Filter(_) => self.browser.filter.clear(),
                    Popup::Search(_) => self.set_objects(|q| q.search.clear()),
                    _ => {}
                }
                self.popup = None;
                Some(Vec::new())
            }
            Some(Key::Enter) => {
                let value = input.value().trim().to_string();
                let popup = self.popup.take();
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
                            self.notice(why);
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
                    Some(Popup::Help) => None,
                    _ => Some(Popup::Help),
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
            Action::ConcurrencyUp => vec![Command::SetConcurrency(
                self.snapshot.limit.saturating_add(1).max(1),
            )],
            Action::ConcurrencyDown => vec![Command::SetConcurrency(
                self.snapshot.limit.saturating_sub(1).max(1),
            )],
            Action::ToggleAdaptive => vec![Command::SetAdaptive(!self.snapshot.adaptive)],
            Action::Mark => {
                if let Some(entry) = self
                    .browser
                    .visible()
                    .get(self.browser.cursor)
                    .map(|e| e.location.clone())
                    && !is_root(&self.browser.location)
                {
                    if !self.browser.marked.remove(&entry) {
                        self.browser.marked.insert(entry);
                    }
                    self.move_cursor(1);
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
            Action::SearchObjects => {
                if let Some(detail) = &self.detail {
                    self.popup = Some(Popup::Search(Input::new(detail.objects.search.clone())));
                }
                Vec::new()
            }
            Action::SetBwLimit => {
                let now = match self.snapshot.bwlimit.as_str() {
                    "" => "off".to_string(),
                    text => text.to_string(),
                };
                self.popup = Some(Popup::BwLimit(Input::new(now)));
                Vec::new()
            }
            Action::GoTo => {
                self.popup = Some(Popup::GoTo(Input::new(self.browser.location.clone())));
                Vec::new()
            }
            Action::Queue => {
                if is_root(&self.browser.location) {
                    return Vec::new();
                }
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
                let up = parent(&self.browser.location);
                if up != self.browser.location {
                    return self.browse(up);
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
            Screen::Detail => self.screen = Screen::Jobs,
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
                Vec::new()
            }
        }
    }

    /// The destination proposed for the marked entries: the same container and key under
    /// Azure (or under the local destination folder).
    fn proposed_destination(&self) -> String {
        let single = (self.browser.marked.len() == 1)
            .then(|| self.browser.marked.iter().next().cloned())
            .flatten();
        let source = single.unwrap_or_else(|| self.browser.location.clone());
        if let Some(rest) = source
            .strip_prefix("s3://")
            .or_else(|| source.strip_prefix("az://"))
        {
            let (container, key) = rest.split_once('/').unwrap_or((rest, ""));
            return format!("az://{}/{key}", container_name(container));
        }
        let relative = source
            .strip_prefix(self.options.browse_root.trim_end_matches('/'))
            .unwrap_or(&source)
            .trim_start_matches('/');
        match &self.options.local_destination {
            Some(root) => format!("{}/{relative}", root.trim_end_matches('/')),
            None => source.clone(),
        }
    }

    /// Queues every marked entry to `destination`.
    fn queue(&mut self, destination: &str) -> Vec<Command> {
        if destination.is_empty() {
            return Vec::new();
        }
        let marked = std::mem::take(&mut self.browser.marked);
        let single = marked.len() == 1;
        let base = self.browser.location.clone();
        let options = JobOptions::with_chunk_size(self.options.chunk_size);
        let mut commands = Vec::new();
        for source in marked {
            let target = if single {
                destination.to_string()
            } else {
                let relative = source.strip_prefix(&base).unwrap_or(&source);
                format!("{}/{relative}", destination.trim_end_matches('/'))
            };
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
        self.snapshot = snapshot;
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
                "job {job}: planned {} objects, {} to copy",
                summary.files, summary.to_copy
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
                self.notice(format!("concurrency {reason}"))
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
        assert_eq!(app.handle_key(key('+')), vec![Command::SetConcurrency(17)]);
        assert_eq!(app.handle_key(key('-')), vec![Command::SetConcurrency(15)]);
        assert_eq!(app.handle_key(key('a')), vec![Command::SetAdaptive(false)]);
        assert_eq!(app.handle_key(key('f')), vec![Command::RetryFailed(2)]);
    }

    #[test]
    fn the_bandwidth_cap_key_asks_for_a_cap_and_names_a_mistake() {
        let mut app = app();
        assert!(app.handle_key(key('B')).is_empty());
        assert!(matches!(&app.popup, Some(Popup::BwLimit(input)) if input.value() == "off"));
        for _ in 0.."off".len() {
            app.handle_key(code(KeyCode::Backspace));
        }
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
            app.notices.back().is_some_and(|n| n.contains("not a size")),
            "{:?}",
            app.notices
        );
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
    fn help_toggles_and_any_key_closes_it() {
        let mut app = app();
        app.handle_key(key('?'));
        assert!(matches!(app.popup, Some(Popup::Help)));
        assert!(
            app.handle_key(key('P')).is_empty(),
            "the key only closes the help"
        );
        assert!(app.popup.is_none());
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
            Some(Popup::Destination(input)) => assert_eq!(input.value(), "az://media/b.mov"),
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
