//! One table of key bindings drives both the key handling and the help screen, so the two can
//! never drift apart. A key means an [`Action`] in a [`Context`]; the contexts active on a
//! screen are searched from the most specific to [`Context::Global`].

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a key can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Leave blobway (chunks in flight finish or return to pending); attached to a daemon,
    /// only detach.
    Quit,
    /// Stop the daemon (or the in-process engine) and leave; asks first.
    StopAll,
    /// Show or hide the key help.
    Help,
    /// Close the popup or go back one screen.
    Back,
    /// Move the cursor up.
    Up,
    /// Move the cursor down.
    Down,
    /// Move the cursor left (heat-map).
    Left,
    /// Move the cursor right (heat-map).
    Right,
    /// Move a page up.
    PageUp,
    /// Move a page down.
    PageDown,
    /// Move to the first entry (in the help: its top).
    Top,
    /// Move to the last entry (in the help: its end).
    Bottom,
    /// Open what is under the cursor.
    Open,
    /// Switch focus between the objects list and the heat-map.
    SwitchFocus,
    /// Go to the jobs list.
    ShowJobs,
    /// Go to the browser.
    ShowBrowser,
    /// Pause the selected job.
    PauseJob,
    /// Pause every job.
    PauseAll,
    /// Resume the selected job.
    ResumeJob,
    /// Resume every job.
    ResumeAll,
    /// Raise (positive) or lower the concurrency limit by this many (switches to manual).
    /// Every press counts: the engine adds the step to the limit it has.
    StepConcurrency(i32),
    /// Toggle the adaptive controller.
    ToggleAdaptive,
    /// Set the bandwidth cap (asks for it).
    SetBwLimit,
    /// Retry the failed chunks of the selected job.
    RetryFailed,
    /// Cancel the selected job (asks first).
    CancelJob,
    /// Mark or unmark the entry under the cursor.
    Mark,
    /// Mark every entry the filter lets through (again: unmark them).
    MarkAll,
    /// Start a range at the cursor; the second press marks every entry between.
    MarkRange,
    /// Filter the listing.
    Filter,
    /// List the job's objects in the next state (all, failed, under way, done).
    NextObjectFilter,
    /// Search the job's objects by key.
    SearchObjects,
    /// List the page's objects by state (failed first) or by their order in the job.
    SortByState,
    /// Move to the next failed object (objects list) or failed chunk (heat-map).
    NextFailed,
    /// Queue the marked entries (asks for the destination).
    Queue,
    /// Type a location to browse.
    GoTo,
    /// Go up one level in the browser.
    Parent,
}

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// Everywhere.
    Global,
    /// The jobs list.
    Jobs,
    /// A job's objects, heat-map and graphs.
    Detail,
    /// The heat-map, when it has the focus.
    HeatMap,
    /// The bucket and prefix browser.
    Browser,
}

impl Context {
    /// The title of this context on the help screen.
    pub fn title(self) -> &'static str {
        match self {
            Context::Global => "Everywhere",
            Context::Jobs => "Jobs",
            Context::Detail => "Job detail",
            Context::HeatMap => "Heat-map",
            Context::Browser => "Browser",
        }
    }
}

/// A key as the tables name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Tab.
    Tab,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
}

impl Key {
    /// The key of a terminal key event, if it is one the tables use.
    pub fn from_event(event: KeyEvent) -> Option<Self> {
        if event.modifiers.contains(KeyModifiers::CONTROL) {
            return match event.code {
                KeyCode::Char('c') => Some(Key::Char('q')),
                _ => None,
            };
        }
        Some(match event.code {
            KeyCode::Char(c) => Key::Char(c),
            KeyCode::Enter => Key::Enter,
            KeyCode::Esc => Key::Esc,
            KeyCode::Backspace => Key::Backspace,
            KeyCode::Tab | KeyCode::BackTab => Key::Tab,
            KeyCode::Up => Key::Up,
            KeyCode::Down => Key::Down,
            KeyCode::Left => Key::Left,
            KeyCode::Right => Key::Right,
            KeyCode::PageUp => Key::PageUp,
            KeyCode::PageDown => Key::PageDown,
            KeyCode::Home => Key::Home,
            KeyCode::End => Key::End,
            _ => return None,
        })
    }

