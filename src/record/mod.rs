//! Record: takes written in the formats other tools read (Live Link Face CSV and an animated
//! glb per person, every frame in session.jsonl), their recovery after a crash, and playback.

mod live_link;

pub use live_link::{column_names, timecode, LiveLinkWriter, HEADER as LIVE_LINK_HEADER};
pub mod playback;
mod records;
mod take;
pub use records::{Arkit, Blendshapes, FrameRecord, Landmarks, PersonRecord, FORMAT_VERSION};
pub use take::{recover, take_glb, Key, Take};
