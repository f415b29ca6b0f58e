//! Topic names and patterns: dot-separated words; in patterns `*` matches exactly one word and
//! `#` matches zero or more (the AMQP topic-exchange rules, which STOMP brokers also use).

/// Why a topic name or pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

/// A topic name is non-empty words without wildcards.
pub fn validate_topic(name: &str) -> Result<(), PatternError> {
    for w in name.split('.') {
        if w.is_empty() {
            return Err(PatternError(format!("topic {name:?} has an empty word")));
        }
        if w.contains(['*', '#']) {
            return Err(PatternError(format!("topic {name:?} contains a wildcard")));
        }
    }
    Ok(())
}

/// A pattern is non-empty words where `*` and `#` stand alone as whole words.
pub fn validate_pattern(pattern: &str) -> Result<(), PatternError> {
    for w in pattern.split('.') {
        if w.is_empty() {
            return Err(PatternError(format!("pattern {pattern:?} has an empty word")));
        }
        if w.len() > 1 && w.contains(['*', '#']) {
            return Err(PatternError(format!(
                "pattern {pattern:?}: wildcards must be whole words, found {w:?}"
            )));
        }
    }
    Ok(())
}

pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|w| w == "*" || w == "#")
}

/// Whether `topic` matches `pattern`. Both must be valid.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    match_words(&p, &t)
}

fn match_words(p: &[&str], t: &[&str]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((&"#", rest)) => (0..=t.len()).any(|skip| match_words(rest, &t[skip..])),
        Some((&"*", rest)) => !t.is_empty() && match_words(rest, &t[1..]),
        Some((w, rest)) => t.first() == Some(w) && match_words(rest, &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "x.y", true),
            ("#.c", "a.b.c", true),
            ("#.c", "c", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*.*", "a.b", true),
            ("*", "a.b", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(matches(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn validation() {
        assert!(validate_topic("a.b").is_ok());
        assert!(validate_topic("a..b").is_err());
        assert!(validate_topic("a.*").is_err());
        assert!(validate_pattern("a.*.#").is_ok());
        assert!(validate_pattern("a.b*").is_err());
        assert!(validate_pattern("").is_err());
        assert!(is_wildcard("a.#") && !is_wildcard("a.b"));
    }
}
