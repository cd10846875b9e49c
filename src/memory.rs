//! Freed heap memory goes back to the system. glibc's allocator keeps the memory a burst of
//! allocations freed inside its arenas (lavapipe's rasterizer bins everything it draws into
//! short-lived blocks, frames are decoded into fresh buffers): resident memory steps up to the
//! largest burst so far and stays there though nothing uses it — +24 MB at minute 16 of an hour's
//! soak, for good. Trimming every few seconds returns the free pages, so resident memory follows
//! what the app holds.

use std::time::Duration;

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

/// Trims every `every` on a background thread for the rest of the process.
pub fn trim_every(every: Duration) {
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

    /// 128 MB in 32 KB blocks, all but every 16th freed: glibc keeps the freed memory resident
    /// (the blocks kept pin the arena), trimming returns it. Runs in a child process (this test
    /// alone), so no other test's memory counts.
    #[test]
    fn trimming_returns_memory_the_allocator_kept() {
        if std::env::var_os(CHILD).is_none() {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "memory::tests::trimming_returns_memory_the_allocator_kept",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{text}");
            assert!(text.contains("1 passed"), "the child ran the test: {text}");
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
}
