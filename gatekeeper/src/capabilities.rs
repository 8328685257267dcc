//! Checks that the process may load and attach XDP programs, so the user gets one clear line
//! instead of an EPERM from deep inside the loader.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What loading and attaching the filter requires, as told to the user.
pub const REQUIREMENT: &str =
    "loading the XDP filter needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN";

/// Fails with [`REQUIREMENT`] if the effective capabilities cannot load and attach XDP programs.
pub fn ensure_can_load() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = parse_cap_eff(&status)
        .ok_or_else(|| anyhow::anyhow!("cannot read CapEff from /proc/self/status"))?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // The kernel refuses the program (EACCES) with CAP_BPF alone: the verifier wants CAP_PERFMON.
    if (has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) && has(CAP_NET_ADMIN) {
        Ok(())
    } else {
        anyhow::bail!("{REQUIREMENT} (run it as root or under the systemd unit)")
    }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_capabilities() {
        let status = "Name:\tx\nCapPrm:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }
}
