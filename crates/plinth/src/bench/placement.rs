//! Where the unloaded pass of `bench http` runs. With one request in
//! flight, a request on two idle CPUs crosses between them twice, and on a
//! virtual machine each crossing wakes a halted vCPU through the
//! hypervisor. On the 2-vCPU machine of docs/BENCHMARKS.md a bare
//! handler's p50 under `wrk -c1` was 413 µs with the threads free and 37
//! µs with client and server on one CPU, and the free figure changed with
//! the host's load from minute to minute. Putting the load
//! generator's measuring thread and every thread of the servers on one CPU
//! takes the crossing out, as `netperf -T` does for request/response
//! tests, and leaves the work each request costs, which is what the
//! comparison is about.

use anyhow::Context;
use clap::ValueEnum;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Where the unloaded pass runs, as `--unloaded-placement` chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnloadedPlacement {
    /// The generator's measuring thread and every server thread on one CPU.
    OneCpu,
    /// Wherever the kernel puts them.
    Free,
}

/// The calling thread, for `sched_setaffinity` and `sched_getaffinity`.
fn this_thread() -> Pid {
    Pid::from_raw(0)
}

/// The lowest-numbered CPU this thread may run on.
pub fn first_allowed_cpu() -> anyhow::Result<usize> {
    let allowed = allowed_cpus()?;
    for cpu in 0..CpuSet::count() {
        if allowed.is_set(cpu).unwrap_or(false) {
            return Ok(cpu);
        }
    }
    anyhow::bail!("this thread may run on no CPU")
}

/// The CPUs this thread may run on now, to give a process back afterwards.
pub fn allowed_cpus() -> anyhow::Result<CpuSet> {
    sched_getaffinity(this_thread()).context("reading this thread's CPU set")
}

pub fn only(cpu: usize) -> anyhow::Result<CpuSet> {
    let mut cpus = CpuSet::new();
    cpus.set(cpu)
        .with_context(|| format!("CPU {cpu} is beyond what a CPU set holds"))?;
    Ok(cpus)
}

pub fn pin_this_thread(cpus: &CpuSet) -> anyhow::Result<()> {
    sched_setaffinity(this_thread(), cpus).context("setting this thread's CPU set")
}

/// Sets the CPU set of every thread of each process, stopping at the
/// first that fails.
pub fn pin_processes(process_ids: &[u32], cpus: &CpuSet) -> anyhow::Result<()> {
    for process_id in process_ids {
        pin_process(*process_id, cpus)?;
    }
    Ok(())
}

/// Sets the CPU set of every thread of process `process_id`. Threads the
/// process starts later inherit the set of the thread that starts them.
fn pin_process(process_id: u32, cpus: &CpuSet) -> anyhow::Result<()> {
    let task_directory = format!("/proc/{process_id}/task");
    let threads = std::fs::read_dir(&task_directory)
        .with_context(|| format!("listing the threads of process {process_id}"))?;
    for thread in threads {
        let thread = thread.with_context(|| format!("listing {task_directory}"))?;
        let Some(thread_id) = thread
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(thread_id), cpus) {
            Ok(()) => {}
            // The thread ended between the listing and now.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("setting the CPU set of thread {thread_id} of process {process_id}")
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_to_one_cpu_runs_only_there() {
        let pinned = std::thread::spawn(|| {
            let cpu = first_allowed_cpu().unwrap();
            pin_this_thread(&only(cpu).unwrap()).unwrap();
            let now_allowed = allowed_cpus().unwrap();
            let allowed_count = (0..CpuSet::count())
                .filter(|candidate| now_allowed.is_set(*candidate).unwrap())
                .count();
            (cpu, allowed_count, now_allowed.is_set(cpu).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(
            (pinned.1, pinned.2),
            (1, true),
            "pinned to CPU {}",
            pinned.0
        );
    }

    #[test]
    fn a_child_process_is_pinned_thread_by_thread_and_given_back() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let everything = allowed_cpus().unwrap();
        let cpu = first_allowed_cpu().unwrap();
        pin_process(child.id(), &only(cpu).unwrap()).unwrap();
        let child_set = sched_getaffinity(Pid::from_raw(child.id() as i32)).unwrap();
        assert_eq!(child_set, only(cpu).unwrap());
        pin_process(child.id(), &everything).unwrap();
        let child_set = sched_getaffinity(Pid::from_raw(child.id() as i32)).unwrap();
        assert_eq!(child_set, everything);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn pinning_a_process_that_does_not_exist_fails() {
        assert!(pin_process(u32::MAX, &only(0).unwrap()).is_err());
    }
}
