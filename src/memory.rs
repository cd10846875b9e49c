//! Memory that stays flat for hours, under two allocators.
//!
//! The app's own memory (frames, network activations, tracks) comes from jemalloc: size-class
//! slabs and extents, freed pages reused frame after frame and handed back after ~10 s
//! unused, and a long-lived block pins only its own pages.
//!
//! The C libraries beside it (lavapipe, LLVM, the X11 and Vulkan loaders) use glibc's malloc,
//! whose thread heaps only shrink from the top. lavapipe's rasterizer allocates 20–30 MB of
//! short-lived 64 KB bins per frame in its thread's heap; a block that outlives the frame,
//! placed at the heap's top during such a burst (its 1 MB upload buffers), keeps all of that
//! resident for good: a heap dump after the +20 MB step at minute 16 of an hour-long soak
//! showed a 25 MB heap, 5.4 MB in use, a 1 MB upload buffer at its top. So glibc maps every
//! block from 512 KB up on its own ([`fix_thresholds`]: none can pin a heap, and glibc's
//! moving thresholds, which would put such blocks back into the heaps, are off), and every
//! 10 s the free pages inside its heaps go back to the system ([`trim`]). With glibc alone
//! that threshold would also map and unmap the networks' activations every frame: +50 % CPU
//! time in `polyface bench`.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use tikv_jemallocator::Jemalloc;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// jemalloc's options, read before `main`: blocks from 8 MB up (the 640×480 network's larger
/// activations) stay in the arenas that reuse freed pages, instead of one that returns them
/// at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_OPTIONS: &[u8; 21] = b"oversize_threshold:0\0";

/// jemalloc, zeroing reused memory itself: its own zeroed allocation hands dirty pages back
/// to the system and faults them in again (≈ 900,000 page faults and +30 % CPU time in
/// `polyface bench`, where the networks ask for zeroed buffers every frame).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub struct Allocator;

// SAFETY: every call goes to jemalloc with the caller's layout; alloc_zeroed zeroes the
// layout's bytes of a block jemalloc handed out for that layout.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { Jemalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let block = unsafe { Jemalloc.alloc(layout) };
        if !block.is_null() {
            unsafe { std::ptr::write_bytes(block, 0, layout.size()) };
        }
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

/// glibc blocks from this size up are mapped on their own, never placed in a heap.
const MMAP_THRESHOLD: i32 = 512 << 10;
/// A free glibc heap top above this goes back to the system at once.
const TRIM_THRESHOLD: i32 = 1 << 20;

