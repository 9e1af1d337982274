//! Small statistics for summarising runs over seeds.

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom; for
/// df between the tabulated ones, that of the next lower (wider).
pub fn t_975(df: usize) -> f64 {
    const SMALL: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => SMALL[df - 1],
        31..=39 => 2.042,
        40..=59 => 2.021,
        60..=119 => 2.000,
        120.. => 1.980,
    }
}

/// Mean of `d` and the half-width of its 95% t interval (NaN for fewer
/// than two values).
pub fn mean_interval(d: &[f64]) -> (f64, f64) {
    let n = d.len();
    let m = mean(d);
    if n < 2 {
        return (m, f64::NAN);
    }
    let var = d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    (m, t_975(n - 1) * (var / n as f64).sqrt())
}

/// Seeds as ranges: 1-5,9.
pub fn seed_list(seeds: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seeds.len() {
        let mut j = i;
        while j + 1 < seeds.len() && seeds[j + 1] == seeds[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}-{}", seeds[i], seeds[j])
        } else {
            seeds[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_intervals_and_seed_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let (m, half) = mean_interval(&[1.0, 1.0, 1.0]);
        assert_eq!((m, half), (1.0, 0.0));
        assert!(mean_interval(&[1.0]).1.is_nan());
        assert_eq!(seed_list(&[1, 2, 3, 5, 7, 8]), "1-3,5,7-8");
    }
}
