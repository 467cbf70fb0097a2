//! Chunks of one object on several workers: its owner (the worker that claimed it, and alone
//! begins and commits it) lends the chunks it will not reach soon to the other workers of a
//! shared state, and learns how they stand; a borrower's outcome becomes the record it gives
//! back. Pure rules, like the rest of the object's life.

use super::outcomes;
use super::*;
use crate::engine::transfer::ChunkMoved;
use crate::state::LentChunk;
use crate::store::StoreResult;

impl ObjectRun {
    /// Lends the ready chunks beyond the first `keep` to the other workers, once per life,
    /// while chunks move: they leave the ready queue until they come back. Only for a
    /// destination whose blocks every worker can stage (`shared_blocks`); never a
    /// whole-object put or a destination that takes chunks in order.
    pub(crate) fn lend(&mut self, keep: usize) -> Step {
        let mut step = Step::default();
        if self.lent_before
            || self.sequential
            || self.phase != Phase::Transferring
            || self.record.is_single_put()
            || self.ready.len() <= keep
        {
            return step;
        }
        self.lent_before = true;
        self.lend_pending = true;
        let chunks: Vec<u32> = self.ready.split_off(keep).into();
        self.lent.extend(chunks.iter().copied());
        step.writes.push(Write::Lend(self.job, self.index, chunks));
        step
    }

    /// Chunks of this object another worker held lent when it was claimed: they stay out of
    /// the ready queue until they come back.
    pub(crate) fn still_lent(&mut self, chunks: impl IntoIterator<Item = u32>) {
        for chunk in chunks {
            if (chunk as usize) < self.chunks.len()
                && self.chunks[chunk as usize].state != ChunkState::Completed
            {
                self.ready.retain(|c| *c != chunk);
                self.lent.insert(chunk);
            }
        }
    }

    /// How lent chunks stand now: one moved counts as acknowledged (its record, checksum
    /// and history taken as the borrower wrote them), one given back is this object's to
    /// send again, one still out stays lent.
    pub(crate) fn on_lent(&mut self, answers: Vec<LentChunk>) -> Step {
        let mut step = Step::default();
        for answer in answers {
            if answer.out || !self.lent.remove(&answer.chunk) {
                continue;
            }
            let index = answer.chunk;
            let mut record = answer
                .record
                .unwrap_or_else(|| self.chunks[index as usize].clone());
            if record.state == ChunkState::Completed {
                if self.chunks[index as usize].state != ChunkState::Completed {
                    self.completed += 1;
                }
                let latency_ms = record.history.last().map_or(0, |a| a.latency_ms);
                self.chunks[index as usize] = record;
                step.events.push(Event::ChunkCompleted {
                    job: self.job,
                    key: self.record.key.clone(),
                    file: self.index,
                    chunk: index,
                    bytes: self.chunk_len(index),
                    latency_ms,
                });
            } else {
                record.state = ChunkState::Pending;
                self.chunks[index as usize] = record;
                if self.phase == Phase::Transferring && !self.waiting.contains(&index) {
                    self.ready.push_back(index);
                }
            }
        }
        self.settle(&mut step);
        step
    }
}

