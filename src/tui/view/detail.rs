//! One job: its objects, the chunk heat-map of the selected object, and the graphs of
//! throughput, chunk latency and concurrency with the controller's decisions marked.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph, TableState, Widget};

use super::columns::{self, Column, plain};
use super::{bar, flow, row_style, tail};
use crate::engine::Decision;
use crate::engine::metrics::Series;
use crate::size::human;
use crate::state::{ChunkState, FileState};
use crate::tui::app::{App, Focus, HeatMapGeometry};
use crate::tui::heatmap::{self, Slot};
use crate::tui::theme;

pub(super) fn draw(frame: &mut Frame, app: &mut App, area: Rect) {
    let graphs_height = if area.height >= 30 { 12 } else { 8 };
    let [header, middle, graphs] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(graphs_height),
    ])
    .areas(area);
    draw_header(frame, app, header);
    // The names get what they need, up to what the heat-map leaves; the heat-map the rest.
    let columns = file_columns(app);
    let title = objects_title(
        app.snapshot.job_detail.as_ref(),
        app.detail.as_ref().is_some_and(|d| d.by_state),
    );
    let needed = columns::natural_width(&columns)
        .max(title.0.chars().count() as u16 + 2)
        .max(title.1.chars().count() as u16 + 2);
    let files_width = (needed + 2).min(middle.width.saturating_sub(heatmap_width(app, middle)));
    let [files_area, heat_area] =
        Layout::horizontal([Constraint::Length(files_width), Constraint::Min(0)]).areas(middle);
    draw_files(frame, app, columns, title, files_area);
    draw_heatmap(frame, app, heat_area);
    draw_graphs(frame, &app.snapshot.series, graphs);
}

