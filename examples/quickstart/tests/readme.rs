//! The README's first code is this example, whole, and it stays one screen: under 100 lines,
//! at most 30 of them about turret.

const MAIN: &str = include_str!("../src/main.rs");
const README: &str = include_str!("../../../README.md");

/// Lines that name a turret item (or the axum call `ClientIp` needs), comments aside.
fn turret_lines(source: &str) -> usize {
    const NAMES: [&str; 14] = [
        "turret",
        "cached",
        "StampedeCache",
        "ValidatorStore",
        "Policy",
        "ClientIp",
        "Quota",
        "RateLimitLayer",
        "ResponseCacheLayer",
        "ConditionalLayer",
        "Redis",
        "redis",
        "backend_from",
        "connect_info",
    ];
    source
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
        .filter(|l| NAMES.iter().any(|n| l.contains(n)))
        .count()
}

#[test]
fn the_readmes_first_code_is_the_quickstart() {
    let start = README.find("```rust\n").expect("a Rust block in the README") + "```rust\n".len();
    let first = README[..start].matches("```").count();
    assert_eq!(first, 1, "another code block comes before the quickstart");
    let end = start + README[start..].find("```").expect("the block's end");
    assert_eq!(&README[start..end], MAIN, "README.md's quickstart differs from src/main.rs");
}

#[test]
fn the_quickstart_is_under_100_lines_and_at_most_30_about_turret() {
    let lines = MAIN.lines().count();
    assert!(lines < 100, "{lines} lines");
    let turret = turret_lines(MAIN);
    assert!((10..=30).contains(&turret), "{turret} turret lines");
}
