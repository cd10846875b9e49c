//! Record: takes written in the formats other tools read (Live Link Face CSV per person).

mod live_link;

pub use live_link::{column_names, timecode, LiveLinkWriter, HEADER as LIVE_LINK_HEADER};