fn draw_header(frame: &mut Frame, app: &App, area: Rect) {
    let Some(job) = app.selected_job() else {
        frame.render_widget(Paragraph::new(" loading…").style(theme::dim()), area);
        return;
    };
    let p = &job.progress;
    // The numbers first: what is cut at the right edge is the route's end.
    let line = Line::from(vec![
        Span::styled(format!(" Job {} ", job.id), theme::title()),
        Span::styled(job.phase(), theme::job_state(job.state)),
        Span::raw(format!(
            "  {} {}/{}  ",
            bar(p.bytes_done, p.bytes_total, 10),
            human(p.bytes_done),
            human(p.bytes_total),
        )),
        Span::styled(
            match job.carried.label() {
                "" => String::new(),
                label => format!("{label}  "),
            },
            theme::dim(),
        ),
        Span::raw(format!("{} → {}", job.source, job.destination)),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// How wide the heat-map must be: as wide as the selected object's chunks need at the
/// height there is (at least enough for its title), at most half.
fn heatmap_width(app: &App, middle: Rect) -> u16 {
    let most = middle.width / 2;
    let Some(chunks) = app.snapshot.file_chunks.as_ref() else {
        return middle.width / 2;
    };
    let rows = middle.height.saturating_sub(2 + 3).max(1) as usize;
    let per_row = u16::try_from(chunks.cells.len().div_ceil(rows)).unwrap_or(u16::MAX);
    per_row
        .saturating_add(2)
        .clamp(HEATMAP_LEAST.min(most), most.max(1))
}

/// The least width of the heat-map: its title's numbers.
const HEATMAP_LEAST: u16 = 40;

/// The objects table's columns, for the listed page in the order shown.
fn file_columns(app: &App) -> Vec<Column> {
    let files = app.listed_files();
    vec![
        Column::flexible(
            "OBJECT",
            files.iter().map(|f| plain(f.key.clone())).collect(),
            16,
        ),
        Column::droppable(
            "SIZE",
            files.iter().map(|f| plain(human(f.size))).collect(),
            2,
        ),
        Column::kept(
            "STATE",
            files
                .iter()
                .map(|f| (f.state.name().to_string(), theme::file_state(f.state)))
                .collect(),
        ),
        Column::kept(
            "CHUNKS",
            files
                .iter()
                .map(|f| {
                    match f.chunks_read || f.state.is_finished() && f.state != FileState::Failed {
                        true => plain(format!("{}/{}", f.chunks_done, f.chunk_count)),
                        // Listed without its chunks: select it to see them.
                        false => plain(format!("?/{}", f.chunk_count)),
                    }
                })
                .collect(),
        ),
        Column::droppable(
            "RETRIED",
            files
                .iter()
                .map(|f| match f.retried {
                    0 => plain(String::new()),
                    n => (format!("↻{n}"), theme::error()),
                })
                .collect(),
            1,
        ),
    ]
}

fn draw_files(
    frame: &mut Frame,
    app: &App,
    columns: Vec<Column>,
    (title, query): (String, String),
    area: Rect,
) {
    let focused = app.detail.as_ref().is_some_and(|d| d.focus == Focus::Files);
    let cursor = app.detail.as_ref().map_or(0, |d| d.file_cursor);
    // As many rows as the page lists (in whichever order they are shown).
    let rows = app
        .snapshot
        .job_detail
        .as_ref()
        .map_or(0, |d| d.files.len());
    let styles: Vec<Style> = (0..rows)
        .map(|i| row_style(i == cursor && focused))
        .collect();
    let block = focus_block(
        Block::bordered()
            .title(Span::styled(title, theme::title()))
            .title_bottom(Span::styled(query, theme::key())),
        focused,
    );
    let width = block.inner(area).width;
    let table = columns::table(columns, &styles, width).block(block);
    let mut state = TableState::default().with_selected(Some(cursor));
    frame.render_stateful_widget(table, area, &mut state);
}

/// `Objects (1,000 of 2,345,678 failed)` and, for the bottom line, `"gateway" · from #5,001 ·
/// by state`: what the list holds of which objects.
fn objects_title(
    listed: Option<&crate::engine::snapshot::JobDetail>,
    by_state: bool,
) -> (String, String) {
    let Some(listed) = listed else {
        return (" Objects ".to_string(), String::new());
    };
    let shown = listed.files.len();
    let query = &listed.query;
    let mut parts = Vec::new();
    let of = match listed.matching {
        Some(n) if n as usize != shown || query.from > 0 => format!(" of {}", thousands(n)),
        _ => String::new(),
    };
    let filter = match query.filter {
        crate::engine::snapshot::ObjectFilter::All => String::new(),
        other => format!(" {}", other.name()),
    };
    let counts = format!(" Objects ({}{of}{filter}) ", thousands(shown as u64));
    if !query.search.is_empty() {
        parts.push(format!("\"{}\"", query.search));
    }
    if query.from > 0 {
        parts.push(format!("from #{}", thousands(u64::from(query.from) + 1)));
    }
    if by_state {
        parts.push("by state".to_string());
    }
    if listed.loading {
        parts.push("reading…".to_string());
    }
    let rest = match parts.is_empty() {
        true => String::new(),
        false => format!(" {} ", parts.join(" · ")),
    };
    (counts, rest)
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn focus_block(block: Block<'_>, focused: bool) -> Block<'_> {
    if focused {
        block.border_style(Style::new().fg(Color::Cyan))
    } else {
        block.border_style(theme::dim())
    }
}

fn draw_heatmap(frame: &mut Frame, app: &mut App, area: Rect) {
    let focused = app
        .detail
        .as_ref()
        .is_some_and(|d| d.focus == Focus::HeatMap);
    let cursor = app.detail.as_ref().map(|d| d.chunk_cursor);
    let Some(chunks) = app.snapshot.file_chunks.as_ref() else {
        let block = focus_block(
            Block::bordered().title(Span::styled(" Chunks ", theme::title())),
            focused,
        );
        frame.render_widget(
            Paragraph::new(" select an object")
                .style(theme::dim())
                .block(block),
            area,
        );
        return;
    };
    let legend = legend(area.width);
    let legend_height = legend.len() as u16;
    let legend = Paragraph::new(legend);
    let [map_area, legend_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(legend_height)]).areas(area);
    let inner = Block::bordered().inner(map_area);
    let capacity = (inner.width as usize * inner.height as usize).max(1);
    let per_slot = heatmap::chunks_per_slot(chunks.cells.len(), capacity);
    app.heatmap = HeatMapGeometry {
        columns: inner.width.max(1) as usize,
        per_slot,
    };
    let slots = heatmap::slots(&chunks.cells, capacity);
    let plural = if chunks.cells.len() == 1 { "" } else { "s" };
    let counts = format!(
        " {} chunk{plural} × {}, {} per cell · ",
        chunks.cells.len(),
        human(chunks.chunk_size),
        per_slot
    );
    // The key gets the room the numbers leave (none: the numbers alone).
    let room = (map_area.width as usize).saturating_sub(counts.chars().count() + 3);
    let title = match room {
        0..4 => counts.trim_end_matches([' ', '·']).to_string() + " ",
        _ => format!("{counts}{} ", tail(&chunks.key, room)),
    };
    let block = focus_block(
        Block::bordered().title(Span::styled(title, theme::title())),
        focused,
    );
    frame.render_widget(block, map_area);
    let cursor_slot = cursor.filter(|_| focused).map(|c| c as usize / per_slot);
    frame.render_widget(
        HeatMap {
            slots: &slots,
            cursor: cursor_slot,
        },
        inner,
    );
    frame.render_widget(legend, legend_area);
}

/// A line of a chart.
fn line<'a>(name: &'static str, color: Color, data: &'a [(f64, f64)]) -> Dataset<'a> {
    Dataset::default()
        .name(name)
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(color))
        .data(data)
}

/// The cells of the heat-map, drawn straight into the buffer.
struct HeatMap<'a> {
    slots: &'a [Slot],
    cursor: Option<usize>,
}

impl Widget for HeatMap<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width == 0 {
            return;
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let (x, y) = (i as u16 % area.width, i as u16 / area.width);
            if y >= area.height {
                break;
            }
            let (symbol, color) = theme::cell(slot.state, slot.attempts);
            let cell = &mut buf[(area.x + x, area.y + y)];
            cell.set_symbol(symbol).set_fg(color);
            if self.cursor == Some(i) {
                cell.set_symbol("▣").set_fg(Color::White).set_bg(color);
            }
        }
    }
}

