//! Raw stored events for bulk replays: a batch shares one text buffer.

/// A stored event reduced to what a bulk replay needs; `data` is the stored JSON text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent<'a> {
    pub aggregate_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub data: &'a str,
}

/// A batch of raw events sharing one text buffer: two allocations per batch instead of three
/// per event, which is most of the cost of a bulk replay.
#[derive(Clone, Debug, Default)]
pub struct RawBatch {
    text: String,
    rows: Vec<RawRow>,
}

#[derive(Clone, Debug)]
struct RawRow {
    version: u64,
    schema_version: u32,
    id_end: usize,
    type_end: usize,
    data_end: usize,
}

impl RawBatch {
    pub fn with_capacity(events: usize) -> Self {
        Self {
            text: String::with_capacity(events * 96),
            rows: Vec::with_capacity(events),
        }
    }

    pub fn push(&mut self, event: RawEvent<'_>) {
        self.text.push_str(event.aggregate_id);
        let id_end = self.text.len();
        self.text.push_str(event.event_type);
        let type_end = self.text.len();
        self.text.push_str(event.data);
        self.rows.push(RawRow {
            version: event.version,
            schema_version: event.schema_version,
            id_end,
            type_end,
            data_end: self.text.len(),
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Keeps the first `len` events (undoes pushes past them).
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len);
        let end = self.rows.last().map_or(0, |r| r.data_end);
        self.text.truncate(end);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = RawEvent<'_>> {
        let mut start = 0;
        self.rows.iter().map(move |r| {
            let e = RawEvent {
                aggregate_id: &self.text[start..r.id_end],
                version: r.version,
                event_type: &self.text[r.id_end..r.type_end],
                schema_version: r.schema_version,
                data: &self.text[r.type_end..r.data_end],
            };
            start = r.data_end;
            e
        })
    }
}