/// Fixes glibc's mmap and trim thresholds (see the module docs); false where they could not be
/// set. Does nothing where the C allocator is not glibc's.
pub fn fix_thresholds() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets the allocator's parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the free pages inside glibc's heaps to the system; true when some were returned.
/// Does nothing where the C allocator is not glibc's.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Fixes glibc's thresholds and trims every `every` on a background thread for the rest of the
/// process.
pub fn trim_every(every: Duration) {
    if !fix_thresholds() {
        log::debug!("the C allocator's thresholds are its own");
    }
    let spawned = std::thread::Builder::new()
        .name("memory trim".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            trim();
        });
    if let Err(e) = spawned {
        log::warn!("freed memory stays with the allocator: {e}");
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn resident_mb() -> f64 {
        crate::soak::metrics::resident_mb_of(None).unwrap()
    }

    const CHILD: &str = "POLYFACE_TRIM_CHILD";

    /// Runs test `name` alone in a child process, so no other test's memory or allocator
    /// settings count; true in the child, where the caller does the work.
    fn in_child(name: &str) -> bool {
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        false
    }

    /// A block from glibc's malloc (what the C libraries use), every page written.
    fn c_block(len: usize, fill: u8) -> *mut u8 {
        // SAFETY: a fresh allocation of len bytes, written within its bounds.
        unsafe {
            // black_box: the optimiser knows malloc and may elide a block nothing reads
            let block = std::hint::black_box(libc::malloc(len) as *mut u8);
            assert!(!block.is_null());
            std::ptr::write_bytes(block, fill, len);
            block
        }
    }

    fn c_free(block: *mut u8) {
        // SAFETY: every block passed here came from c_block and is freed once.
        unsafe { libc::free(block as *mut libc::c_void) }
    }

    /// 128 MB in 32 KB blocks, all but every 16th freed: glibc keeps the freed memory resident
    /// (the blocks kept pin the heap), trimming returns it.
    #[test]
    fn trimming_returns_memory_the_c_allocator_kept() {
        if !in_child("memory::tests::trimming_returns_memory_the_c_allocator_kept") {
            return;
        }
        let before = resident_mb();
        let blocks: Vec<*mut u8> = (0..4096).map(|i| c_block(32 << 10, i as u8)).collect();
        let full = resident_mb();
        let (kept, freed): (Vec<_>, Vec<_>) = blocks
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 16 == 0);
        freed.into_iter().for_each(|(_, block)| c_free(block));
        let after_free = resident_mb();
        assert!(trim(), "the allocator had pages to give back");
        let trimmed = resident_mb();
        eprintln!(
            "resident: {before:.0} MB, {full:.0} MB with 128 MB allocated, {after_free:.0} MB \
             with 8 MB still in use, {trimmed:.0} MB after trimming"
        );
        assert!(full - before > 100.0);
        assert!(
            after_free - before > 100.0,
            "glibc kept the freed blocks resident"
        );
        assert!(after_free - trimmed > 90.0, "trimming returned them");
        kept.into_iter().for_each(|(_, block)| c_free(block));
    }

    /// lavapipe's pattern: a burst of 64 KB blocks (a frame's bins), a 1 MB block that outlives
    /// it (an upload buffer), the burst freed. Placed in the heap (glibc's own thresholds, once
    /// a larger block was freed), the 1 MB block sits on its top and keeps the burst's 20 MB
    /// resident: +20 MB for every such frame. Mapped on its own, the heap shrinks back at once.
    #[test]
    fn a_block_that_outlives_a_burst_does_not_pin_it() {
        if !in_child("memory::tests::a_block_that_outlives_a_burst_does_not_pin_it") {
            return;
        }
        assert!(fix_thresholds());
        // a 4 MB block mapped and freed: glibc's own rule would now place blocks up to 4 MB
        // in the heap
        c_free(c_block(4 << 20, 0));
        let before = resident_mb();
        let mut held = Vec::new();
        let mut after = Vec::new();
        for frame in 0..3u8 {
            let burst: Vec<*mut u8> = (0..320).map(|_| c_block(64 << 10, frame + 1)).collect();
            held.push(c_block(1 << 20, frame + 1));
            burst.into_iter().for_each(c_free);
            after.push(resident_mb() - before);
        }
        eprintln!("resident after each frame: {after:.1?} MB above the start");
        assert!(
            after.iter().all(|mb| *mb < 6.0),
            "the freed bursts stayed resident: {after:?} MB"
        );
        held.into_iter().for_each(c_free);
    }

    /// The app's own allocations go to jemalloc: a 64 MB buffer leaves glibc's counts as they
    /// were (with glibc as Rust's allocator they grow by 64 MB); zeroed buffers are zero also
    /// where jemalloc hands out memory freed before.
    #[test]
    fn the_apps_own_memory_is_jemallocs_and_zeroed_when_asked() {
        if !in_child("memory::tests::the_apps_own_memory_is_jemallocs_and_zeroed_when_asked") {
            return;
        }
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let glibc_bytes = || {
            let info = unsafe { libc::mallinfo2() };
            info.uordblks + info.hblkhd
        };
        let before = glibc_bytes();
        let block = std::hint::black_box(vec![7u8; 64 << 20]);
        let during = glibc_bytes();
        assert!(
            during < before + (8 << 20),
            "glibc holds the buffer: {before} -> {during} bytes"
        );
        drop(block);
        for size in [100, 40 << 10, 8 << 20, 64 << 20] {
            let dirty = std::hint::black_box(vec![0xAAu8; size]);
            drop(dirty);
            let zeroed = std::hint::black_box(vec![0u8; size]);
            assert!(zeroed.iter().all(|b| *b == 0), "{size} bytes zeroed");
        }
    }
}