/// The record a borrower gives back for a borrowed chunk (`record`, as borrowed): moved, it is
/// completed with its checksum; failed, it is pending again with the error in its history, for
/// its owner to send under its own retry rules (a borrower never decides an object's fate).
pub(crate) fn borrowed_back(
    mut record: ChunkRecord,
    timing: Timing,
    result: &StoreResult<ChunkMoved>,
) -> ChunkRecord {
    match result {
        Ok(moved) => outcomes::record_moved(&mut record, timing, moved),
        Err(err) => {
            record.state = ChunkState::Pending;
            outcomes::record_failed(&mut record, timing, ErrorRecord::from_store(err));
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ErrorClass, StoreError};

    /// An object of `chunks` chunks whose upload began, every chunk ready.
    fn transferring(chunks: u32, sequential: bool) -> ObjectRun {
        let mut file = FileRecord::new("k", "k", u64::from(chunks) * 4, "e", 4, chunks);
        file.meta = Some(Default::default());
        file.session = Some("s".into());
        let records = vec![ChunkRecord::pending(); chunks as usize];
        ObjectRun::load(7, 3, file, records, sequential)
    }

    fn moved_four() -> ChunkMoved {
        ChunkMoved {
            bytes: 4,
            crc64: Some(1),
            crc_reported: false,
            verified: None,
        }
    }

    fn a_moment() -> Timing {
        Timing {
            started_ms: 0,
            latency_ms: 1,
        }
    }

    fn rules() -> Rules {
        Rules {
            retry: RetryPolicy::default(),
            if_exists: IfExists::Overwrite,
        }
    }

    fn lent_chunks(step: &Step) -> Vec<u32> {
        step.writes
            .iter()
            .flat_map(|w| match w {
                Write::Lend(7, 3, chunks) => chunks.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_owner_lends_what_it_will_not_reach_soon_once_and_keeps_the_first() {
        let mut object = transferring(10, false);
        assert_eq!(object.phase, Phase::Transferring);
        let step = object.lend(4);
        assert_eq!(lent_chunks(&step), vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(object.ready, VecDeque::from(vec![0, 1, 2, 3]));
        assert_eq!(object.lent, (4..10).collect());
        assert!(object.lend(1).writes.is_empty(), "lent once per life");
        // A chunk it keeps goes; no lent chunk is ever offered to it.
        assert_eq!(object.next_work(), Some(Work::Chunk(0)));
    }

    #[test]
    fn nothing_is_lent_in_order_whole_or_before_the_upload_began_or_when_little_is_left() {
        assert!(transferring(10, true).lend(2).writes.is_empty(), "in order");
        assert!(
            transferring(4, false).lend(4).writes.is_empty(),
            "little left"
        );
        let mut whole = transferring(1, false);
        assert!(whole.lend(0).writes.is_empty(), "a whole-object put");
        let mut file = FileRecord::new("k", "k", 40, "e", 4, 10);
        file.meta = None;
        let mut beginning = ObjectRun::load(7, 3, file, vec![ChunkRecord::pending(); 10], false);
        assert!(matches!(beginning.phase, Phase::Beginning(_)));
        assert!(beginning.lend(2).writes.is_empty(), "before its begin");
    }

    #[test]
    fn moved_chunks_count_given_back_ones_go_again_and_the_last_one_back_commits() {
        let mut object = transferring(4, false);
        object.lend(2);
        assert_eq!(object.lent, [2, 3].into());
        // The two kept move here.
        for chunk in [0, 1] {
            object.claim(Work::Chunk(chunk), 0);
            object.on_chunk(chunk, a_moment(), Ok(moved_four()), &rules());
        }
        assert_eq!(object.phase, Phase::Transferring, "two are still out");
        assert_eq!(object.next_work(), None);
        let mut moved = ChunkRecord::pending();
        moved.state = ChunkState::Completed;
        moved.crc64 = Some(9);
        let mut given_back = ChunkRecord::pending();
        given_back.attempts = 1;
        let step = object.on_lent(vec![
            LentChunk {
                chunk: 2,
                record: Some(moved.clone()),
                out: false,
            },
            LentChunk {
                chunk: 3,
                record: Some(given_back),
                out: false,
            },
        ]);
        assert!(
            step.events
                .iter()
                .any(|e| matches!(e, Event::ChunkCompleted { chunk: 2, .. }))
        );
        assert_eq!(
            object.chunks[2].crc64,
            Some(9),
            "its checksum is the borrower's"
        );
        assert_eq!(object.completed, 3);
        assert_eq!(
            object.next_work(),
            Some(Work::Chunk(3)),
            "given back: sent here"
        );
        assert!(object.lent.is_empty());
        // A chunk still out is left as it is; one answered twice counts once.
        let mut object = transferring(3, false);
        object.lend(1);
        object.on_lent(vec![LentChunk {
            chunk: 1,
            record: Some(moved.clone()),
            out: true,
        }]);
        assert_eq!(object.lent, [1, 2].into());
        for _ in 0..2 {
            object.on_lent(vec![LentChunk {
                chunk: 1,
                record: Some(moved.clone()),
                out: false,
            }]);
        }
        assert_eq!(object.completed, 1);
        object.on_lent(vec![LentChunk {
            chunk: 2,
            record: Some(moved.clone()),
            out: false,
        }]);
        object.claim(Work::Chunk(0), 0);
        object.on_chunk(0, a_moment(), Ok(moved_four()), &rules());
        assert_eq!(object.phase, Phase::Committing(Turn::Due));
    }

    #[test]
    fn a_claimed_object_keeps_out_what_a_borrower_holds() {
        let mut object = transferring(5, false);
        object.still_lent([1, 3, 9]);
        assert_eq!(
            object.lent,
            [1, 3].into(),
            "a chunk it does not have is ignored"
        );
        assert_eq!(object.ready, VecDeque::from(vec![0, 2, 4]));
    }

    #[test]
    fn a_borrowed_chunk_goes_back_moved_or_pending_with_its_error() {
        let mut borrowed = ChunkRecord::pending();
        borrowed.state = ChunkState::InProgress;
        borrowed.attempts = 2;
        let timing = Timing {
            started_ms: 5,
            latency_ms: 7,
        };
        let moved = ChunkMoved {
            bytes: 4,
            crc64: Some(42),
            crc_reported: true,
            verified: None,
        };
        let back = borrowed_back(borrowed.clone(), timing, &Ok(moved));
        assert_eq!(back.state, ChunkState::Completed);
        assert_eq!((back.crc64, back.crc_reported), (Some(42), true));
        assert_eq!(back.attempts, 2, "the borrow counted the attempt");
        assert_eq!(back.history.last().map(|a| a.latency_ms), Some(7));
        let failed = Err(StoreError::new(ErrorClass::Auth, Some(403), "denied"));
        let back = borrowed_back(borrowed, timing, &failed);
        assert_eq!(back.state, ChunkState::Pending, "its owner decides");
        assert_eq!(
            back.last_error().map(|e| e.class),
            Some(ErrorClass::Auth),
            "the error stays in its history for the inspector"
        );
    }
}
