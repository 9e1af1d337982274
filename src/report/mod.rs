//! Human-readable renderings of numapin's results; JSON comes from serde.

pub mod apply_table;
pub mod plan_table;
pub mod status;
pub mod topology_table;

/// MiB as a short human figure: "512 MiB", "16 GiB", "1.5 TiB".
pub fn mib(value: u64) -> String {
    if value >= 1024 * 1024 {
        format!("{:.1} TiB", value as f64 / (1024.0 * 1024.0))
    } else if value >= 1024 {
        let gib = value as f64 / 1024.0;
        if (gib - gib.round()).abs() < 0.05 {
            format!("{:.0} GiB", gib)
        } else {
            format!("{:.1} GiB", gib)
        }
    } else {
        format!("{value} MiB")
    }
}

/// "outer: inner: innermost", each cause once (a cause already quoted in
/// its parent's message is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

pub fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(mib(512), "512 MiB");
        assert_eq!(mib(16384), "16 GiB");
        assert_eq!(mib(1536), "1.5 GiB");
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 TiB");
        assert_eq!(percent(0.987), "99%");
    }
}