    /// How the help screen shows this key.
    pub fn label(self) -> String {
        match self {
            Key::Char(' ') => "Space".into(),
            Key::Char(c) => c.to_string(),
            Key::Enter => "Enter".into(),
            Key::Esc => "Esc".into(),
            Key::Backspace => "Backspace".into(),
            Key::Tab => "Tab".into(),
            Key::Up => "↑".into(),
            Key::Down => "↓".into(),
            Key::Left => "←".into(),
            Key::Right => "→".into(),
            Key::PageUp => "PgUp".into(),
            Key::PageDown => "PgDn".into(),
            Key::Home => "Home".into(),
            Key::End => "End".into(),
        }
    }
}

/// One binding: in `context`, any of `keys` means `action`.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    /// Where it applies.
    pub context: Context,
    /// The keys.
    pub keys: &'static [Key],
    /// What they do.
    pub action: Action,
    /// What the help screen says.
    pub help: &'static str,
}

const fn bind(
    context: Context,
    keys: &'static [Key],
    action: Action,
    help: &'static str,
) -> Binding {
    Binding {
        context,
        keys,
        action,
        help,
    }
}

use Context::{Browser, Detail, Global, HeatMap, Jobs};

/// How far the shifted concurrency keys step.
pub const STEP: i32 = 8;

