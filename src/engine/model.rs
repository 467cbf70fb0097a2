//! The scheduler's in-memory model of a loaded job: its objects (each an
//! [`ObjectRun`](super::object::ObjectRun)), the queue of objects with work, and the count of
//! work in flight. Owned by the scheduler task alone; mirrored to the state database through
//! the writer.

use std::collections::VecDeque;
use std::sync::Arc;

use super::object::ObjectRun;
use super::snapshot::JobView;
use crate::state::{JobProgress, JobRecord, JobSnapshot, progress_of};
use crate::store::{ObjectSink, ObjectSource};

/// A loaded job.
pub(super) struct JobRun {
    pub(super) record: JobRecord,
    pub(super) source: Arc<dyn ObjectSource>,
    pub(super) sink: Arc<dyn ObjectSink>,
    pub(super) files: Vec<ObjectRun>,
    /// Objects with work, in the order they get it; `queued` says who is in it.
    pub(super) queue: VecDeque<usize>,
    pub(super) queued: Vec<bool>,
    pub(super) in_flight: u32,
}

impl JobRun {
    /// Queues an object that has work, behind the others.
    pub(super) fn enqueue(&mut self, pos: usize) {
        if !self.queued[pos] && self.files[pos].next_work().is_some() {
            self.queued[pos] = true;
            self.queue.push_back(pos);
        }
    }

    /// Queues an object ahead of the others: its commit, a retry or a re-send finishes an
    /// object that is already under way.
    pub(super) fn enqueue_first(&mut self, pos: usize) {
        if self.files[pos].next_work().is_none() {
            return;
        }
        if self.queued[pos] {
            self.queue.retain(|p| *p != pos);
        }
        self.queued[pos] = true;
        self.queue.push_front(pos);
    }

    /// Queues every object that has work and is not queued yet.
    pub(super) fn enqueue_all(&mut self) {
        for pos in 0..self.files.len() {
            self.enqueue(pos);
        }
    }

    /// Takes the object at the head of the queue off it.
    pub(super) fn dequeue_front(&mut self) {
        if let Some(pos) = self.queue.pop_front() {
            self.queued[pos] = false;
        }
    }

    /// Takes every object off the queue (the job stopped).
    pub(super) fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued.fill(false);
    }

    pub(super) fn progress(&self) -> JobProgress {
        progress_of(self.files.iter().map(|f| (&f.record, f.chunks.as_slice())))
    }

    pub(super) fn all_finished(&self) -> bool {
        self.files.iter().all(|f| f.record.state.is_finished())
    }
}

impl JobRun {
    /// The job's records, for a view that keeps looking at it after it is unloaded.
    pub(super) fn into_snapshot(self) -> JobSnapshot {
        JobSnapshot {
            job: self.record,
            files: self
                .files
                .into_iter()
                .map(|f| (f.index, f.record, f.chunks))
                .collect(),
        }
    }

    /// The job as a view shows it.
    pub(super) fn view(&self) -> JobView {
        JobView {
            id: self.record.id,
            source: self.record.source.clone(),
            destination: self.record.destination.clone(),
            state: self.record.state,
            progress: self.progress(),
            rate: 0.0,
            eta_secs: None,
            error: self.record.error.clone(),
        }
    }
}
