//! Browsing for views: one level of a location at a time (`s3://` and `az://` alone list the
//! buckets or containers), page by page, each on its own task so a slow listing never holds up
//! the scheduler; the answer comes back as [`Event::Listing`].

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Event, StoreFactory};
use crate::location::{Location, Scheme};
use crate::store::{Access, Page};

/// Lists `location` (one page from `token`) and sends the answer as an event.
pub(super) fn spawn(
    stores: Arc<dyn StoreFactory>,
    events: mpsc::Sender<Event>,
    request: u64,
    location: String,
    token: Option<String>,
) {
    tokio::spawn(async move {
        let page = list(stores.as_ref(), &location, token)
            .await
            .map_err(|e| crate::redact::redact(&format!("{e:#}")));
        let _ = events
            .send(Event::Listing {
                request,
                location,
                page,
            })
            .await;
    });
}

async fn list(
    stores: &dyn StoreFactory,
    location: &str,
    token: Option<String>,
) -> anyhow::Result<Page> {
    for scheme in [Scheme::S3, Scheme::Azure] {
        if location == scheme.prefix() {
            let mut names = stores.containers(scheme).await?;
            names.sort();
            return Ok(Page {
                dirs: names,
                ..Page::default()
            });
        }
    }
    let parsed = Location::parse(location)?;
    let parsed = if parsed.scheme == Scheme::Local {
        parsed.as_prefix()
    } else {
        parsed
    };
    let source = stores.source(&parsed, &Access::default()).await?;
    Ok(source.list_page(&parsed.key, token).await?)
}
