//! How the mesh's latency-critical threads ask the kernel to schedule them: the
//! `replicate-io` thread of every node, and the WAN relay's forwarding threads.
//!
//! # Why
//! Linux (6.6 and later) schedules ordinary threads with EEVDF. A thread woken by a datagram
//! does not preempt the thread on the CPU until that one's slice ends (0.75 ms scaled by
//! the CPU count by default: 1.5 ms on 2 CPUs), so on a busy machine a batch can wait
//! milliseconds for its own I/O thread. On the 2-vCPU machines this project is measured
//! on, those waits set the mesh's p99: with the default slice, `tickmesh bench mesh` on
//! loopback had p99 1.4 to 4.4 ms; with a 100 µs slice for `replicate-io`, 0.35 to
//! 0.78 ms; with every thread real-time (`chrt -f`), 0.36 ms.
//!
//! * A **custom slice** (`slice_us`, Linux 6.12+) needs no privilege: a thread with a
//!   shorter slice gets an earlier deadline and is allowed to preempt on wake-up. It only
//!   changes when the thread runs, not how much CPU it gets. Older kernels ignore it.
//! * **Real-time priority** (`realtime_priority`, `SCHED_FIFO`) needs `CAP_SYS_NICE`. It
//!   preempts every ordinary thread, so give it only to a node with cores to spare: a
//!   real-time thread catching up at full speed takes its CPU (the kernel still keeps 5 %
//!   for others).

use crate::error::{Error, Result};

/// The `[mesh.io_thread]` section: scheduling of the `replicate-io` thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadSched {
    /// EEVDF slice asked for, µs: 100 to 100000, or 0 for the kernel's default. Default
    /// 100.
    pub slice_us: u32,
    /// `SCHED_FIFO` priority 1 to 99 (needs `CAP_SYS_NICE`). Default none: an ordinary
    /// thread with the slice above.
    pub realtime_priority: Option<u8>,
}

impl Default for ThreadSched {
    fn default() -> Self {
        ThreadSched { slice_us: DEFAULT_SLICE_US, realtime_priority: None }
    }
}

/// Default slice of latency-critical mesh threads, µs (the kernel's smallest).
pub const DEFAULT_SLICE_US: u32 = 100;

impl ThreadSched {
    /// Collects every problem, naming the settings as the TOML section `at` does.
    pub fn validate(&self, at: &str, problems: &mut Vec<String>) {
        self.validate_named(&format!("{at}.slice_us ="), &format!("{at}.realtime_priority ="), problems);
    }

    /// Same, with the names of the two settings given (command-line flags).
    pub fn validate_named(&self, slice: &str, priority: &str, problems: &mut Vec<String>) {
        if self.slice_us != 0 && !(100..=100_000).contains(&self.slice_us) {
            problems.push(format!(
                "{slice} {} is out of range; use 100 to 100000 (µs), or 0 for the kernel's default",
                self.slice_us
            ));
        }
        if let Some(p) = self.realtime_priority {
            if !(1..=99).contains(&p) {
                problems.push(format!("{priority} {p} is out of range; use 1 to 99, or leave it out"));
            }
        }
    }

    /// Applies this to the calling thread. A slice the kernel does not support is not an
    /// error (it has no effect there); a real-time priority that cannot be had is, since
    /// it was asked for by name.
    pub fn apply_to_current(&self, at: &str) -> Result<()> {
        if let Some(p) = self.realtime_priority {
            return set_fifo(p).map_err(|e| {
                Error::Config(format!(
                    "{at}.realtime_priority = {p}: the kernel refused SCHED_FIFO ({e}); grant the process CAP_SYS_NICE (Kubernetes: securityContext.capabilities.add [\"SYS_NICE\"]) or remove the setting"
                ))
            });
        }
        if self.slice_us > 0 {
            if let Err(e) = set_slice(u64::from(self.slice_us) * 1000) {
                tracing::debug!(error = %e, slice_us = self.slice_us, "custom scheduler slice not available here");
            }
        }
        Ok(())
    }
}

