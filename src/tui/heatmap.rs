//! The chunk heat-map's arithmetic: one slot per chunk while they fit, otherwise each slot
//! stands for a run of chunks and shows the worst state among them (failed, in flight,
//! waiting for a retry, pending, completed) and the most attempts any of them took.

use crate::engine::snapshot::ChunkCell;
use crate::state::ChunkState;

/// One slot of the heat-map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The worst state of its chunks.
    pub state: ChunkState,
    /// The most attempts any of its chunks took.
    pub attempts: u32,
    /// Its first chunk.
    pub first: u32,
    /// Its last chunk.
    pub last: u32,
}

/// How bad a chunk's state is, for aggregation: higher wins.
fn severity(cell: ChunkCell) -> u8 {
    match cell.state {
        ChunkState::Failed => 4,
        ChunkState::InProgress => 3,
        ChunkState::Pending if cell.attempts > 0 => 2,
        ChunkState::Pending => 1,
        ChunkState::Completed => 0,
    }
}

/// Chunks per slot when `chunks` chunks share `capacity` slots.
pub fn chunks_per_slot(chunks: usize, capacity: usize) -> usize {
    chunks.div_ceil(capacity.max(1)).max(1)
}

/// The slots for `cells` in at most `capacity` slots.
pub fn slots(cells: &[ChunkCell], capacity: usize) -> Vec<Slot> {
    let per = chunks_per_slot(cells.len(), capacity);
    cells
        .chunks(per)
        .enumerate()
        .map(|(i, run)| {
            let mut worst = run[0];
            let mut attempts = 0;
            for cell in run {
                if severity(*cell) > severity(worst) {
                    worst = *cell;
                }
                attempts = attempts.max(cell.attempts);
            }
            let first = (i * per) as u32;
            Slot {
                state: worst.state,
                attempts,
                first,
                last: first + run.len() as u32 - 1,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(state: ChunkState, attempts: u32) -> ChunkCell {
        ChunkCell { state, attempts }
    }

    #[test]
    fn one_slot_per_chunk_when_they_fit() {
        let cells = vec![cell(ChunkState::Completed, 1); 10];
        let slots = slots(&cells, 100);
        assert_eq!(slots.len(), 10);
        assert_eq!((slots[3].first, slots[3].last), (3, 3));
    }

    #[test]
    fn a_slot_shows_the_worst_state_of_its_run() {
        let mut cells = vec![cell(ChunkState::Completed, 1); 50_000];
        cells[7] = cell(ChunkState::Failed, 10);
        cells[30_001] = cell(ChunkState::InProgress, 2);
        cells[49_999] = cell(ChunkState::Pending, 0);
        let slots = slots(&cells, 2_000);
        assert_eq!(slots.len(), 2_000);
        assert_eq!(chunks_per_slot(50_000, 2_000), 25);
        assert_eq!(
            (slots[0].state, slots[0].attempts),
            (ChunkState::Failed, 10)
        );
        assert_eq!(slots[1200].state, ChunkState::InProgress);
        assert_eq!(slots[1999].state, ChunkState::Pending);
        assert_eq!(slots[1999].last, 49_999);
        assert_eq!(slots[5].state, ChunkState::Completed);
    }

    #[test]
    fn a_chunk_waiting_for_a_retry_outranks_a_fresh_one() {
        let cells = [cell(ChunkState::Pending, 0), cell(ChunkState::Pending, 3)];
        assert_eq!(slots(&cells, 1)[0].attempts, 3);
        assert_eq!(slots(&cells, 1)[0].state, ChunkState::Pending);
    }
}
