//! Freed heap memory goes back to the system. glibc's allocator keeps the memory a burst of
//! allocations freed inside its arenas (lavapipe's rasterizer bins everything it draws into
//! short-lived blocks, frames are decoded into fresh buffers): resident memory steps up to the
//! largest burst so far and stays there though nothing uses it. Trimming every few seconds
//! returns the free pages, so resident memory follows what the app holds.
//!
//! glibc also moves its own thresholds: freeing a block it had mapped on its own (above the
//! mmap threshold, 128 KB at start) raises that threshold to the block's size and the heap's
//! trim threshold to twice that, up to 32 / 64 MB. From then on blocks of that size come from
//! the heap and a free heap top of up to 64 MB is kept: the one-time +25 MB steps at minute 16
//! and 30 of two hour-long soaks. [`fix_thresholds`] sets both once at start, so there is
//! nothing left to step.

use std::time::Duration;

/// Blocks below this come from the heap (reused frame after frame: network activations,
/// decoded frames); larger ones are mapped and unmapped on their own.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// A free heap top above this goes back to the system at once.
const TRIM_THRESHOLD: i32 = 1 << 20;

/// Fixes glibc's mmap and trim thresholds (see the module docs); false where they could not be
/// set. Does nothing where the allocator is not glibc's.
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

/// Returns the free pages of every heap arena to the system; true when some were returned.
/// Does nothing where the allocator is not glibc's.
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

/// Fixes the allocator's thresholds and trims every `every` on a background thread for the rest
/// of the process.
pub fn trim_every(every: Duration) {
    if !fix_thresholds() {
        log::debug!("the allocator's thresholds are its own");
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

    /// 128 MB in 32 KB blocks, all but every 16th freed: glibc keeps the freed memory resident
    /// (the blocks kept pin the arena), trimming returns it.
    #[test]
    fn trimming_returns_memory_the_allocator_kept() {
        if !in_child("memory::tests::trimming_returns_memory_the_allocator_kept") {
            return;
        }
        let before = resident_mb();
        let mut blocks: Vec<Box<[u8]>> =
            (0..4096).map(|i| vec![i as u8; 32 << 10].into()).collect();
        let full = resident_mb();
        let mut k = 0;
        blocks.retain(|_| {
            k += 1;
            k % 16 == 0
        });
        let freed = resident_mb();
        assert!(trim(), "the allocator had pages to give back");
        let trimmed = resident_mb();
        eprintln!(
            "resident: {before:.0} MB, {full:.0} MB with 128 MB allocated, {freed:.0} MB with 8 MB \
             still in use, {trimmed:.0} MB after trimming"
        );
        assert!(full - before > 100.0);
        assert!(
            freed - before > 100.0,
            "glibc kept the freed blocks resident"
        );
        assert!(freed - trimmed > 90.0, "trimming returned them");
        drop(blocks);
    }

    /// With glibc's own thresholds, freeing a mapped 24 MB block makes the next 20 MB blocks
    /// come from the heap and stay resident after they are freed (the heap keeps a free top of
    /// up to twice the 24 MB): +20 MB for good. With the thresholds fixed, each freed block
    /// goes back at once, however often it comes.
    #[test]
    fn fixed_thresholds_return_large_blocks_at_once() {
        if !in_child("memory::tests::fixed_thresholds_return_large_blocks_at_once") {
            return;
        }
        assert!(fix_thresholds());
        let before = resident_mb();
        let mut after = Vec::new();
        for round in 0..4u8 {
            let len = if round == 0 { 24 << 20 } else { 20 << 20 };
            // black_box: the optimiser may not elide an allocation nothing reads
            let block: Box<[u8]> = std::hint::black_box(vec![round + 1; len].into());
            assert_eq!(block[len - 1], round + 1);
            drop(block);
            after.push(resident_mb() - before);
        }
        eprintln!("resident after each freed block: {after:.1?} MB above the start");
        assert!(
            after.iter().all(|mb| *mb < 4.0),
            "freed blocks stayed resident: {after:?} MB"
        );
    }
}
