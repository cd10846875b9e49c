//! Any bytes given to the avatar loader give an avatar or an error, never a crash.
//!
//!     cargo +nightly fuzz run avatar_loader fuzz/corpus/avatar_loader -- -max_total_time=600
#![no_main]

#[path = "../../src/avatar/load.rs"]
mod load;
#[path = "../../src/avatar/model.rs"]
mod model;

pub use load::AvatarError;
pub use model::{AlphaMode, Avatar, Expression, Primitive, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Avatar::from_bytes(data, None, "fuzz");
});
