//! CPU time a server spends, for the CPU-per-request figure of each phase.
//!
//! On a machine whose cores client and server share, ops/s mostly measures whoever saturates
//! the cores first; the CPU a server burns per request is what it costs. Two sources:
//! - an in-process server: the sum over this process's threads whose name starts with a prefix
//!   (`blobvault-` for the store and server, `bench-files` for the file baseline, `bench-floor`
//!   for the raw-TCP floor; the client's threads have no such name);
//! - an external server (`--server-pid`): the process's CPU clock, which counts threads that
//!   have exited too.
//!
//! Both read the kernel's scheduler clock (nanoseconds, user + system) through `clock_gettime`
//! on the thread's or process's CPU clock; where that is unavailable, `utime + stime` from
//! `/proc/…/stat`, whose clock ticks (10 ms) need long phases.

use std::collections::HashMap;
use std::io;

/// Whose CPU time to measure.
#[derive(Debug, Clone)]
pub(super) enum CpuMeter {
    /// Threads of this process whose name starts with this prefix.
    Threads(&'static str),
    /// A whole process (an external server).
    Process(u32),
}

/// CPU time per thread (or for the process, under key 0) at one moment, in nanoseconds.
#[derive(Debug, Default)]
pub(super) struct CpuSample(HashMap<u32, u64>);

/// Thread-name prefix of the in-process blobvault server's threads (workers, acceptor, writer).
pub(super) const SERVER_THREADS: &str = "blobvault-";

impl CpuMeter {
    /// Reads the current CPU times.
    pub(super) fn sample(&self) -> io::Result<CpuSample> {
        let mut s = CpuSample::default();
        match self {
            CpuMeter::Process(pid) => {
                s.0.insert(0, process_cpu_ns(*pid)?);
            }
            CpuMeter::Threads(prefix) => {
                for entry in std::fs::read_dir("/proc/self/task")? {
                    let Ok(entry) = entry else { continue };
                    let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                        continue;
                    };
                    // A thread may exit between the listing and the reads: skip it.
                    let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
                        continue;
                    };
                    if !comm.starts_with(prefix) {
                        continue;
                    }
                    if let Ok(ns) = thread_cpu_ns(tid) {
                        s.0.insert(tid, ns);
                    }
                }
            }
        }
        Ok(s)
    }
}

impl CpuSample {
    /// CPU nanoseconds spent since `earlier` (threads that started since count from zero;
    /// threads that ended since are lost, so measure while the server's threads live).
    pub(super) fn since(&self, earlier: &CpuSample) -> u64 {
        self.0
            .iter()
            .map(|(id, ns)| ns.saturating_sub(earlier.0.get(id).copied().unwrap_or(0)))
            .sum()
    }
}

/// A thread of this process: its scheduler CPU clock.
fn thread_cpu_ns(tid: u32) -> io::Result<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The kernel's clock id of a thread's CPU time (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)
        // in include/linux/posix-timers.h): glibc has no call that takes a tid, only a pthread_t.
        let clock = ((!(tid as libc::clockid_t)) << 3) | 6;
        if let Ok(ns) = clock_ns(clock) {
            return Ok(ns);
        }
    }
    proc_stat_ns(&format!("/proc/self/task/{tid}/stat"))
}

/// A process: its CPU clock (counts its exited threads too).
fn process_cpu_ns(pid: u32) -> io::Result<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `clock` is a valid out-pointer for the call's duration.
        let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
        if rc == 0
            && let Ok(ns) = clock_ns(clock)
        {
            return Ok(ns);
        }
    }
    proc_stat_ns(&format!("/proc/{pid}/stat"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn clock_ns(clock: libc::clockid_t) -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an unknown clock id fails with EINVAL.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// `utime + stime` of a `/proc/…/stat` file, in nanoseconds (clock-tick resolution).
fn proc_stat_ns(path: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("unexpected {path}"));
    // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
    let rest = text.rsplit_once(')').ok_or_else(bad)?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(bad)
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total * 1_000_000_000 / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: sysconf only reads a configuration value.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            return t as u64;
        }
    }
    100
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Burns `ms` of this thread's CPU time (not wall time: the machine may be busy).
    fn spin(ms: u64) {
        let start = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).expect("thread clock");
        let mut x = 0u64;
        while clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).expect("thread clock") - start
            < ms * 1_000_000
        {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
    }

    #[test]
    fn counts_the_named_threads_only() {
        let meter = CpuMeter::Threads("cpu-test-busy");
        let before = meter.sample().expect("sample");
        // A busy named thread, and an unnamed one that must not count.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(|| spin(200)).join().expect("join");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let busy = {
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name("cpu-test-busy".into())
                .spawn(move || {
                    spin(60);
                    let _ = done_tx.send(());
                    // Stay alive until measured: an exited thread's time is not counted.
                    let _ = rx.recv();
                })
                .expect("spawn")
        };
        std::thread::spawn(|| spin(200)).join().expect("join");
        done_rx.recv().expect("busy thread done");
        let used = meter.sample().expect("sample").since(&before);
        let _ = tx.send(());
        busy.join().expect("join");
        // 60 ms and a little for waking up; the unnamed thread's 200 ms must not be in it.
        assert!(
            (60_000_000..120_000_000).contains(&used),
            "named thread's CPU {used} ns, expected about 60 ms"
        );
    }

    #[test]
    fn reads_this_process_and_proc_stat() {
        let pid = std::process::id();
        let a = CpuMeter::Process(pid).sample().expect("sample");
        spin(30);
        let b = CpuMeter::Process(pid).sample().expect("sample");
        assert!(b.since(&a) >= 20_000_000, "{}", b.since(&a));
        let stat = proc_stat_ns(&format!("/proc/{pid}/stat")).expect("stat");
        assert!(stat > 0);
        assert!(proc_stat_ns("/proc/self/no-such-file").is_err());
    }
}
