//! Which CPU each gateway worker is pinned to: `gateway.cores` counts positions in the
//! process's allowed CPU set, not absolute CPU ids.
//!
//! Why: under Kubernetes' static CPU manager a Guaranteed pod gets an exclusive cpuset that
//! can be any CPUs of the host (say 6, 7, 14 and 15), and the same pod lands on different
//! CPUs on every host. A configuration cannot know those ids, but it can say "the second
//! CPU I am given". So index `i` means the `i`-th CPU, in ascending order, of the set
//! `sched_getaffinity` reports when the gateway starts. On a host (or container) with no
//! restriction that set is `0..n` and an index is the CPU id itself, so a configuration
//! written for bare metal keeps its meaning.
//!
//! The mapping is a pure function ([`map_cores`]) so it is tested without touching the
//! affinity of the test process.

/// The CPUs this process may run on, ascending: the calling thread's affinity mask
/// (`sched_getaffinity`), which a thread inherits from the process at start-up. Call it
/// before any thread pins itself. Falls back to `0..available_parallelism` where the
/// platform reports no mask.
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if ids.is_empty() {
        ids = (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect();
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The worker core indexes when `gateway.cores` is empty: every allowed CPU but the first
/// (index 0 is left to ingest, the hub and the mesh), or index 0 alone when only one CPU
/// is usable. `usable` is the number of CPUs the process may use: the allowed set, capped
/// by a CPU quota (`available_parallelism`), so a quota of 2 CPUs on a 64-CPU host gives
/// one worker, not 63.
pub fn default_indexes(usable: usize) -> Vec<usize> {
    if usable <= 1 {
        vec![0]
    } else {
        (1..usable).collect()
    }
}

/// Maps core indexes onto the allowed CPUs: index `i` becomes `allowed[i]` (`allowed`
/// ascending, as [`allowed_cpus`] returns it). An index past the end of the set, or one
/// given twice, is an error that says what the set is.
pub fn map_cores(indexes: &[usize], allowed: &[usize]) -> Result<Vec<usize>, String> {
    let mut seen = std::collections::BTreeSet::new();
    for &i in indexes {
        if !seen.insert(i) {
            return Err(format!("gateway.cores = {indexes:?} lists index {i} twice; give each worker its own core"));
        }
    }
    if let Some(&bad) = indexes.iter().find(|&&i| i >= allowed.len()) {
        return Err(format!(
            "gateway.cores = {indexes:?} asks for core index {bad}, but this process may run on {} CPU(s) ({}); \
             gateway.cores are positions in that set (0 to {}), not CPU ids: list fewer cores, give the process \
             more CPUs (a larger whole-CPU request under the static CPU manager), or remove gateway.cores to use \
             every allowed CPU but the first",
            allowed.len(),
            cpu_list(allowed),
            allowed.len().saturating_sub(1),
        ));
    }
    Ok(indexes.iter().map(|&i| allowed[i]).collect())
}

/// `0-3,6,8-9`: the compact form of `/proc/*/status` Cpus_allowed_list, for messages.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_map_onto_the_allowed_set_in_order() {
        // A static-CPU-manager cpuset: index i is the i-th allowed CPU.
        assert_eq!(map_cores(&[1, 2, 3], &[6, 7, 14, 15]), Ok(vec![7, 14, 15]));
        assert_eq!(map_cores(&[0], &[6, 7, 14, 15]), Ok(vec![6]));
        assert_eq!(map_cores(&[3, 1], &[6, 7, 14, 15]), Ok(vec![15, 7]), "order of the list is kept");
        // Unrestricted host: indexes are the CPU ids.
        assert_eq!(map_cores(&[1, 2, 3], &[0, 1, 2, 3]), Ok(vec![1, 2, 3]));
        assert_eq!(map_cores(&[], &[0, 1]), Ok(vec![]));
    }

    #[test]
    fn asking_for_more_cores_than_allowed_says_what_is_allowed() {
        let e = map_cores(&[1, 2, 4], &[6, 7, 14, 15]).unwrap_err();
        assert!(e.contains("core index 4"), "{e}");
        assert!(e.contains("4 CPU(s) (6-7,14-15)"), "{e}");
        assert!(e.contains("positions in that set (0 to 3)"), "{e}");
        // An absolute id that would have been right under the old meaning is refused too.
        assert!(map_cores(&[6], &[6, 7]).is_err());
        let e = map_cores(&[1, 1], &[0, 1, 2]).unwrap_err();
        assert!(e.contains("index 1 twice"), "{e}");
    }

    #[test]
    fn default_leaves_the_first_allowed_cpu_to_the_node() {
        assert_eq!(default_indexes(4), vec![1, 2, 3]);
        assert_eq!(default_indexes(2), vec![1]);
        assert_eq!(default_indexes(1), vec![0]);
        assert_eq!(default_indexes(0), vec![0]);
        assert_eq!(map_cores(&default_indexes(4), &[6, 7, 14, 15]), Ok(vec![7, 14, 15]));
    }

    #[test]
    fn cpu_lists_are_compact() {
        assert_eq!(cpu_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(cpu_list(&[6, 7, 14, 15]), "6-7,14-15");
        assert_eq!(cpu_list(&[2, 5, 6, 9]), "2,5-6,9");
        assert_eq!(cpu_list(&[]), "none");
    }

    #[test]
    fn this_process_has_an_allowed_set() {
        let a = allowed_cpus();
        assert!(!a.is_empty());
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
    }
}