/// The kernel's `struct sched_attr` (version 1, 56 bytes): `libc` has no binding for it.
#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks EEVDF for a slice of `ns` for the calling thread, keeping its policy
/// (`SCHED_OTHER`) and nice value.
#[cfg(target_os = "linux")]
pub fn set_slice(ns: u64) -> std::io::Result<()> {
    // SAFETY: getpriority reads the calling thread's nice value; -1 is also a valid nice,
    // so errno is what tells an error, and a wrong value here only changes the nice.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: ns,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: `attr` is a valid, initialised sched_attr whose `size` field says how much
    // the kernel may read; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Not Linux: no custom slices.
#[cfg(not(target_os = "linux"))]
pub fn set_slice(_ns: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "custom slices need Linux 6.12+"))
}

/// Makes the calling thread `SCHED_FIFO` at `priority`.
#[cfg(unix)]
fn set_fifo(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: pid 0 is the calling thread and `param` is a valid sched_param.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn set_fifo(_priority: u8) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SCHED_FIFO needs Linux"))
}

/// Makes the calling thread's sleeps end on time: the default timer slack lets the kernel
/// wake a sleeping thread up to 50 µs late to batch wake-ups. For the WAN relay, whose
/// sleeps are the emulated link delay.
pub fn precise_timers() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a value in ns and touches only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field_and_the_range() {
        let mut p = Vec::new();
        ThreadSched::default().validate("mesh.io_thread", &mut p);
        ThreadSched { slice_us: 0, realtime_priority: Some(10) }.validate("mesh.io_thread", &mut p);
        assert!(p.is_empty(), "{p:?}");
        ThreadSched { slice_us: 50, realtime_priority: Some(0) }.validate("mesh.io_thread", &mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("mesh.io_thread.slice_us = 50 is out of range"), "{p:?}");
        assert!(p[1].starts_with("mesh.io_thread.realtime_priority = 0"), "{p:?}");
    }

    /// The calling thread's (policy, slice in ns as the kernel reports it: 0 before 6.12).
    #[cfg(target_os = "linux")]
    fn current() -> (u32, u64) {
        let mut a = SchedAttr {
            size: 0,
            policy: 0,
            flags: 0,
            nice: 0,
            priority: 0,
            runtime: 0,
            deadline: 0,
            period: 0,
            util_min: 0,
            util_max: 0,
        };
        let size = std::mem::size_of::<SchedAttr>() as u32;
        // SAFETY: `a` is writable and `size` bytes long; pid 0 is the calling thread.
        let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut a as *mut SchedAttr, size, 0) };
        assert_eq!(r, 0, "sched_getattr: {}", std::io::Error::last_os_error());
        (a.policy, a.runtime)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_slice_applies_to_an_ordinary_thread() {
        // Each case on a thread of its own, so the test harness's threads keep their settings.
        std::thread::spawn(|| {
            let (_, before) = current();
            ThreadSched { slice_us: 250, realtime_priority: None }.apply_to_current("x").expect("never an error");
            let (policy, slice) = current();
            assert_eq!(policy, libc::SCHED_OTHER as u32, "still an ordinary thread");
            if before != 0 {
                assert_eq!(slice, 250_000, "a kernel that reports slices (6.12+) took ours");
            }
        })
        .join()
        .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn realtime_priority_is_applied_or_refused_with_what_to_do() {
        std::thread::spawn(|| {
            match (ThreadSched { slice_us: 0, realtime_priority: Some(5) }).apply_to_current("mesh.io_thread") {
                Ok(()) => assert_eq!(current().0, libc::SCHED_FIFO as u32),
                Err(e) => {
                    let m = e.to_string();
                    assert!(m.contains("mesh.io_thread.realtime_priority = 5") && m.contains("CAP_SYS_NICE"), "{m}");
                    assert_eq!(current().0, libc::SCHED_OTHER as u32, "a refusal changes nothing");
                }
            }
        })
        .join()
        .unwrap();
    }
}
