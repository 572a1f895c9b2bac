//! The `trunkgate` binary.

use std::time::Duration;

/// jemalloc, not glibc's malloc (decision 0007): under load the SIP core
/// allocates and frees about 340 blocks per call, and glibc spent a fifth
/// of the core's CPU on them (fastbins consolidated whenever a message
/// buffer of 1 KiB or more was asked for, bins walked in a heap fragmented
/// by 32 s of held transactions); jemalloc's size classes and per-thread
/// caches make the same work about 20 % cheaper per call.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (decision 0007, "Freed pages"):
/// pages freed are kept for reuse, not handed back to the kernel on
/// jemalloc's 10 s decay. Under load a node frees and reallocates its
/// whole working set every 32 s (the answered transactions), so decay
/// handed pages back only to fault them in again, zeroed: about a tenth of
/// the daemon's CPU per call at 6000 calls a second. [`PURGE_EVERY`]
/// returns them instead. `_RJEM_MALLOC_CONF` in the environment still
/// overrides these.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

/// How often the pages freed since are handed back to the kernel: memory
/// held after a burst comes back within this, at the cost of faulting in
/// once per period what a busy node reuses.
const PURGE_EVERY: Duration = Duration::from_secs(300);

/// Hands every arena's freed pages back to the kernel
/// (`arena.<MALLCTL_ARENAS_ALL>.purge`); jemalloc's error number if not.
fn purge_freed_pages() -> Result<(), i32> {
    // SAFETY: the name is NUL-terminated, and `arena.<i>.purge` takes and
    // returns nothing, so all four value pointers are null.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc == 0 { Ok(()) } else { Err(rc) }
}

fn main() -> std::process::ExitCode {
    let purger = std::thread::Builder::new().name("tg-mem-purge".into()).spawn(|| {
        loop {
            std::thread::sleep(PURGE_EVERY);
            if let Err(e) = purge_freed_pages() {
                // Not fatal: the pages stay with jemalloc for reuse.
                eprintln!("trunkgate: returning freed memory failed: jemalloc error {e}");
                return;
            }
        }
    });
    if let Err(e) = purger {
        eprintln!("trunkgate: no thread to return freed memory: {e}");
    }
    trunkgate::cli::main()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads jemalloc's control `name`, writing `new` to it first if given;
    /// `T` must be the control's C type (`ssize_t`, `size_t`, `uint64_t`).
    fn ctl<T: Copy + Default>(name: &std::ffi::CStr, new: Option<T>) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        let mut new = new;
        let (newp, newlen) = match new.as_mut() {
            Some(n) => ((n as *mut T).cast(), std::mem::size_of::<T>()),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: `value` and `len` describe a buffer of the control's type,
        // `newp` and `newlen` one to read from (or nothing).
        let rc =
            unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr(), (&raw mut value).cast(), &raw mut len, newp, newlen) };
        assert_eq!(rc, 0, "mallctl {name:?}");
        value
    }

    /// Dirty pages held by all arenas, read afresh (a new epoch first).
    fn dirty_pages() -> usize {
        ctl::<u64>(c"epoch", Some(1));
        ctl::<usize>(c"stats.arenas.4096.pdirty", None)
    }

    #[test]
    fn jemalloc_keeps_freed_pages_until_the_periodic_purge() {
        // The compiled-in options reached jemalloc (a misspelt symbol or
        // option would leave the 10 s default).
        assert_eq!(ctl::<isize>(c"opt.dirty_decay_ms", None), -1);
        assert_eq!(ctl::<isize>(c"opt.muzzy_decay_ms", None), -1);
        // 64 MiB freed are held as dirty pages, and the purge hands them back.
        drop(std::hint::black_box(vec![1u8; 64 << 20]));
        let before = dirty_pages();
        assert!(before >= (64 << 20) / 4096 / 2, "{before} dirty pages after freeing 64 MiB");
        assert_eq!(purge_freed_pages(), Ok(()));
        let after = dirty_pages();
        assert!(after < before / 100, "{after} dirty pages after the purge (before: {before})");
    }
}
