//! Reading `numapin plan --format json` output in tests.

/// The plan of the domain called `name`; panics naming it when absent.
pub fn domain(plan: &serde_json::Value, name: &str) -> serde_json::Value {
    plan["domains"]
        .as_array()
        .expect("a plan has a list of domains")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no domain {name:?} in the plan: {plan}"))
        .clone()
}
