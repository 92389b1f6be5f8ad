//! CPU time a process has used so far, read from `/proc/<pid>/stat`
//! (Linux only; elsewhere there is no figure). The benchmark reports CPU
//! time per request next to throughput because it barely moves when other
//! processes compete for the cores, while throughput and latency do.

use std::time::Duration;

/// `/proc` counts CPU time in USER_HZ ticks, which Linux fixes at 100 for
/// user space whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

/// User plus system time of every thread of the process, living or exited.
pub fn process_cpu_time(process_id: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{process_id}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses, so
    // fields are counted from its last closing parenthesis: the state
    // (field 3) comes first, utime and stime are fields 14 and 15.
    let after_command_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_command_name.split_whitespace();
    let user_ticks: u64 = fields.nth(11)?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user_ticks + system_ticks) * 1000 / USER_HZ,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_used_some_cpu() {
        let busy_until = std::time::Instant::now() + Duration::from_millis(30);
        while std::time::Instant::now() < busy_until {
            std::hint::black_box(0);
        }
        let used = process_cpu_time(std::process::id()).unwrap();
        assert!(used >= Duration::from_millis(10), "{used:?}");
    }
}