/// The heat-map's legend and keys, laid out in `width`: no entry is split across lines.
fn legend(width: u16) -> Vec<Line<'static>> {
    let entries = [
        (ChunkState::Pending, 0, "pending"),
        (ChunkState::InProgress, 1, "in flight"),
        (ChunkState::Completed, 1, "completed"),
        (ChunkState::Completed, 3, "completed after retries"),
        (ChunkState::Pending, 2, "waiting to retry"),
        (ChunkState::Failed, 10, "failed"),
    ];
    let mut items: Vec<Vec<Span<'static>>> = entries
        .into_iter()
        .map(|(state, attempts, label)| {
            let (symbol, color) = theme::cell(state, attempts);
            vec![
                Span::styled(symbol, Style::new().fg(color)),
                Span::raw(format!(" {label}")),
            ]
        })
        .collect();
    let mut lines = flow(std::mem::take(&mut items), width);
    let keys = [
        ("Tab", "focus"),
        ("←↑↓→", "move"),
        ("Enter", "inspect chunk"),
        ("n", "next failed"),
        ("s/S", "filter/sort"),
        ("Esc", "back"),
    ]
    .into_iter()
    .map(|(key, what)| {
        vec![
            Span::styled(key, theme::key()),
            Span::raw(format!(" {what}")),
        ]
    })
    .collect();
    lines.extend(flow(keys, width));
    lines
}

