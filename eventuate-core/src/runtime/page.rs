//! How many events a consumer asks for in its next stream read. Near the head it reads
//! [`RuntimeOptions::batch_size`](super::RuntimeOptions::batch_size) events; after each full
//! page (more events are waiting) the next page is four times larger, up to
//! [`RuntimeOptions::max_batch_size`](super::RuntimeOptions::max_batch_size) and to what fits
//! in [`PAGE_BYTES`] at the last page's size per event; a short page (the head was reached)
//! brings it back to `batch_size`. A catch-up thus pays the per-read cost (a statement, its
//! horizon lookup, a task) once per few thousand events instead of once per 256.

use crate::StreamBatch;

/// About how many bytes of events one page may hold (two pages are in memory at once: the
/// one delivered and the one read meanwhile).
pub(super) const PAGE_BYTES: usize = 8 << 20;

/// Per event, what an envelope costs in memory besides its payload and names (ids, position,
/// metadata).
const ENVELOPE_OVERHEAD: usize = 256;

/// How much a full page grows the next one.
const GROWTH: usize = 4;

/// The page size policy of one consumer.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageSize {
    base: usize,
    max: usize,
}

impl PageSize {
    /// `base` near the head, up to `max` (at least `base`) when far behind.
    pub(super) fn new(base: usize, max: usize) -> Self {
        let base = base.max(1);
        PageSize {
            base,
            max: max.max(base),
        }
    }

    /// The first read's size (the consumer does not know yet how far behind it is).
    pub(super) fn first(&self) -> usize {
        self.base
    }

    /// Whether `batch`, read with `limit`, reached the head (it is short).
    pub(super) fn at_head(batch: &StreamBatch, limit: usize) -> bool {
        batch.items.len() < limit
    }

    /// The size of the read after `batch`, which was read with `limit`.
    pub(super) fn next(&self, batch: &StreamBatch, limit: usize) -> usize {
        if Self::at_head(batch, limit) || batch.items.is_empty() {
            return self.base;
        }
        let bytes: usize = batch
            .items
            .iter()
            .map(|item| {
                let e = item.event();
                ENVELOPE_OVERHEAD
                    + e.payload.len()
                    + e.entity_type.len()
                    + e.entity_id.len()
                    + e.event_type.len()
            })
            .sum();
        let per_event = (bytes / batch.items.len()).max(1);
        let fits = PAGE_BYTES / per_event;
        limit
            .saturating_mul(GROWTH)
            .min(self.max)
            .min(fits)
            .max(self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventEnvelope, Position, StreamItem};

    fn batch(events: usize, payload_bytes: usize) -> StreamBatch {
        let items = (0..events)
            .map(|i| {
                StreamItem::Event(EventEnvelope {
                    event_id: uuid::Uuid::nil(),
                    entity_type: "Account".into(),
                    entity_id: "a".into(),
                    entity_version: i as u64 + 1,
                    event_type: "Deposited".into(),
                    payload: "x".repeat(payload_bytes),
                    metadata: Default::default(),
                    position: Position::new(1, i as u64),
                })
            })
            .collect();
        StreamBatch {
            items,
            scanned_to: Position::new(1, events as u64),
        }
    }

    #[test]
    fn full_pages_grow_the_next_read_up_to_the_maximum() {
        let pages = PageSize::new(256, 4096);
        assert_eq!(pages.first(), 256);
        assert_eq!(pages.next(&batch(256, 20), 256), 1024);
        assert_eq!(pages.next(&batch(1024, 20), 1024), 4096);
        assert_eq!(pages.next(&batch(4096, 20), 4096), 4096);
    }

    #[test]
    fn a_short_page_brings_the_read_back_to_the_batch_size() {
        let pages = PageSize::new(256, 4096);
        assert!(PageSize::at_head(&batch(1000, 20), 1024));
        assert_eq!(pages.next(&batch(1000, 20), 1024), 256);
        assert_eq!(pages.next(&batch(0, 20), 4096), 256);
        // A page as large as the base read with a larger limit is short too.
        assert_eq!(pages.next(&batch(256, 20), 1024), 256);
    }

    #[test]
    fn large_events_bound_the_page_by_memory() {
        let pages = PageSize::new(256, 4096);
        // 64 kB payloads: 8 MiB holds about 127 of them, less than the base.
        assert_eq!(pages.next(&batch(256, 64 << 10), 256), 256);
        // 8 kB payloads: about 1,000 fit.
        let next = pages.next(&batch(256, 8 << 10), 256);
        assert!(next < 1024 && next > 256, "{next}");
    }

    #[test]
    fn a_maximum_below_the_base_reads_fixed_pages() {
        let pages = PageSize::new(256, 16);
        assert_eq!(pages.first(), 256);
        assert_eq!(pages.next(&batch(256, 20), 256), 256);
    }
}
