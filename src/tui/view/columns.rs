//! Tables that fit their width: every column is as wide as its widest value, and when the
//! width runs out the columns least needed are dropped (as k9s does) — a number is never
//! cut. One flexible column (a name or a route) takes what is left and loses its start.

use ratatui::layout::Constraint;
use ratatui::style::Style;
use ratatui::text::Text;
use ratatui::widgets::{Cell, Row, Table};

use super::{head, tail};
use crate::tui::theme;

/// Space between columns.
const SPACING: u16 = 1;

/// One column: its header, one value per row, and when it goes.
pub(super) struct Column {
    /// The header.
    pub header: &'static str,
    /// One value per row, with its style.
    pub values: Vec<(String, Style)>,
    /// 0: always shown; otherwise dropped before the columns of a lower number.
    pub drop: u8,
    /// The flexible column and the least it needs: it takes what the others leave.
    pub flex: Option<u16>,
    /// How a flexible column's values are cut.
    pub cut: Cut,
    /// The least width, so a column whose values come and go does not move the others.
    pub least: u16,
}

/// Where a value too long for its column loses characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cut {
    /// At its start (keys and paths differ at their end).
    Start,
    /// At its end (sentences).
    End,
    /// In its middle (a route: where from and where to).
    Middle,
}

impl Column {
    /// A column kept whatever the width.
    pub fn kept(header: &'static str, values: Vec<(String, Style)>) -> Self {
        Self {
            header,
            values,
            drop: 0,
            flex: None,
            cut: Cut::Start,
            least: 0,
        }
    }

    /// A column dropped when the width runs out, before those of a lower `drop`.
    pub fn droppable(header: &'static str, values: Vec<(String, Style)>, drop: u8) -> Self {
        Self {
            header,
            values,
            drop,
            flex: None,
            cut: Cut::Start,
            least: 0,
        }
    }

    /// The column that takes the width left, and needs at least `min`.
    pub fn flexible(header: &'static str, values: Vec<(String, Style)>, min: u16) -> Self {
        Self {
            header,
            values,
            drop: 0,
            flex: Some(min),
            cut: Cut::Start,
            least: 0,
        }
    }

    /// Cut, this column loses `cut` of its values.
    pub fn cut(mut self, cut: Cut) -> Self {
        self.cut = cut;
        self
    }

    /// The column is at least `least` wide.
    pub fn at_least(mut self, least: u16) -> Self {
        self.least = least;
        self
    }

    fn natural(&self) -> u16 {
        let widest = self
            .values
            .iter()
            .map(|(v, _)| Text::raw(v.as_str()).width())
            .max()
            .unwrap_or(0);
        (widest.max(self.header.chars().count()) as u16).max(self.least)
    }
}

/// The width `columns` take when nothing is dropped or cut.
pub(super) fn natural_width(columns: &[Column]) -> u16 {
    let widths: Vec<u16> = columns.iter().map(Column::natural).collect();
    widths.iter().sum::<u16>() + SPACING * (widths.len() as u16).saturating_sub(1)
}

/// A value without a style of its own.
pub(super) fn plain(text: String) -> (String, Style) {
    (text, Style::new())
}

/// Cuts `text` to `width` characters by taking out its middle.
fn middle(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width || width < 3 {
        return text.to_string();
    }
    let front = (width - 1) / 2;
    let back = width - 1 - front;
    let start: String = text.chars().take(front).collect();
    let end: String = text.chars().skip(count - back).collect();
    format!("{start}…{end}")
}

/// The widths of `columns` in `width`: `None` for a dropped column.
fn widths(columns: &[Column], width: u16) -> Vec<Option<u16>> {
    let mut kept: Vec<Option<u16>> = columns
        .iter()
        .map(|c| Some(c.flex.unwrap_or_else(|| c.natural())))
        .collect();
    let needed = |kept: &[Option<u16>]| -> u16 {
        let shown: Vec<u16> = kept.iter().flatten().copied().collect();
        shown.iter().sum::<u16>() + SPACING * (shown.len() as u16).saturating_sub(1)
    };
    while needed(&kept) > width {
        let next = columns
            .iter()
            .enumerate()
            .filter(|(i, c)| c.drop > 0 && kept[*i].is_some())
            .max_by_key(|(i, c)| (c.drop, *i))
            .map(|(i, _)| i);
        match next {
            Some(i) => kept[i] = None,
            None => break,
        }
    }
    // The flexible column gets what is left.
    if let Some(i) = columns.iter().position(|c| c.flex.is_some()) {
        let least = kept[i].unwrap_or(0);
        let others = needed(&kept) - least;
        kept[i] = Some(width.saturating_sub(others).max(least));
    }
    kept
}

/// The table of `columns` fitted to `width`; `row_styles` styles whole rows (the cursor).
pub(super) fn table<'a>(columns: Vec<Column>, row_styles: &[Style], width: u16) -> Table<'a> {
    let widths = widths(&columns, width);
    let shown: Vec<(&Column, u16)> = columns
        .iter()
        .zip(&widths)
        .filter_map(|(c, w)| w.map(|w| (c, w)))
        .collect();
    let header = Row::new(
        shown
            .iter()
            .map(|(c, _)| Cell::from(c.header).style(theme::header())),
    );
    let rows = (0..row_styles.len()).map(|row| {
        Row::new(shown.iter().map(|(c, w)| {
            let (value, style) = c.values.get(row).cloned().unwrap_or_default();
            let value = match (c.flex, c.cut) {
                (Some(_), Cut::End) => head(&value, *w as usize),
                (Some(_), Cut::Start) => tail(&value, *w as usize),
                (Some(_), Cut::Middle) => middle(&value, *w as usize),
                (None, _) => value,
            };
            Cell::from(value).style(style)
        }))
        .style(row_styles[row])
    });
    Table::new(rows, shown.iter().map(|(_, w)| Constraint::Length(*w)))
        .header(header)
        .column_spacing(SPACING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(texts: &[&str]) -> Vec<(String, Style)> {
        texts
            .iter()
            .map(|t| (t.to_string(), Style::new()))
            .collect()
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::kept("ID", values(&["1", "22"])),
            Column::flexible("NAME", values(&["photos/2024/a.jpg", "b"]), 6),
            Column::droppable("SIZE", values(&["1.00 MiB", "12 B"]), 1),
            Column::kept("CHUNKS", values(&["15/16", "1/1"])),
            Column::droppable("ETA", values(&["3m05s", "-"]), 2),
        ]
    }

    #[test]
    fn a_route_loses_its_middle() {
        assert_eq!(middle("s3://a/b/ → az://c/d/", 11), "s3://…/c/d/");
        assert_eq!(middle("short", 11), "short");
    }

    #[test]
    fn every_column_fits_when_there_is_room_and_the_name_gets_the_rest() {
        let w = widths(&columns(), 80);
        assert_eq!(w, vec![Some(2), Some(55), Some(8), Some(6), Some(5)]);
    }

    #[test]
    fn the_columns_least_needed_go_first_and_numbers_keep_their_width() {
        // 2 + 6 + 8 + 6 + 5 + 4 spaces = 31: at 30 the ETA goes, at 22 the size too.
        assert_eq!(
            widths(&columns(), 30),
            vec![Some(2), Some(11), Some(8), Some(6), None]
        );
        let narrow = widths(&columns(), 22);
        assert_eq!(narrow, vec![Some(2), Some(12), None, Some(6), None]);
        assert_eq!(widths(&columns(), 10)[3], Some(6), "CHUNKS never shrinks");
    }
}
