//! libvirt's size units, read the way its `virScaleInteger` does: `b`,
//! `byte`, `bytes`, or a prefix letter k, m, g, t, p, e alone or followed by
//! `iB` for powers of 1024, or by `B` for powers of 1000; any case.

/// The units [`unit_bytes`] knows, for errors (any case).
pub const KNOWN_UNITS: &str = "a size unit: b, bytes, k, KiB, KB, m, MiB, MB, g, GiB, GB, t, TiB, TB, p, PiB, PB, e, EiB or EB";

/// Bytes in one `unit`; `None` for a unit libvirt does not know.
pub fn unit_bytes(unit: &str) -> Option<u128> {
    let unit = unit.to_ascii_lowercase();
    if matches!(unit.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = unit.chars();
    let power = "kmgtpe".find(chars.next()?)? as u32 + 1;
    let base: u128 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    Some(base.pow(power))
}

/// Which way a size that is not a whole number of KiB goes. Demands (what
/// a guest needs) round up, capacities (what a node has) round down, so
/// neither side is ever overstated in the guest's favour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    Up,
    Down,
}

/// `value` units of `unit_bytes` bytes each, in KiB; `None` when that does
/// not fit a u64.
pub fn kib(value: u64, unit_bytes: u128, round: Round) -> Option<u64> {
    // At most 2^64 * 2^60, which fits u128.
    let bytes = u128::from(value) * unit_bytes;
    let kib = match round {
        Round::Up => bytes.div_ceil(1024),
        Round::Down => bytes / 1024,
    };
    u64::try_from(kib).ok()
}

/// Bytes per node to MiB per node, rounded to the nearest MiB; nodes under
/// half a MiB are left out.
pub fn mib_per_node(
    bytes: &std::collections::BTreeMap<u32, u64>,
) -> std::collections::BTreeMap<u32, u64> {
    bytes
        .iter()
        .map(|(&node, &b)| (node, (b + (1 << 19)) >> 20))
        .filter(|(_, mib)| *mib > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(value: u64, unit: &str) -> Option<u64> {
        kib(value, unit_bytes(unit)?, Round::Up)
    }

    fn down(value: u64, unit: &str) -> Option<u64> {
        kib(value, unit_bytes(unit)?, Round::Down)
    }

    #[test]
    fn units_scale_like_libvirt() {
        assert_eq!(up(1, "KiB"), Some(1));
        assert_eq!(up(1, "k"), Some(1));
        assert_eq!(up(1, "K"), Some(1));
        assert_eq!(up(1000, "KB"), Some(977)); // 1_000_000 B / 1024, rounded up
        assert_eq!(down(1024, "KB"), Some(1000));
        assert_eq!(up(1, "b"), Some(1));
        assert_eq!(down(1024, "b"), Some(1));
        assert_eq!(up(2048, "bytes"), Some(2));
        assert_eq!(up(1, "MB"), Some(977));
        assert_eq!(down(1, "MB"), Some(976));
        assert_eq!(up(2, "M"), Some(2048));
        assert_eq!(up(1, "MiB"), Some(1024));
        assert_eq!(up(1, "GB"), Some(976_563));
        assert_eq!(down(1, "GB"), Some(976_562));
        assert_eq!(up(1, "G"), Some(1 << 20));
        assert_eq!(up(1, "gib"), Some(1 << 20));
        assert_eq!(up(1, "TB"), Some(976_562_500));
        assert_eq!(up(1, "T"), Some(1 << 30));
        assert_eq!(up(1, "TiB"), Some(1 << 30));
        assert_eq!(up(u64::MAX, "EiB"), None);
        assert_eq!(down(u64::MAX, "EiB"), None);
        for bad in ["KiBs", "x", "", "é", "parsec"] {
            assert_eq!(unit_bytes(bad), None, "{bad:?}");
        }
    }
}
