//! What the destination already holds, read as planning goes: its listing is paged and merged
//! with the source's by name, so neither is held whole. The merge relies on both listings
//! coming in increasing byte order; it checks that they do, and where they do not (a name
//! asked out of order, a destination page that goes backwards) it falls back to asking the
//! destination about that one name.

use std::collections::VecDeque;

use super::PlanError;
use crate::engine::retry::RetryPolicy;
use crate::location::Location;
use crate::store::{DestObject, ErrorClass, ObjectSink};

/// A cursor over the destination's objects, asked for names in increasing order.
pub(super) struct Existing<'a> {
    sink: &'a dyn ObjectSink,
    destination: &'a Location,
    retry: &'a RetryPolicy,
    /// A dry run prepares nothing: a container that does not exist yet holds nothing.
    dry_run: bool,
    /// Listed and not passed yet, names increasing.
    ahead: VecDeque<(String, DestObject)>,
    /// The next page's token, once a page was read.
    token: Option<String>,
    started: bool,
    done: bool,
    /// The name asked last and the last name listed, to check both orders.
    last_asked: Option<String>,
    last_listed: Option<String>,
    /// Each name is asked of the destination alone (it is one object, or its listing was
    /// not in order).
    by_name: bool,
}

impl<'a> Existing<'a> {
    pub(super) fn new(
        sink: &'a dyn ObjectSink,
        destination: &'a Location,
        retry: &'a RetryPolicy,
        dry_run: bool,
    ) -> Self {
        Self {
            sink,
            destination,
            retry,
            dry_run,
            ahead: VecDeque::new(),
            token: None,
            started: false,
            done: false,
            last_asked: None,
            last_listed: None,
            by_name: !destination.is_prefix(),
        }
    }

    /// What the destination holds under `name`, if anything.
    pub(super) async fn find(&mut self, name: &str) -> Result<Option<DestObject>, PlanError> {
        if self.by_name || self.last_asked.as_deref().is_some_and(|last| name <= last) {
            return self.head(name).await;
        }
        self.last_asked = Some(name.to_string());
        loop {
            while let Some((front, _)) = self.ahead.front() {
                match front.as_str().cmp(name) {
                    std::cmp::Ordering::Less => {
                        self.ahead.pop_front();
                    }
                    std::cmp::Ordering::Equal => return Ok(self.ahead.pop_front().map(|e| e.1)),
                    std::cmp::Ordering::Greater => return Ok(None),
                }
            }
            if self.done {
                return Ok(None);
            }
            if !self.next_page().await? {
                return self.head(name).await;
            }
        }
    }

    /// Reads the next page; false when the listing turned out not to be in order (every
    /// name is asked alone from then on).
    async fn next_page(&mut self) -> Result<bool, PlanError> {
        let token = self.token.take();
        if self.started && token.is_none() {
            self.done = true;
            return Ok(true);
        }
        self.started = true;
        let prefix = &self.destination.key;
        let page = self
            .retry
            .run(|| self.sink.list_existing_page(prefix, token.clone()))
            .await;
        let (entries, next) = match page {
            Ok(page) => page,
            Err(e) if self.dry_run && e.class == ErrorClass::NotFound => (Vec::new(), None),
            Err(e) => return Err(self.failed(e)),
        };
        self.token = next;
        self.done = self.token.is_none();
        for (name, object) in entries {
            if self.last_listed.as_ref().is_some_and(|last| &name <= last) {
                tracing::warn!(
                    destination = %self.destination,
                    "the destination's listing is not in name order; asking for each name"
                );
                self.by_name = true;
                self.ahead.clear();
                return Ok(false);
            }
            self.last_listed = Some(name.clone());
            self.ahead.push_back((name, object));
        }
        Ok(true)
    }

    async fn head(&self, name: &str) -> Result<Option<DestObject>, PlanError> {
        match self.retry.run(|| self.sink.head(name)).await {
            Ok(found) => Ok(found),
            Err(e) if self.dry_run && e.class == ErrorClass::NotFound => Ok(None),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&self, e: crate::store::StoreError) -> PlanError {
        PlanError::Destination(format!(
            "cannot read the destination {}: {e}",
            self.destination
        ))
    }
}