/// Every binding, in the order the help screen lists them.
pub const BINDINGS: &[Binding] = &[
    bind(
        Global,
        &[Key::Char('?')],
        Action::Help,
        "show or hide this help",
    ),
    bind(
        Global,
        &[Key::Char('q')],
        Action::Quit,
        "quit; with a daemon only detach (its jobs keep running)",
    ),
    bind(
        Global,
        &[Key::Char('Q')],
        Action::StopAll,
        "stop the daemon and its jobs, and quit (asks first; nothing is lost)",
    ),
    bind(
        Global,
        &[Key::Char('P')],
        Action::PauseAll,
        "pause every job (no new chunk starts; in-flight chunks finish)",
    ),
    bind(
        Global,
        &[Key::Char('R')],
        Action::ResumeAll,
        "resume every job",
    ),
    bind(
        Global,
        &[Key::Char('+'), Key::Char('=')],
        Action::StepConcurrency(1),
        "raise the concurrency limit by 1 (manual; every press counts)",
    ),
    bind(
        Global,
        &[Key::Char('-')],
        Action::StepConcurrency(-1),
        "lower the concurrency limit by 1 (manual)",
    ),
    bind(
        Global,
        &[Key::Char('*')],
        Action::StepConcurrency(STEP),
        "raise the concurrency limit by 8 (Shift; in the browser * marks all)",
    ),
    bind(
        Global,
        &[Key::Char('_')],
        Action::StepConcurrency(-STEP),
        "lower the concurrency limit by 8 (Shift)",
    ),
    bind(
        Global,
        &[Key::Char('a')],
        Action::ToggleAdaptive,
        "switch the concurrency between adaptive and manual",
    ),
    bind(
        Global,
        &[Key::Char('B')],
        Action::SetBwLimit,
        "set the bandwidth cap: a rate, off, or a timetable (asks for it)",
    ),
    bind(Global, &[Key::Char('1')], Action::ShowJobs, "show the jobs"),
    bind(
        Global,
        &[Key::Char('2'), Key::Char('b')],
        Action::ShowBrowser,
        "show the browser",
    ),
    bind(Global, &[Key::Up, Key::Char('k')], Action::Up, "move up"),
    bind(
        Global,
        &[Key::Down, Key::Char('j')],
        Action::Down,
        "move down",
    ),
    bind(Global, &[Key::PageUp], Action::PageUp, "page up"),
    bind(Global, &[Key::PageDown], Action::PageDown, "page down"),
    bind(
        Global,
        &[Key::Home, Key::Char('g')],
        Action::Top,
        "go to the first entry",
    ),
    bind(
        Global,
        &[Key::End, Key::Char('G')],
        Action::Bottom,
        "go to the last entry",
    ),
    bind(
        Global,
        &[Key::Esc],
        Action::Back,
        "close the popup or go back",
    ),
    bind(
        Jobs,
        &[Key::Enter],
        Action::Open,
        "open the job: objects, heat-map, graphs",
    ),
    bind(
        Jobs,
        &[Key::Char('p')],
        Action::PauseJob,
        "pause the selected job",
    ),
    bind(
        Jobs,
        &[Key::Char('r')],
        Action::ResumeJob,
        "resume the selected job",
    ),
    bind(
        Jobs,
        &[Key::Char('f')],
        Action::RetryFailed,
        "retry the failed chunks of the selected job",
    ),
    bind(
        Jobs,
        &[Key::Char('x')],
        Action::CancelJob,
        "cancel the selected job (asks first)",
    ),
    bind(
        Detail,
        &[Key::Tab],
        Action::SwitchFocus,
        "switch between the objects and the heat-map",
    ),
    bind(
        Detail,
        &[Key::Char('p')],
        Action::PauseJob,
        "pause this job",
    ),
    bind(
        Detail,
        &[Key::Char('r')],
        Action::ResumeJob,
        "resume this job",
    ),
    bind(
        Detail,
        &[Key::Char('f')],
        Action::RetryFailed,
        "retry the failed chunks of this job",
    ),
    bind(
        Detail,
        &[Key::Char('x')],
        Action::CancelJob,
        "cancel this job (asks first)",
    ),
    bind(
        Detail,
        &[Key::Char('s')],
        Action::NextObjectFilter,
        "list all objects, the failed, those under way, the done",
    ),
    bind(
        Detail,
        &[Key::Char('/')],
        Action::SearchObjects,
        "search the objects by key (Esc clears)",
    ),
    bind(
        Detail,
        &[Key::Char('S')],
        Action::SortByState,
        "sort the listed page by state (failed first) or back to job order",
    ),
    bind(
        Detail,
        &[Key::Char('n')],
        Action::NextFailed,
        "go to the next failed object",
    ),
    bind(Detail, &[Key::Backspace], Action::Back, "back to the jobs"),
    bind(
        HeatMap,
        &[Key::Left, Key::Char('h')],
        Action::Left,
        "previous cell",
    ),
    bind(
        HeatMap,
        &[Key::Right, Key::Char('l')],
        Action::Right,
        "next cell",
    ),
    bind(
        HeatMap,
        &[Key::Enter],
        Action::Open,
        "inspect the chunk under the cursor",
    ),
    bind(
        HeatMap,
        &[Key::Char('n')],
        Action::NextFailed,
        "go to the next failed chunk",
    ),
    bind(
        Browser,
        &[Key::Enter, Key::Right],
        Action::Open,
        "open the bucket or prefix",
    ),
    bind(
        Browser,
        &[Key::Backspace, Key::Left],
        Action::Parent,
        "go up one level",
    ),
    bind(
        Browser,
        &[Key::Char(' ')],
        Action::Mark,
        "mark or unmark for copying (buckets too)",
    ),
    bind(
        Browser,
        &[Key::Char('*')],
        Action::MarkAll,
        "mark every entry shown (the filter's); again unmarks them",
    ),
    bind(
        Browser,
        &[Key::Char('v')],
        Action::MarkRange,
        "start a range here; v again marks every entry in between",
    ),
    bind(
        Browser,
        &[Key::Char('/')],
        Action::Filter,
        "filter the entries",
    ),
    bind(
        Browser,
        &[Key::Char('c')],
        Action::Queue,
        "copy the marked entries, or the one under the cursor (asks where)",
    ),
    bind(
        Browser,
        &[Key::Char('o')],
        Action::GoTo,
        "open a location (s3://…, az://…, a path; Tab completes)",
    ),
];

/// The action `key` means in the first of `contexts` that binds it.
pub fn lookup(contexts: &[Context], key: Key) -> Option<Action> {
    contexts.iter().find_map(|context| {
        BINDINGS
            .iter()
            .find(|b| b.context == *context && b.keys.contains(&key))
            .map(|b| b.action)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_contexts_win_over_global_ones() {
        assert_eq!(
            lookup(&[HeatMap, Detail, Global], Key::Enter),
            Some(Action::Open)
        );
        assert_eq!(lookup(&[Detail, Global], Key::Esc), Some(Action::Back));
        assert_eq!(lookup(&[Browser, Global], Key::Left), Some(Action::Parent));
        assert_eq!(lookup(&[HeatMap, Global], Key::Left), Some(Action::Left));
        assert_eq!(lookup(&[Jobs, Global], Key::Char('Z')), None);
    }

    #[test]
    fn no_key_means_two_things_in_one_context() {
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                if a.context == b.context {
                    for key in a.keys {
                        assert!(
                            !b.keys.contains(key),
                            "{key:?} is bound twice in {:?}",
                            a.context
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ctrl_c_quits() {
        let event = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(Key::from_event(event), Some(Key::Char('q')));
    }
}
