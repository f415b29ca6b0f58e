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

/// Whether `topic` matches `pattern`. Both must be valid. Allocates nothing: it runs for every
/// wildcard subscription and binding on every topic publish.
pub fn matches(pattern: &str, topic: &str) -> bool {
    match_words(Some(pattern), Some(topic))
}

/// The first word and the rest (`None` when no words remain).
fn split_word(s: &str) -> (&str, Option<&str>) {
    match s.split_once('.') {
        Some((word, rest)) => (word, Some(rest)),
        None => (s, None),
    }
}

fn match_words(p: Option<&str>, t: Option<&str>) -> bool {
    let Some(p) = p else { return t.is_none() };
    let (word, p_rest) = split_word(p);
    match word {
        "#" => {
            // Zero words, then one more at a time.
            let mut t = t;
            loop {
                if match_words(p_rest, t) {
                    return true;
                }
                match t {
                    Some(ts) => t = split_word(ts).1,
                    None => return false,
                }
            }
        }
        "*" => t.is_some_and(|ts| match_words(p_rest, split_word(ts).1)),
        w => t.is_some_and(|ts| {
            let (tw, t_rest) = split_word(ts);
            tw == w && match_words(p_rest, t_rest)
        }),
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