fn draw_graphs(frame: &mut Frame, series: &Series, area: Rect) {
    let [throughput, latency, concurrency] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(area);
    let points = &series.points;
    let (start, end) = match (points.first(), points.last()) {
        (Some(first), Some(last)) => (
            f64::from(first.t),
            f64::from(last.t).max(f64::from(first.t) + 1.0),
        ),
        _ => (0.0, 1.0),
    };
    let span_label = format!("-{}s", (end - start) as u64);

    let mib: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (f64::from(p.t), p.mib_per_s))
        .collect();
    let p50: Vec<(f64, f64)> = points.iter().map(|p| (f64::from(p.t), p.p50_ms)).collect();
    let p95: Vec<(f64, f64)> = points.iter().map(|p| (f64::from(p.t), p.p95_ms)).collect();
    let limit: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (f64::from(p.t), f64::from(p.limit)))
        .collect();
    let in_flight: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (f64::from(p.t), f64::from(p.in_flight)))
        .collect();
    let marks: Vec<(Decision, Vec<(f64, f64)>)> = [
        Decision::ThrottleCut,
        Decision::ErrorCut,
        Decision::Increase,
        Decision::Operator,
        Decision::Ease,
        Decision::Probe,
    ]
    .into_iter()
    .map(|decision| {
        let at: Vec<(f64, f64)> = series
            .marks
            .iter()
            .filter(|m| m.decision == decision)
            .map(|m| {
                let y = points
                    .iter()
                    .find(|p| p.t >= m.t)
                    .map_or(0.0, |p| f64::from(p.limit));
                (f64::from(m.t), y)
            })
            .collect();
        (decision, at)
    })
    .collect();

    let max = |values: &[(f64, f64)]| values.iter().map(|v| v.1).fold(1.0, f64::max);
    let x_axis = || {
        Axis::default()
            .bounds([start, end])
            .labels([Span::raw(span_label.clone()), Span::raw("now")])
            .style(theme::dim())
    };
    let y_axis = |top: f64, unit: &str| {
        Axis::default()
            .bounds([0.0, top * 1.15])
            .labels([Span::raw("0"), Span::raw(format!("{top:.0}{unit}"))])
            .style(theme::dim())
    };

    let top = max(&mib);
    let chart = Chart::new(vec![line("MiB/s", Color::Green, &mib)])
        .block(Block::bordered().title(Span::styled(" MiB/s ", theme::title())))
        .x_axis(x_axis())
        .y_axis(y_axis(top, ""))
        .legend_position(None);
    frame.render_widget(chart, throughput);

    let top = max(&p95).max(max(&p50));
    let chart = Chart::new(vec![
        line("p50", Color::Cyan, &p50),
        line("p95", Color::Magenta, &p95),
    ])
    .block(Block::bordered().title(Line::from(vec![
        Span::styled(" Latency ms ", theme::title()),
        Span::styled("p50", Style::new().fg(Color::Cyan)),
        Span::raw(" "),
        Span::styled("p95 ", Style::new().fg(Color::Magenta)),
    ])))
    .x_axis(x_axis())
    .y_axis(y_axis(top, "ms"))
    .legend_position(None);
    frame.render_widget(chart, latency);

    let top = max(&limit).max(max(&in_flight));
    let mut datasets = vec![
        line("limit", Color::Yellow, &limit),
        line("in flight", Color::Cyan, &in_flight),
    ];
    for (decision, at) in &marks {
        if at.is_empty() {
            continue;
        }
        let (name, color) = theme::decision(*decision);
        datasets.push(
            Dataset::default()
                .name(name)
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(color))
                .data(at),
        );
    }
    let mut title = vec![
        Span::styled(" Limit", Style::new().fg(Color::Yellow)),
        Span::raw(" "),
        Span::styled("in flight", Style::new().fg(Color::Cyan)),
    ];
    for (decision, at) in &marks {
        if !at.is_empty() {
            let (name, color) = theme::decision(*decision);
            title.push(Span::styled(format!(" ■{name}"), Style::new().fg(color)));
        }
    }
    title.push(Span::raw(" "));
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(Line::from(title)))
        .x_axis(x_axis())
        .y_axis(y_axis(top, ""))
        .legend_position(None);
    frame.render_widget(chart, concurrency);
}
